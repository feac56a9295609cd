"""Fault injection: kills at random moments, torn writes, concurrent sweeps, divergence,
corrupt files, a full disk, hostile input. Nothing that exists is ever lost."""

import json
import os
import random
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, metrics_without_timing, run_cli, start_worker, write_run_config
from scaleflow.config import compose_run, compose_study
from scaleflow.errors import ScaleflowError, StoreError
from scaleflow.collect import collect
from scaleflow.store import run_dirs, study_states
from scaleflow.checkpoints import checkpoint_path, latest_checkpoint, list_checkpoints, load_checkpoint
from scaleflow.files import read_json, read_jsonl
from scaleflow.train import train

pytestmark = pytest.mark.faults

# A server that imports torch and the trainer once, then, per request, forks a worker
# (`scaleflow.worker RUN_DIR --threads 1` in a fresh child) that SIGKILLs itself at a chosen
# moment of its own progress: the nth os.fsync / os.replace of a matching file, "after" it,
# "before" it, or "torn" (the file cut short first: half of a new file, the end of an appended
# line). Each restart costs a fork, not an interpreter and a torch import.
KILL_SERVER = r"""
import json, os, re, signal, sys
import torch, scaleflow.worker, scaleflow.train
torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # its lazy imports (torch._dynamo), here once

def arm(call, pattern, nth, mode):
    real, seen = getattr(os, call), 0
    def hooked(*args):
        nonlocal seen
        target = os.readlink(f"/proc/self/fd/{args[0]}") if call == "fsync" else os.fspath(args[1])
        seen += bool(re.search(pattern, target))
        if seen == nth and re.search(pattern, target):
            if mode == "torn":
                size = os.fstat(args[0]).st_size
                os.ftruncate(args[0], size // 2 if os.path.basename(target).startswith(".") else size - 3)
            if mode == "after":
                real(*args)
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args)
    setattr(os, call, hooked)

for request in sys.stdin:
    run_dir, kill = json.loads(request)
    pid = os.fork()
    if pid == 0:
        quiet = os.open(os.devnull, os.O_WRONLY)
        os.dup2(quiet, 1)
        os.dup2(quiet, 2)
        if kill:
            arm(*kill)
        os._exit(scaleflow.worker.main([run_dir, "--threads", "1"]))
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""
# Where the kills land, in turn (call, file, mode, when): each phase leaves different files.
# "when": at the metrics line of a chosen step, in the first checkpoint at or after it, or at start-up.
CKPT, CKPT_TMP = r"/step_\d+\.pt$", r"/\.step_\d+\.pt\.\w+\.tmp$"
KILL_PHASES = [
    ("replace", CKPT, "after", "checkpoint"),  # a checkpoint renamed into place, the old not yet pruned
    ("fsync", r"/metrics\.jsonl$", "after", "step"),  # a step's metrics line written, the next step computing
    ("fsync", r"/metrics\.jsonl$", "torn", "step"),  # a metrics line half written
    ("fsync", CKPT_TMP, "torn", "checkpoint"),  # a checkpoint half written
    ("fsync", CKPT_TMP, "after", "checkpoint"),  # a checkpoint written and fsynced, not yet renamed
    ("fsync", r"/\.metrics\.jsonl\.\w+\.tmp$", "torn", "start"),  # resuming: metrics cut back to the checkpoint
    ("replace", r"/run_id$", "before", "start"),  # starting
]
LAST_KILL = ("fsync", r"/\.summary\.json\.\w+\.tmp$", "torn", "start")  # the 20th: the summary half written
STEPS, EVERY = 160, 4  # a small, cheap run; kill i (of the first 19) comes at a random step in [8i, 8i + 8)
RUN = ["model.n_layer=1", "model.d_model=16", "model.n_head=2", "model.seq_len=16", "trainer.batch_size=4",
       "trainer.eval_sequences=4", f"trainer.steps={STEPS}", "trainer.log_every=1", "trainer.eval_every=40",
       f"trainer.checkpoint_every={EVERY}", "resume=true"]


def _nth(when: str, step: int, run_dir: Path) -> int:
    """Which matching fsync/replace of the next start is the kill at `step`, counted from where
    that start resumes (its newest checkpoint; with none, from step 0's metrics line)."""
    resumed = max((s for s, _ in list_checkpoints(run_dir)), default=None)
    if when == "start":
        return 1
    if when == "step":  # one metrics line per step (log_every=1)
        return max(1, step - resumed) if resumed is not None else step + 1
    return max(1, -(-(step - (resumed or 0)) // EVERY))  # checkpoints every EVERY steps


def _kill_server() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", KILL_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _start(server: subprocess.Popen, run_dir: Path, kill) -> int:
    """Run the worker on `run_dir` in a forked child, to be killed as `kill` says (None: not at
    all); its exit code (-9: killed)."""
    server.stdin.write(json.dumps([str(run_dir), kill]) + "\n")
    server.stdin.flush()
    ready, _, _ = select.select([server.stdout], [], [], 600)  # a safety net for a hang, not a pace
    assert ready, "the worker hung"
    return int(server.stdout.readline())


def _checkpointed_lines(run_dir: Path) -> dict[int, dict]:
    """The metrics lines, timing included, of the steps that the newest checkpoint covers."""
    newest = max((step for step, _ in list_checkpoints(run_dir)), default=0)
    return {line["step"]: line for line in read_jsonl(run_dir / "metrics.jsonl") if line["step"] <= newest}


def _assert_never_trained_again(run_dir: Path, saved: dict[int, dict]) -> None:
    """Work a checkpoint saved is never lost: a step trained again would log a new tokens_per_s
    (a wall-clock measure), so its line would differ from the one saved."""
    final = {line["step"]: line for line in read_jsonl(run_dir / "metrics.jsonl")}
    again = [step for step, line in saved.items() if final.get(step) != line]
    assert not again, f"steps {again} were trained again although a checkpoint covered them"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="the kill hooks name files through /proc/self/fd")
def test_twenty_sigkills_at_random_moments_lose_nothing(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(Path(random.__file__).read_bytes())  # 35 KB of text: cheap to load at each start
    reference, victim = tmp_path / "reference", tmp_path / "victim"
    for run_dir in (reference, victim):
        write_run_config(run_dir, RUN + ["data=text", f"data.paths=[{corpus}]"])
    server = _kill_server()
    try:
        assert _start(server, reference, None) == 0
        rng = random.Random(1234)
        for i in range(20):
            call, pattern, mode, when = KILL_PHASES[i % len(KILL_PHASES)] if i < 19 else LAST_KILL
            kill = [call, pattern, _nth(when, rng.randrange(8 * i, 8 * i + 8), victim), mode]
            saved = _checkpointed_lines(victim)
            assert _start(server, victim, kill) == -signal.SIGKILL, f"kill {i + 1} ({kill}) never came"
            assert not (victim / "summary.json").exists()
            _assert_never_trained_again(victim, saved)
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    saved = _checkpointed_lines(victim)
    assert start_worker(victim).wait(timeout=300) == 0  # a fresh interpreter finishes it
    assert metrics_without_timing(victim) == metrics_without_timing(reference)
    _assert_never_trained_again(victim, saved)
    assert read_json(victim / "summary.json")["val_loss"] == read_json(reference / "summary.json")["val_loss"]


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
  - study: isoflop
  - _self_
study:
  name: twice
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
    args = [*TINY, "trainer.steps=30", "trainer.checkpoint_every=5", "trainer.log_every=5", "trainer.eval_every=10",
            "resume=true"]
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(Path(random.__file__).read_bytes())  # small: cheap to load in each of three runs
    args += ["data=text", f"data.paths=[{corpus}]"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    assert run_cli("train", f"run_dir={reference}", *args, env=env).returncode == 0
    ckpt_bytes = max(path.stat().st_size for _, path in list_checkpoints(reference))
    mount = tmp_path / "small"
    mount.mkdir()
    size_kib = 8 * ckpt_bytes // 1024 + 1024
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        ballast = _fill_leaving_room_for_two_checkpoints(mount, ckpt_bytes)
        run_dir = mount / "dddddddddd"
        out = run_cli("train", f"run_dir={run_dir}", *args, env=env)
        # Checkpoints 5 and 10 fit (keep_checkpoints=2); the third, at step 15, does not.
        assert out.returncode == 2, out.stderr
        assert out.stderr.strip() == (f"error: no space left on the device to write {checkpoint_path(run_dir, 15)}; "
                                      "the previous version is intact")
        assert not list(run_dir.rglob("*.tmp"))  # no torn temporary left behind
        assert [step for step, _ in list_checkpoints(run_dir)] == [5, 10]
        assert [load_checkpoint(path)["step"] for _, path in list_checkpoints(run_dir)] == [5, 10]  # readable
        saved = _checkpointed_lines(run_dir)
        assert sorted(saved) == [0, 1, 5, 10]  # step 1 is always logged
        ballast.unlink()  # space again: the same command resumes from step 10 and ends as if nothing happened
        out = run_cli("train", f"run_dir={run_dir}", *args, env=env)
        assert out.returncode == 0, out.stderr
        assert metrics_without_timing(run_dir) == metrics_without_timing(reference)
        assert read_json(run_dir / "summary.json")["val_loss"] == read_json(reference / "summary.json")["val_loss"]
        _assert_never_trained_again(run_dir, saved)  # it resumed from step 10, not from scratch
    finally:
        subprocess.run(["umount", str(mount)])


def _fill_leaving_room_for_two_checkpoints(mount: Path, ckpt_bytes: int) -> Path:
    """A ballast file that leaves free room for two checkpoints and a half, plus 16 blocks for
    the small files (config.yaml, run_id, metrics.jsonl): a third checkpoint cannot fit."""
    fs = os.statvfs(mount)
    block = fs.f_frsize
    room = 2 * ckpt_bytes + ckpt_bytes // 2 + 16 * block
    ballast = mount / "ballast"
    ballast.write_bytes(bytes(fs.f_bavail * block - room))
    assert ckpt_bytes // 2 > 16 * block  # the half checkpoint of slack is more than the small files need
    return ballast


def test_hostile_names_and_sbatch_values(tmp_path):
    from scaleflow.store import study_dir_for

    study_file = tmp_path / "s.yaml"
    study_file.write_text(STUDY.replace("launcher: {max_parallel: 2, threads_per_run: 1}\n", ""))  # local keys
    for name in ("../escape", "/abs", "..", "a/b"):
        cfg = compose_study(str(study_file), [f"study.name='{name}'"])
        with pytest.raises(StoreError):
            study_dir_for(cfg)
    for value in ("debug\n#SBATCH --uid=0", "p;rm -rf /", "x$(id)"):
        with pytest.raises(ScaleflowError, match="launcher.partition"):
            compose_study(str(study_file), ["launcher=slurm", f"launcher.partition='{value}'"])
