"""What a launched job runs: train the run described by a run directory's config.yaml.

`python -m scaleflow.worker RUN_DIR` is the whole job, locally (forked from the local
launcher's fork server, `main` called as the command would) and on SLURM. It takes the
run's lock (so two sweeps never train the same run at once), resumes from the newest
checkpoint, and on SIGINT/SIGTERM/SIGUSR2 checkpoints at the next step boundary and exits
with EXIT_INTERRUPTED (3).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

from scaleflow.errors import RunBusyError, ScaleflowError
from scaleflow.exit_codes import EXIT_BUSY, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from scaleflow.lock import run_lock

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


class StopFlag:
    """Set by a stop signal; the trainer polls it between steps."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self) -> bool:
        return self.signal is not None

    def handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signal = signum


class RelayFlag(StopFlag):
    """A StopFlag that passes the first stop signal on, as SIGTERM, to the process it starts.

    Only the first: a second would break off torchrun's orderly shutdown of its ranks. A
    second Ctrl-C still gives the prompt back at once (StopFlag) while the ranks checkpoint.
    """

    proc: subprocess.Popen | None = None
    relayed = False

    def start(self, command: list[str]) -> subprocess.Popen:
        # Its own session: a terminal's Ctrl-C reaches us alone, and the child hears it once, from us.
        self.proc = subprocess.Popen(command, start_new_session=True)
        self._relay()  # a signal may have come before there was a process to pass it to
        return self.proc

    def handle(self, signum, frame) -> None:
        super().handle(signum, frame)
        self._relay()

    def _relay(self) -> None:
        if self() and self.proc is not None and not self.relayed:
            self.relayed = True
            self.proc.send_signal(signal.SIGTERM)


@contextmanager
def stop_on_signals(flag: StopFlag):
    previous = {s: signal.signal(s, flag.handle) for s in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def keep_freed_memory() -> None:
    """Ask glibc to keep the memory a training step frees: by default it hands blocks over
    128 KB back to the kernel and faults them in again at the next step, which cost a small
    CPU run a fifth of its time (docs/benchmarks.md). Blocks over 64 MB are still mapped apart;
    no-op outside glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters, from glibc's malloc.h
    libc.mallopt(m_mmap_threshold, 64 << 20)
    libc.mallopt(m_trim_threshold, 256 << 20)


def train_interruptible(cfg, run_dir: Path, flag: StopFlag | None = None, **train_args) -> dict:
    """Train under the run's lock; a stop signal checkpoints and returns status interrupted.

    `flag`: a StopFlag whose signal handlers the caller installed; None installs our own.
    """
    from scaleflow.distributed import env_group
    from scaleflow.train import train

    run_dir = Path(run_dir)
    keep_freed_memory()
    with run_lock(run_dir) if env_group().is_main else nullcontext():  # rank 0 holds the lock
        finished = _finished_summary(run_dir, cfg)
        if finished is not None:  # another process finished it while we waited to start
            return finished
        print(f"training {run_dir} (resume={cfg.resume})", flush=True)
        if flag is not None:
            return train(cfg, run_dir, should_stop=flag, **train_args)
        with stop_on_signals(StopFlag()) as own:
            return train(cfg, run_dir, should_stop=own, **train_args)


def _finished_summary(run_dir: Path, cfg) -> dict | None:
    """The summary of a run that already ended (done or diverged) at its planned length."""
    from scaleflow.files import read_json
    from scaleflow.plan import plan_run
    from scaleflow.store import is_finished

    summary = read_json(run_dir / "summary.json")
    if not cfg.resume or not is_finished(summary):
        return None
    if cfg.trainer.extendable and summary["status"] == "done" and summary.get("steps", 0) < plan_run(cfg).steps:
        return None  # an extended trunk: train on
    return summary


def execute_run(run_dir: Path, threads: int = 0, until: int = 0, flag: StopFlag | None = None,
                resume: bool = True) -> dict:
    """Train (or resume) the run whose config.yaml is in `run_dir`.

    Its run.json (written by the run store) says where a decay branch forks from and which
    fork checkpoints a trunk keeps. `resume`: a launched job continues from the run's newest
    checkpoint whatever its config says; False (`--fresh`) is `scaleflow train` on several
    processes without resume=true, which starts from step 0 as it does on one process.
    """
    import torch

    from scaleflow.config import load_run_config
    from scaleflow.files import read_json
    from scaleflow.train import Fork

    run_dir = Path(run_dir)
    if threads > 0:
        torch.set_num_threads(threads)
    cfg = load_run_config(run_dir / "config.yaml")
    cfg.resume = resume
    if cfg.command.template is not None:
        return _run_external(cfg, run_dir, flag)
    meta = read_json(run_dir / "run.json") or {}
    fork = None
    if meta.get("parent"):
        fork = Fork(run_dir.parent / meta["parent"], meta["parent"], int(meta["fork_step"]))
    return train_interruptible(cfg, run_dir, flag, until=until, fork_steps=tuple(meta.get("fork_steps", ())),
                               init_from=fork)


def train_external(cfg, run_dir: Path) -> dict:
    """`scaleflow train` of an external trainer: the run directory gets the config, then the
    command runs as in a study's job (resume=true resumes it; without it, from scratch)."""
    from scaleflow.config import run_id
    from scaleflow.run_files import set_aside_earlier_results, write_config

    run_dir = Path(run_dir)
    if not cfg.resume:
        set_aside_earlier_results(run_dir)
    write_config(run_dir, cfg, run_id(cfg))
    return _run_external(cfg, run_dir, None)


def _run_external(cfg, run_dir: Path, flag: StopFlag | None) -> dict:
    """An external trainer's run (command.template), under the run's lock like ours."""
    from scaleflow.external.run import run_command

    with run_lock(run_dir):
        finished = _finished_summary(run_dir, cfg)
        if finished is not None:
            return finished
        if flag is not None:
            return run_command(cfg, run_dir, flag, fresh=not cfg.resume)
        with stop_on_signals(StopFlag()) as own:
            return run_command(cfg, run_dir, own, fresh=not cfg.resume)


def recreate_checkpoint(trunk_dir: Path, step: int) -> None:
    """Re-create a trunk's missing checkpoint at `step` by re-running the trunk from its
    newest earlier checkpoint, in a scratch directory, so its own files are untouched."""
    import shutil

    from scaleflow.config import load_run_config
    from scaleflow.checkpoints import checkpoint_path, list_checkpoints
    from scaleflow.train import train

    trunk_dir = Path(trunk_dir)
    cfg = load_run_config(trunk_dir / "config.yaml")
    cfg.resume = True
    cfg.tracker = None  # a scratch re-run of steps the trunk's tracker run already has
    scratch = trunk_dir / "recreate"
    shutil.rmtree(scratch, ignore_errors=True)
    (scratch / "checkpoints").mkdir(parents=True)
    earlier = [s for s, _ in list_checkpoints(trunk_dir) if s < step]
    if earlier:
        shutil.copy(checkpoint_path(trunk_dir, max(earlier)), checkpoint_path(scratch, max(earlier)))
    if (trunk_dir / "metrics.jsonl").exists():
        shutil.copy(trunk_dir / "metrics.jsonl", scratch / "metrics.jsonl")
    with run_lock(trunk_dir):
        train(cfg, scratch, until=step, fork_steps=(step,))
        os.replace(checkpoint_path(scratch, step), checkpoint_path(trunk_dir, step))
    shutil.rmtree(scratch)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m scaleflow.worker", description="Train one run directory.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("SCALEFLOW_THREADS", "0")))
    parser.add_argument("--until", type=int, default=0, help="stop, checkpointed, after this many steps")
    parser.add_argument("--recreate-fork", type=int, default=0, metavar="STEP",
                        help="only re-create the trunk's missing checkpoint at STEP (a decay branch forks there)")
    parser.add_argument("--fresh", action="store_true",
                        help="start from step 0 rather than the newest checkpoint (earlier results move to previous/)")
    args = parser.parse_args(argv)
    try:
        if args.recreate_fork:
            recreate_checkpoint(args.run_dir, args.recreate_fork)
            return EXIT_OK
        summary = execute_run(args.run_dir, args.threads, args.until, resume=not args.fresh)
    except ScaleflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BUSY if isinstance(exc, RunBusyError) else EXIT_USAGE
    if summary["status"] == "interrupted":
        return EXIT_INTERRUPTED
    return EXIT_OK if summary["status"] in ("done", "diverged", "stopped") else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
