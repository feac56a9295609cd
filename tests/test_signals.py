"""Stop signals, for real: SIGTERM then SIGUSR2 to a worker and to `scaleflow train`, Ctrl-C
(SIGINT to its process group) and `kill` (SIGTERM to its process alone) of `scaleflow sweep`. Each time the run checkpoints at the step
it has reached and the process exits with its documented code (worker 3, CLI 130); the same
command then finishes the run bit for bit equal to an uninterrupted one.

The moment of each signal comes from the run's own progress (its metrics.jsonl reaching a
step), never from a clock; the timeouts only turn a hang into a failure.
"""

import argparse
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

from conftest import CLI, TIMING_KEYS, TINY, metrics_without_timing, run_cli, start_cli, start_worker, write_run_config
from scaleflow.checkpoints import list_checkpoints
from scaleflow.config import compose_run, compose_study, load_run_config
from scaleflow.files import read_json
from scaleflow.store import last_metrics, study_states
from scaleflow.sweep import plan_study
from scaleflow.train import train
from scaleflow.exit_codes import EXIT_INTERRUPTED

EXIT_CLI_INTERRUPTED = 130  # `scaleflow train` and `scaleflow sweep` after a stop signal
GUARD_S = 120  # turns a hang into a failure; never decides when anything happens
STEPS = 100
LEAD = 3  # steps a (re)started run logs before it is signalled: far fewer than it has left
# One stdlib file as the corpus: each process then skips reading the whole standard library.
TEXT = argparse.__file__
DATA = ["data=text", f"data.paths=[{TEXT}]"]
# Log every step and never checkpoint on schedule: every checkpoint is a signal's.
RUN = TINY + DATA + [f"trainer.steps={STEPS}", "trainer.log_every=1", "trainer.eval_every=25",
                     "trainer.checkpoint_every=1000000", "device=cpu"]

STUDY = """
defaults:
  - config
  - study: isoflop
  - _self_
study:
  name: signals
  budgets: [1.9e9, 2.4e9]
  shapes:
    - {n_layer: 1, d_model: 32, n_head: 2}
  min_steps: 10
model: {seq_len: 32}
data: {kind: text, paths: [%s]}
trainer: {batch_size: 8, eval_every: 25, eval_sequences: 16, log_every: 1, checkpoint_every: 1000000}
launcher: {max_parallel: 2, threads_per_run: 1}
"""


def last_step(run_dir: Path) -> int:
    return (last_metrics(run_dir) or {}).get("step", -1)


def wait_for(what: str, done: Callable[[], bool], *procs: subprocess.Popen) -> None:
    """Block until `done()`, failing if one of `procs` exits first or GUARD_S goes by."""
    deadline = time.monotonic() + GUARD_S
    while not done():
        for proc in procs:
            assert proc.poll() is None, f"exited with {proc.returncode} before {what}"
        assert time.monotonic() < deadline, f"no {what} within {GUARD_S} s"
        time.sleep(0.01)  # waiting for a condition, not timing anything


def assert_checkpointed_where_it_stopped(run_dir: Path, since: int, planned: int) -> None:
    """The signal's checkpoint is at the last step the run logged, and the run is unfinished."""
    assert not (run_dir / "summary.json").exists(), "the run finished before the signal reached it"
    steps = [step for step, _ in list_checkpoints(run_dir)]
    assert steps, f"{run_dir.name} stopped without a checkpoint"
    newest = steps[-1]
    assert newest == last_step(run_dir), f"checkpoint at {newest}, last logged step {last_step(run_dir)}"
    assert since <= newest < planned


def summary_without_timing(run_dir: Path) -> dict:
    summary = read_json(run_dir / "summary.json")
    return {k: v for k, v in summary.items() if k not in TIMING_KEYS | {"wall_time_s"}}


def assert_same_result(run_dir: Path, reference: Path) -> None:
    assert metrics_without_timing(run_dir) == metrics_without_timing(reference), run_dir.name
    assert summary_without_timing(run_dir) == summary_without_timing(reference), run_dir.name


@pytest.fixture(scope="module")
def one_thread():
    """In-process reference runs on one torch thread, as the workers and CLIs here train."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _signal_each_once_it_logs(procs: dict[Path, subprocess.Popen], since: dict[Path, int], sig: int) -> None:
    """Send `sig` to each run's process the moment that run has logged step since[run]."""
    waiting = dict(procs)
    while waiting:
        wait_for(f"steps {since}", lambda: any(last_step(d) >= since[d] for d in waiting), *waiting.values())
        for run_dir in [d for d in waiting if last_step(d) >= since[d]]:
            waiting.pop(run_dir).send_signal(sig)


def test_sigterm_then_sigusr2_stop_a_worker_and_scaleflow_train_which_then_end_bit_for_bit(
        tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # `scaleflow train` on one torch thread, as the others
    worker_dir, train_dir = tmp_path / "worker", tmp_path / "train"
    write_run_config(worker_dir, RUN)
    command = ["train", f"run_dir={train_dir}", *RUN, "resume=true"]  # the same command every time
    # Side by side (one per core), each signalled as its own run gets there.
    starts = {worker_dir: lambda: start_worker(worker_dir), train_dir: lambda: start_cli(*command)}
    stopped_code = {worker_dir: EXIT_INTERRUPTED, train_dir: EXIT_CLI_INTERRUPTED}
    for sig in (signal.SIGTERM, signal.SIGUSR2):
        since = {run_dir: max(0, last_step(run_dir)) + LEAD for run_dir in starts}
        procs = {run_dir: start() for run_dir, start in starts.items()}
        _signal_each_once_it_logs(procs, since, sig)
        for run_dir, proc in procs.items():
            assert proc.wait(timeout=GUARD_S) == stopped_code[run_dir], (run_dir.name, sig.name)
            assert_checkpointed_where_it_stopped(run_dir, since[run_dir], STEPS)

    procs = {run_dir: start() for run_dir, start in starts.items()}
    assert [proc.wait(timeout=GUARD_S) for proc in procs.values()] == [0, 0]
    train(compose_run(RUN), tmp_path / "reference")
    for run_dir in starts:
        assert_same_result(run_dir, tmp_path / "reference")


def _worker_pid(run_dir: Path) -> int:
    """The worker training `run_dir`: the process holding the run's lock file open."""
    lock = str(run_dir / ".lock")
    for entry in Path("/proc").iterdir():
        try:
            fds = list((entry / "fd").iterdir()) if entry.name.isdigit() else []
            if any(os.readlink(fd) == lock for fd in fds):
                return int(entry.name)
        except OSError:  # it ended while we looked
            continue
    raise AssertionError(f"no worker is training {run_dir}")


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, value in (line.split(":", 1) for line in lines)}


def _stopped(pid: int) -> bool:
    """Whether the process has come to a halt after SIGSTOP. (Until it has, for instance in the
    middle of an fsync, a signal sent to it is still taken in before it halts, not left pending.)"""
    return _status(pid)["State"].startswith("T")


def _pending(pid: int, sig: int) -> bool:
    """Whether `sig` waits, undelivered, on the stopped process."""
    return bool(int(_status(pid)["ShdPnd"], 16) >> (sig - 1) & 1)


def _stop_with_every_worker_frozen(sweep: subprocess.Popen, run_dirs: list[Path], stop: Callable[[int], None]) -> dict[Path, int]:
    """Stop the sweep (`stop(its pid)`) while each of its workers is halted (SIGSTOP) at a step
    >= LEAD: none can run ahead to its end while another is still starting. Each resumes
    (SIGCONT) only once the sweep's SIGTERM waits on it. Returns the step each run had logged
    when it was halted."""
    frozen = {}
    try:
        for run_dir in run_dirs:
            wait_for(f"step {LEAD} of {run_dir.name}", lambda: last_step(run_dir) >= LEAD, sweep)
            pid = frozen[run_dir] = _worker_pid(run_dir)
            os.kill(pid, signal.SIGSTOP)
            wait_for(f"a halt of the worker of {run_dir.name}", lambda: _stopped(pid))
        halted_at = {run_dir: last_step(run_dir) for run_dir in run_dirs}
        stop(sweep.pid)
        wait_for("SIGTERM passed on to every worker", lambda: all(_pending(p, signal.SIGTERM) for p in frozen.values()))
    finally:
        for pid in frozen.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    return halted_at


CTRL_C = lambda pid: os.killpg(pid, signal.SIGINT)  # the sweep leads its own process group
KILL = lambda pid: os.kill(pid, signal.SIGTERM)  # `kill PID`: the sweep alone, not its group


@pytest.mark.parametrize("stop", [CTRL_C, KILL], ids=["ctrl_c", "sigterm"])
def test_a_stopped_sweep_checkpoints_every_run_exits_130_and_resumes_bit_for_bit(tmp_path, one_thread, stop):
    study_file = tmp_path / "signals.yaml"
    study_file.write_text(STUDY % TEXT)
    study_dir = tmp_path / "study"
    command = ["sweep", "isoflop", str(study_file), f"study_dir={study_dir}"]
    specs = plan_study(compose_study(str(study_file), [f"study_dir={study_dir}"]), "isoflop")
    run_dirs = [study_dir / spec.run_id for spec in specs]

    # In its own session, so that it leads its own process group: what a terminal's Ctrl-C signals.
    sweep = subprocess.Popen([*CLI, *command], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    halted_at = _stop_with_every_worker_frozen(sweep, run_dirs, stop)
    assert sweep.wait(timeout=GUARD_S) == EXIT_CLI_INTERRUPTED
    for spec, run_dir in zip(specs, run_dirs):
        assert_checkpointed_where_it_stopped(run_dir, halted_at[run_dir], spec.steps)
        assert last_step(run_dir) <= halted_at[run_dir] + 1  # at most the step it was in finished
        assert read_json(run_dir / "job.json")["exit_code"] == EXIT_INTERRUPTED
    assert [s.state for s in study_states(study_dir)] == ["stopped"] * len(specs)

    out = run_cli(*command)  # the same command
    assert out.returncode == 0, out.stderr
    for run_dir in run_dirs:
        uninterrupted = tmp_path / "reference" / run_dir.name
        train(load_run_config(run_dir / "config.yaml"), uninterrupted)
        assert_same_result(run_dir, uninterrupted)
