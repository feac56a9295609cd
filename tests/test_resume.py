"""`scaleflow train` honours `resume` alike on one process and on two (torchrun, gloo on CPU).

Without resume=true a run starts from step 0 and an earlier run's results move to
previous/<n>/; with resume=true it continues from its newest checkpoint. On two processes a
stop signal reaches every rank through torchrun; the ranks checkpoint and the command exits
130, as on one.
"""

import json
import signal
from pathlib import Path

import pytest

from conftest import TINY, metrics_without_timing, run_cli, start_cli
from scaleflow.checkpoints import list_checkpoints
from scaleflow.store import last_metrics
from test_signals import (DATA, EXIT_CLI_INTERRUPTED, GUARD_S, LEAD, assert_checkpointed_where_it_stopped,
                          last_step, summary_without_timing, wait_for)

STEPS = 60
RUN = TINY + DATA + [f"trainer.steps={STEPS}", "trainer.log_every=1", "trainer.eval_every=20",
                     "trainer.checkpoint_every=1000000", "device=cpu"]


def _mark(run_dir: Path, mark: str) -> None:
    """Tag every metrics line written so far, to tell later which lines a run kept or rewrote."""
    path = run_dir / "metrics.jsonl"
    lines = [{**json.loads(x), "mark": mark} for x in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def _marks(run_dir: Path) -> list:
    return [line.get("mark") for line in metrics_without_timing(run_dir)]


def _unmarked(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k != "mark"} for line in lines]


def _new_run_logged(run_dir: Path, step: int) -> bool:
    """Whether a run started after the last _mark has logged `step`."""
    last = last_metrics(run_dir)
    return last is not None and "mark" not in last and last["step"] >= step


@pytest.mark.parametrize("world_size", [1, 2])
def test_train_honours_resume_alike_on_one_and_two_processes(tmp_path, monkeypatch, world_size):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the same arithmetic in every run of the test
    run_dir = tmp_path / "run"
    command = ["train", f"run_dir={run_dir}", *RUN, f"trainer.world_size={world_size}"]
    out = run_cli(*command)
    assert out.returncode == 0, out.stderr
    finished, finished_summary = metrics_without_timing(run_dir), summary_without_timing(run_dir)
    _mark(run_dir, "earlier run")

    # Without resume=true: a new run from step 0, stopped by SIGTERM once it has logged a few steps.
    proc = start_cli(*command)
    wait_for(f"step {LEAD} of a new run", lambda: _new_run_logged(run_dir, LEAD), proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=GUARD_S) == EXIT_CLI_INTERRUPTED
    earlier = run_dir / "previous" / "0"
    assert (earlier / "summary.json").exists(), "the earlier run's results were left in the run directory"
    assert set(_marks(earlier)) == {"earlier run"} and list_checkpoints(earlier)  # set aside, not lost
    assert set(_marks(run_dir)) == {None} and metrics_without_timing(run_dir)[0]["step"] == 0
    assert_checkpointed_where_it_stopped(run_dir, LEAD, STEPS)
    stopped_at = last_step(run_dir)
    _mark(run_dir, "stopped run")

    # With resume=true: it continues from its checkpoint, keeping the lines logged up to it,
    # and ends bit for bit where the uninterrupted earlier run ended.
    out = run_cli(*command, "resume=true")
    assert out.returncode == 0, out.stderr
    lines = metrics_without_timing(run_dir)
    assert [line.get("mark") for line in lines] == [
        "stopped run" if line["step"] <= stopped_at else None for line in lines]
    assert _unmarked(lines) == finished
    assert summary_without_timing(run_dir) == finished_summary
