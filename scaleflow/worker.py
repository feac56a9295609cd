"""What a launched job runs: train the run described by a run directory's config.yaml.

`python -m scaleflow.worker RUN_DIR` is the whole job, locally and on SLURM. It takes the
run's lock (so two sweeps never train the same run at once), resumes from the newest
checkpoint, and on SIGINT/SIGTERM/SIGUSR2 checkpoints at the next step boundary and exits.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

from scaleflow.errors import ScaleflowError, StoreError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
EXIT_INTERRUPTED = 3  # the run checkpointed and stopped early; run it again to resume
EXIT_BUSY = 4  # another process holds the run's lock


@contextmanager
def run_lock(run_dir: Path):
    """An exclusive, non-blocking lock on a run directory (released if the process dies)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"{run_dir} is being trained by another process") from None
        yield
    finally:
        os.close(fd)


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


@contextmanager
def stop_on_signals(flag: StopFlag):
    previous = {s: signal.signal(s, flag.handle) for s in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def train_interruptible(cfg, run_dir: Path) -> dict:
    """Train under the run's lock; a stop signal checkpoints and returns status interrupted."""
    from scaleflow.train import train

    run_dir = Path(run_dir)
    with run_lock(run_dir), stop_on_signals(StopFlag()) as flag:
        return train(cfg, run_dir, should_stop=flag)


def execute_run(run_dir: Path, threads: int = 0) -> dict:
    """Train (or resume) the run whose config.yaml is in `run_dir`."""
    import torch

    from scaleflow.config import load_run_config

    run_dir = Path(run_dir)
    if threads > 0:
        torch.set_num_threads(threads)
    cfg = load_run_config(run_dir / "config.yaml")
    cfg.resume = True
    return train_interruptible(cfg, run_dir)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m scaleflow.worker RUN_DIR [THREADS]", file=sys.stderr)
        return 2
    threads = int(argv[1]) if len(argv) > 1 else int(os.environ.get("SCALEFLOW_THREADS", "0"))
    try:
        summary = execute_run(Path(argv[0]), threads)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BUSY if "another process" in str(exc) else 2
    except ScaleflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if summary["status"] in ("interrupted", "stopped"):
        return EXIT_INTERRUPTED if summary["status"] == "interrupted" else 0
    return 0 if summary["status"] in ("done", "diverged") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
