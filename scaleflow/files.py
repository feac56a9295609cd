"""Crash-safe file writes and tolerant reads, shared by the trainer and the run store.

A write goes to a temporary file in the same directory, is fsynced, then renamed over the
target: a reader sees the old file or the new one, never half of one. A full disk raises
StoreError naming the file, and the previous version stays intact. Files get the mode a plain
open() would give them (0666 less the umask, so 0644 under the usual 022): teammates on a
shared filesystem can read a study unless the umask says otherwise.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable, Iterator

from scaleflow.errors import StoreError


def atomic_write(path: Path, write: Callable[[Any], None], binary: bool = True) -> None:
    """Call `write(fileobj)` on a temporary file, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = _create_temporary(path)
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreError(f"no space left on the device to write {path}; the previous version is intact") from None
        raise


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, empty `.NAME.XXXXXXXX.tmp` beside `path`, opened for writing.

    Unlike tempfile.mkstemp (always 0600), it is created with mode 0666 and the kernel applies
    the umask, as for any open(): nothing reads or changes the process-wide umask, which other
    threads may be relying on at that moment.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: json.dump(obj, f, indent=1, sort_keys=True, default=str), binary=False)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), binary=False)


def read_json(path: Path) -> dict | None:
    """A JSON object, or None when the file is missing, truncated or corrupt (runlog.read_json:
    the run contract's reader, non-finite values restored)."""
    from scaleflow import runlog

    return runlog.read_json(path)


def read_jsonl(path: Path) -> Iterator[dict]:
    """The valid JSON-object lines of a file, read as the run contract reads them
    (runlog.read_lines): a torn or corrupt line is skipped, non-finite values restored."""
    from scaleflow import runlog

    try:
        yield from runlog.read_lines(path)
    except OSError:
        return
