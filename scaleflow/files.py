"""Crash-safe file writes and tolerant reads, shared by the trainer and the run store.

A write goes to a temporary file in the same directory, is fsynced, then renamed over the
target: a reader sees the old file or the new one, never half of one. A full disk raises
StoreError naming the file, and the previous version stays intact.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from scaleflow.errors import StoreError


def atomic_write(path: Path, write: Callable[[Any], None], binary: bool = True) -> None:
    """Call `write(fileobj)` on a temporary file, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreError(f"no space left on the device to write {path}; the previous version is intact") from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: json.dump(obj, f, indent=1, sort_keys=True, default=str), binary=False)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), binary=False)


def read_json(path: Path) -> dict | None:
    """A JSON object, or None when the file is missing, truncated or corrupt."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def read_jsonl(path: Path) -> Iterator[dict]:
    """The valid JSON-object lines of a file; a torn or corrupt line is skipped."""
    try:
        with open(path) as f:
            for line in f:
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    yield obj
    except OSError:
        return
