"""The scaleflow run contract's writer (contract version 1; docs/contract.md).

A training program that scaleflow launches reports its results by writing two files into its
run directory: `metrics.jsonl` (one JSON object a line, one line per logged step) and, when it
ends, `result.json`. This module writes both. It uses the Python standard library only, so it
can be imported from an installed scaleflow or copied as a single file into any trainer:

    from scaleflow import runlog              # or: import runlog (a vendored copy)
    run = runlog.open_run()                   # the folder in $SCALEFLOW_RUN_DIR
    run.log(step, tokens=step * batch_tokens, train_loss=loss)   # as often as you like
    run.log(step, val_loss=val)               # evaluations: the same step merges
    run.finish(params=n_params, val_loss=val) # or finish("diverged")

Crash safety: every metrics line is one write() of a whole line, appended, flushed and
fsynced, so a kill mid-write leaves at most a torn last line, which readers skip (and the next
append starts on a fresh line). result.json is written to a temporary file beside it, fsynced
and renamed over the target: a reader sees no file or the whole file.

Non-finite numbers: JSON has no NaN or Infinity, so a non-finite float is written as null and
its key is listed, with its kind, in the line's reserved "nonfinite" object:
`run.log(7, train_loss=float("nan"))` writes `{"step": 7, "train_loss": null, "nonfinite":
{"train_loss": "nan"}}`, and `read_lines` gives back `{"step": 7, "train_loss": nan}`.
Non-finite floats nested inside lists or objects become null without a record.
"""

from __future__ import annotations

import json
import math
import os
import secrets

__all__ = ["CONTRACT_VERSION", "STATUSES", "Run", "open_run", "append_line", "write_json_atomic",
           "read_lines", "read_json"]

CONTRACT_VERSION = 1
STATUSES = ("done", "diverged")
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
RUN_DIR_ENV = "SCALEFLOW_RUN_DIR"
NONFINITE = "nonfinite"  # reserved key: which values of a line are NaN or infinite


class Run:
    """One run directory: `log` appends metrics lines, `finish` writes the result."""

    def __init__(self, run_dir) -> None:
        self.run_dir = os.fspath(run_dir)
        self.metrics_path = os.path.join(self.run_dir, METRICS_FILE)
        self.result_path = os.path.join(self.run_dir, RESULT_FILE)

    def __repr__(self) -> str:
        return f"Run({self.run_dir!r})"

    def log(self, step: int, **values) -> None:
        """Append `{"step": step, **values}` to metrics.jsonl. step: optimizer steps done;
        usual values: tokens (training tokens seen so far), train_loss, val_loss (nats per
        token); any other number is kept too. Call it from one process only (rank 0)."""
        if isinstance(step, bool):
            raise TypeError("step must be an integer, got a bool")
        try:
            step = int(step.__index__())
        except AttributeError:
            raise TypeError(f"step must be an integer, got {step!r}") from None
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        append_line(self.metrics_path, {"step": step, **values})

    def finish(self, status: str = "done", **values) -> None:
        """Write result.json: `{"contract": 1, "status": status, **values}`. status: "done",
        or "diverged" when the trainer stopped a run whose loss blew up. Usual values: params
        (the model's parameter count, which wins over scaleflow's estimate), val_loss (the
        final validation loss, nats per token)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        write_json_atomic(self.result_path, {"contract": CONTRACT_VERSION, "status": status, **values})


def open_run(run_dir=None) -> Run:
    """The run in `run_dir`, else in $SCALEFLOW_RUN_DIR (set by scaleflow for every run it
    launches); the folder is created if needed."""
    if run_dir is None:
        run_dir = os.environ.get(RUN_DIR_ENV) or None
    if run_dir is None:
        raise ValueError(f"no run directory: pass open_run(run_dir) or set ${RUN_DIR_ENV} "
                         "(scaleflow sets it for every run it launches)")
    os.makedirs(run_dir, exist_ok=True)
    return Run(run_dir)


# --------------------------------------------------------------------------- writing


def append_line(path, obj: dict) -> None:
    """Append `obj` as one JSON line with a single write, then flush and fsync. A previous
    torn last line (no final newline) is closed first, so it stays the only bad line. An
    OSError (a full disk: ENOSPC, EDQUOT) is raised unchanged."""
    data = encode_line(obj)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
    try:
        if os.fstat(fd).st_size > 0:
            os.lseek(fd, -1, os.SEEK_END)
            if os.read(fd, 1) != b"\n":
                data = b"\n" + data
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path, obj: dict) -> None:
    """Write `obj` as JSON to `path` atomically: a temporary file in the same folder, fsync,
    os.replace. On any error the temporary file is removed and the error raised unchanged."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    data = (json.dumps(_encode(obj), indent=1, allow_nan=False, default=_number) + "\n").encode()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, flags, 0o666)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_folder(folder)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_folder(folder: str) -> None:
    """Make a rename durable (POSIX); best effort where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def encode_line(obj: dict) -> bytes:
    return (json.dumps(_encode(obj), allow_nan=False, default=_number) + "\n").encode()


def _encode(obj: dict) -> dict:
    """`obj` with non-finite floats as null, their keys recorded under "nonfinite"."""
    if not isinstance(obj, dict):
        raise TypeError(f"a metrics line or result is a dict, got {type(obj).__name__}")
    if NONFINITE in obj:
        raise ValueError(f"{NONFINITE!r} is a reserved key of the run contract")
    out, nonfinite = {}, {}
    for key, value in obj.items():
        value = _plain(value)
        if isinstance(value, float) and not math.isfinite(value):
            nonfinite[key] = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
            value = None
        out[key] = _finite(value)
    if nonfinite:
        out[NONFINITE] = nonfinite
    return out


def _plain(value):
    """A numpy or torch scalar as a Python number (duck-typed: no imports); others unchanged."""
    if isinstance(value, (str, bytes, bool, int, float, list, tuple, dict)) or value is None:
        return value
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except Exception:  # e.g. a tensor of several elements: left to json's fallback
            return value
    return value


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(_plain(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(_plain(v)) for v in value]
    return value


def _number(value):
    """json's fallback for objects it cannot write: numbers through float(), else str()."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None


# --------------------------------------------------------------------------- reading


def read_lines(path) -> list[dict]:
    """The JSON-object lines of a file, in file order; blank, torn, corrupt and non-object
    lines are skipped, non-finite values recorded under "nonfinite" are restored (NaN and
    Infinity literals are accepted too). A missing file gives []."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    lines = []
    for raw in data.split(b"\n"):
        raw = raw.strip()
        if not raw:
            continue
        try:
            obj = json.loads(raw.decode("utf-8", errors="replace"))
        except ValueError:
            continue
        if isinstance(obj, dict):
            lines.append(_decode(obj))
    return lines


def read_json(path):
    """The JSON object in `path` (non-finite values restored), or None when the file is
    missing, torn or not an object."""
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.read().decode("utf-8", errors="replace"))
    except (OSError, ValueError):
        return None
    return _decode(obj) if isinstance(obj, dict) else None


def _decode(obj: dict) -> dict:
    nonfinite = obj.get(NONFINITE)
    if not isinstance(nonfinite, dict):
        return obj
    del obj[NONFINITE]
    for key, kind in nonfinite.items():
        if obj.get(key) is None and kind in ("nan", "inf", "-inf"):
            obj[key] = float(kind)
    return obj
