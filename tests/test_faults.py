"""Fault injection: kills at random moments, torn writes, concurrent sweeps, divergence,
corrupt files, a full disk, hostile input. Nothing that exists is ever lost."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY, metrics_without_timing, start_worker, write_run_config
from scaleflow.config import compose_run, compose_study
from scaleflow.errors import ScaleflowError, StoreError
from scaleflow.store import collect, last_metrics, run_dirs, study_states
from scaleflow.checkpoints import checkpoint_path, latest_checkpoint, list_checkpoints
from scaleflow.train import train

pytestmark = pytest.mark.faults

RUN = TINY + ["trainer.steps=400", "trainer.log_every=1", "trainer.eval_every=50", "trainer.checkpoint_every=7",
              "resume=true"]


def _last_step(run_dir: Path) -> int:
    last = last_metrics(run_dir)
    return last["step"] if last else -1


def test_twenty_sigkills_at_random_moments_lose_nothing(tmp_path):
    reference, victim = tmp_path / "reference", tmp_path / "victim"
    for run_dir in (reference, victim):
        write_run_config(run_dir, RUN)
    assert start_worker(reference).wait(timeout=120) == 0

    rng = random.Random(1234)
    kills = 0
    while kills < 20 and not (victim / "summary.json").exists():
        target = _last_step(victim) + rng.randint(1, 8)  # a seeded random step ...
        jitter = rng.random() * 0.01  # ... and a seeded offset into it
        proc = start_worker(victim)
        deadline = time.monotonic() + 60
        while _last_step(victim) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(jitter)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills == 20
    assert start_worker(victim).wait(timeout=120) == 0
    assert metrics_without_timing(victim) == metrics_without_timing(reference)


def test_a_kill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    run_dir = tmp_path / "run"
    train(compose_run(TINY + ["trainer.steps=10", "trainer.checkpoint_every=5"]), run_dir)
    before = checkpoint_path(run_dir, 10).read_bytes()
    # A process that dies halfway through rewriting that checkpoint.
    script = f"""
import os, signal
from pathlib import Path
from scaleflow.files import atomic_write
def half(f):
    f.write(b"x" * 1000)
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
atomic_write(Path({str(checkpoint_path(run_dir, 10))!r}), half)
"""
    assert subprocess.run([sys.executable, "-c", script]).returncode == -signal.SIGKILL
    assert checkpoint_path(run_dir, 10).read_bytes() == before
    assert [s for s, _ in list_checkpoints(run_dir)] == [5, 10]  # the torn temp file is not a checkpoint
    assert latest_checkpoint(run_dir)["step"] == 10


def test_corrupt_newest_checkpoint_falls_back_and_resume_still_matches(tmp_path):
    reference, damaged = tmp_path / "reference", tmp_path / "damaged"
    overrides = TINY + ["trainer.steps=30", "trainer.checkpoint_every=10", "trainer.log_every=5", "resume=true"]
    train(compose_run(overrides), reference)
    cfg = compose_run(overrides)
    train(cfg, damaged, until=20)
    path = checkpoint_path(damaged, 20)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])  # truncated
    assert latest_checkpoint(damaged)["step"] == 10
    train(cfg, damaged)
    assert metrics_without_timing(damaged) == metrics_without_timing(reference)


def test_torn_metrics_line_and_corrupt_summary_are_skipped_with_a_count(tmp_path):
    study = tmp_path / "study"
    good = study / "aaaaaaaaaa"
    train(compose_run(TINY + ["trainer.steps=10"]), good)
    with open(good / "metrics.jsonl", "a") as f:
        f.write('{"step": 11, "train_lo')  # a kill mid-line
    bad = study / "bbbbbbbbbb"
    train(compose_run(TINY + ["trainer.steps=12"]), bad)
    (bad / "summary.json").write_text('{"status": "do')
    collected = collect(study)
    assert list(collected.runs["run_id"]) == ["aaaaaaaaaa"]
    assert collected.skipped == 1 and any("corrupt" in w for w in collected.warnings)


def test_divergence_stops_flags_and_is_kept(tmp_path):
    run_dir = tmp_path / "study" / "cccccccccc"
    summary = train(compose_run(TINY + ["trainer.steps=200", "optim.lr=30", "optim.grad_clip=0",
                                        "trainer.log_every=1", "schedule.warmup_steps=0"]), run_dir)
    assert summary["status"] == "diverged" and 1 <= summary["diverged_step"] < 200
    row = collect(tmp_path / "study").runs.iloc[0]
    assert bool(row["diverged"]) and row["diverged_step"] == summary["diverged_step"]


STUDY = """
defaults:
  - config
  - _self_
study:
  name: twice
  kind: isoflop
  budgets: [3e9]
  shapes:
    - {n_layer: 1, d_model: 8, n_head: 1}
    - {n_layer: 1, d_model: 16, n_head: 2}
    - {n_layer: 1, d_model: 24, n_head: 2}
  min_steps: 10
model: {seq_len: 32}
trainer: {batch_size: 8, eval_every: 1000000, eval_sequences: 16, log_every: 10}
launcher: {max_parallel: 2, threads_per_run: 1}
"""


def test_two_sweeps_at_once_train_no_run_twice(tmp_path):
    study_file = tmp_path / "twice.yaml"
    study_file.write_text(STUDY)
    study_dir = tmp_path / "study"
    cmd = [sys.executable, "-m", "scaleflow.cli", "sweep", "isoflop", str(study_file), f"study_dir={study_dir}"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0, 0], [p.stderr.read() for p in procs]
    for run_dir in run_dirs(study_dir):
        starts = (run_dir / "worker.log").read_text().count("training ")
        assert starts == 1, f"{run_dir.name} trained {starts} times"
    assert [s.state for s in study_states(study_dir)] == ["done"] * 3
    # Two collectors at once both succeed.
    cmd = [sys.executable, "-m", "scaleflow.cli", "collect", str(study_dir)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]


def test_a_full_disk_is_a_clear_error_and_the_study_stays_usable(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        run_dir = mount / "dddddddddd"
        cmd = [sys.executable, "-m", "scaleflow.cli", "train", f"run_dir={run_dir}", *TINY, "model.d_model=64",
               "trainer.steps=50", "trainer.checkpoint_every=5"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2
        assert "no space left" in out.stderr and len(out.stderr.strip().splitlines()) == 1
        assert not list(run_dir.glob("checkpoints/.*.tmp"))  # no torn temporary left behind
        newest = latest_checkpoint(run_dir)  # what was written is readable
        assert newest is None or newest["step"] % 5 == 0
    finally:
        subprocess.run(["umount", str(mount)])


def test_hostile_names_and_sbatch_values(tmp_path):
    from scaleflow.store import study_dir_for

    study_file = tmp_path / "s.yaml"
    study_file.write_text(STUDY)
    for name in ("../escape", "/abs", "..", "a/b"):
        cfg = compose_study(str(study_file), [f"study.name='{name}'"])
        with pytest.raises(StoreError):
            study_dir_for(cfg)
    for value in ("debug\n#SBATCH --uid=0", "p;rm -rf /", "x$(id)"):
        with pytest.raises(ScaleflowError, match="launcher.partition"):
            compose_study(str(study_file), ["launcher=slurm", f"launcher.partition='{value}'"])
