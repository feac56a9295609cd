"""A run's lock: one process trains a run directory at a time (an flock on RUN_DIR/.lock,
released by the kernel if the process dies, so a killed worker never leaves a stale lock)."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from scaleflow.errors import RunBusyError


@contextmanager
def run_lock(run_dir: Path):
    """An exclusive, non-blocking lock on a run directory (released if the process dies)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunBusyError(f"{run_dir} is being trained by another process") from None
        yield
    finally:
        os.close(fd)


def is_locked(run_dir: Path) -> bool:
    """True while a worker holds the run's lock (it is training)."""
    try:
        fd = os.open(run_dir / ".lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
