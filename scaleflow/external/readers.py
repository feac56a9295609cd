"""An external trainer's results, read from its run directory once its command exited 0.

`read_report(run_dir, cfg.command.metrics, stdout_path)` reads what `command.metrics` names
and returns a TrainerReport: the metrics lines in step order under scaleflow's names, the
parameter count the trainer reported, and whether it said the run diverged; what is missing
is a one-line ContractError naming the file and the key, column, tag or group. The rules
(docs/contract.md): `keys` maps scaleflow's names to the trainer's, a mapped name that never
occurs is an error, jsonl and json accept dotted paths ("eval.loss"); lines of one step merge,
a later value winning; numbers may carry k/M/B/G/T suffixes, NaN and inf are kept; final-only
values (json without a step, a regex without a step group, the contract's result.json
val_loss when no line has one) make one line at `final_step`, else the run's planned steps
(run.steps in run_values.json), or for result.json the last logged step; a report without
any loss is an error; params: result.json's, else the data's last, else `params_regex`'s.
"""

from __future__ import annotations

import csv
import glob
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from scaleflow import runlog
from scaleflow.errors import ScaleflowError
from scaleflow.external import tensorboard

KEYS = ("step", "tokens", "train_loss", "val_loss", "params")
LOSSES = ("val_loss", "train_loss")
FORMATS = ("contract", "jsonl", "csv", "tensorboard", "json", "regex")
VALUES_FILE = "run_values.json"  # written by external/run.py before the command: run.steps
_TB_STEP = "\0step"  # the TensorBoard step's key in merged rows (no tag can be named so)
_MISSING = object()
_SUFFIXES = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
_SUFFIXED = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([kKmMbBgGtT])")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?")


class ContractError(ScaleflowError):
    """A trainer's run directory does not hold what command.metrics says it should."""


@dataclass(frozen=True)
class TrainerReport:
    lines: list[dict]  # {"step": int, and any of "tokens", "train_loss", "val_loss"}, step order
    params: Optional[int]  # the parameter count the trainer reported, or None
    status: Optional[str]  # "diverged" when the trainer said so (result.json), else None
    source: str  # what was read, for messages: "log.csv", "stdout.log (regex)"


@dataclass
class _Data:
    """What a format's reader found, before normalisation."""

    rows: list[dict]  # the trainer's names -> raw values, in the order written
    names: list[str]  # the keys, columns, tags or groups there are (for messages)
    kind: str  # "key" | "column" | "tag" | "group"
    file: str  # what was read, in messages: "log.csv", "tb/"
    source: str  # TrainerReport.source: "log.csv", "tb/ (tensorboard)"
    hint: str = "map it with command.metrics.keys"  # how to fix a missing name
    step_key: Optional[str] = None  # where rows keep the step (None: keys["step"])
    step_optional: bool = False  # json, regex: no step = final values
    result: Optional[dict] = None  # the contract's result.json


def read_report(run_dir: Path, metrics: Any, stdout_path: Path,
                final_step: Optional[int] = None) -> TrainerReport:
    """The run's metrics as `metrics` (command.metrics: a DictConfig or MetricsSourceConfig)
    says to read them; `stdout_path` is the trainer's stdout log (regex, params_regex)."""
    run_dir, stdout_path = Path(run_dir), Path(stdout_path)
    readers = {"contract": _contract, "jsonl": _jsonl, "csv": _csv, "tensorboard": _tensorboard,
               "json": _json, "regex": _regex}
    if metrics.format not in readers:
        raise ContractError(f"command.metrics.format={metrics.format!r} is not one of {', '.join(FORMATS)}")
    keys = _keys(metrics)
    data = readers[metrics.format](run_dir, metrics, keys, stdout_path)
    lines, params, final = _normalize(data, keys)
    result = data.result or {}
    if result.get("val_loss") is not None and not any("val_loss" in line for line in lines):
        final["val_loss"] = _number(result["val_loss"], data, "val_loss", "result.json")
        if final_step is None and lines:
            final_step = lines[-1]["step"]
    if final:
        step = _final_step(run_dir, final_step, data)
        by_step = {line["step"]: line for line in lines}
        by_step.setdefault(step, {"step": step}).update(final)
        lines = [by_step[s] for s in sorted(by_step)]
    if not any(key in line for line in lines for key in LOSSES):
        _no_loss(data, keys)
    if result.get("params") is not None:
        params = _params(result["params"], "result.json")
    if params is None and metrics.params_regex:
        params = _params_from_stdout(metrics.params_regex, stdout_path, run_dir)
    status = "diverged" if result.get("status") == "diverged" else None
    return TrainerReport(lines, params, status, data.source)


# --------------------------------------------------------------------------- formats


def _contract(run_dir: Path, metrics: Any, keys: dict, stdout: Path) -> _Data:
    folder = _resolve(run_dir, metrics.path, "contract", folder=True) if metrics.path else run_dir
    path, result_path = folder / runlog.METRICS_FILE, folder / runlog.RESULT_FILE
    result = None
    if result_path.exists():
        result = runlog.read_json(result_path)
        if result is None:
            raise ContractError(f"{_show(result_path, run_dir)} is not a JSON object (docs/contract.md)")
        version = result.get("contract", runlog.CONTRACT_VERSION)
        if not isinstance(version, int) or version > runlog.CONTRACT_VERSION:
            raise ContractError(f"{_show(result_path, run_dir)} is contract version {version!r}; this "
                                f"scaleflow reads version {runlog.CONTRACT_VERSION}: upgrade scaleflow")
        if result.get("status", "done") not in runlog.STATUSES:
            raise ContractError(f"{_show(result_path, run_dir)} has status {result.get('status')!r}, "
                                f"not one of {', '.join(runlog.STATUSES)} (docs/contract.md)")
    if not path.exists() and (result is None or result.get("val_loss") is None):
        raise ContractError(f"{_show(path, run_dir)} is missing: the trainer wrote no metrics (docs/contract.md)")
    rows = runlog.read_lines(path)
    source = _show(path, run_dir) + (" + result.json" if result is not None else "")
    names = list(dict.fromkeys(k for row in rows for k in row))
    return _Data(rows, names, "key", _show(path, run_dir), source, "see docs/contract.md", "step", result=result)


def _jsonl(run_dir: Path, metrics: Any, keys: dict, stdout: Path) -> _Data:
    path = _resolve(run_dir, metrics.path, "jsonl")
    rows = runlog.read_lines(path)
    if not rows:
        raise ContractError(f"{_show(path, run_dir)} holds no JSON-object lines")
    names, shown = list(dict.fromkeys(k for row in rows for k in row)), _show(path, run_dir)
    return _Data(rows, names, "key", shown, shown)


def _csv(run_dir: Path, metrics: Any, keys: dict, stdout: Path) -> _Data:
    path = _resolve(run_dir, metrics.path, "csv")
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    first = text.split("\n", 1)[0]
    delimiter = "\t" if "\t" in first and "," not in first else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    table = [row for row in reader if any(cell.strip() for cell in row)]
    if not table:
        raise ContractError(f"{_show(path, run_dir)} is empty: no header row")
    header = [name.strip() for name in table[0]]
    body = table[1:]
    if body and not text.rstrip(" ").endswith(("\n", "\r")) and len(body[-1]) < len(header):
        body = body[:-1]  # a torn last row: the trainer was killed mid-write
    rows = [{name: cell.strip() for name, cell in zip(header, row) if cell.strip()} for row in body]
    return _Data(rows, header, "column", _show(path, run_dir), _show(path, run_dir))


def _tensorboard(run_dir: Path, metrics: Any, keys: dict, stdout: Path) -> _Data:
    root = _resolve(run_dir, metrics.path, "tensorboard", folder=True) if metrics.path else run_dir
    shown = "the run directory" if root == run_dir else _show(root, run_dir) + "/"
    if "step" in keys:
        raise ContractError("command.metrics.keys.step does not apply to format=tensorboard: "
                            "a line's step is the TensorBoard step")
    folders = tensorboard.event_folders(root)
    if not folders:
        raise ContractError(f"no TensorBoard event files under {shown} (command.metrics.path)")
    series, where = {}, {}
    for folder in folders:
        rel = folder.relative_to(root).as_posix()
        for tag, points in tensorboard.scalars(folder).items():
            series[tag if rel == "." else f"{rel}/{tag}"] = points
            where.setdefault(tag, []).append(rel)
    for tag, rels in sorted(where.items()):
        if len(rels) == 1:
            series.setdefault(tag, series[tag if rels[0] == "." else f"{rels[0]}/{tag}"])
        elif tag in [keys.get(k, k) for k in KEYS]:
            raise ContractError(f"tag '{tag}' is in several folders under {shown} ({', '.join(rels)}); "
                                f"map it with command.metrics.keys as FOLDER/{tag}")
    by_step: dict[int, dict] = {}
    for tag, points in series.items():
        for step, value in points:
            by_step.setdefault(step, {_TB_STEP: step})[tag] = value
    rows = [by_step[s] for s in sorted(by_step)]
    return _Data(rows, list(series), "tag", shown, f"{shown} (tensorboard)", step_key=_TB_STEP)


def _json(run_dir: Path, metrics: Any, keys: dict, stdout: Path) -> _Data:
    path = _resolve(run_dir, metrics.path, "json")
    obj = runlog.read_json(path)
    if obj is None:
        raise ContractError(f"{_show(path, run_dir)} is not a JSON object")
    return _Data([obj], list(obj), "key", _show(path, run_dir), _show(path, run_dir), step_optional=True)


def _regex(run_dir: Path, metrics: Any, keys: dict, stdout: Path) -> _Data:
    if not metrics.regex:
        raise ContractError("command.metrics.format=regex needs command.metrics.regex")
    pattern = _compile(metrics.regex, "command.metrics.regex")
    unknown = [g for g in pattern.groupindex if g not in KEYS]
    if unknown:
        raise ContractError(f"command.metrics.regex has group '{unknown[0]}', not one of {', '.join(KEYS)}")
    if not any(g in pattern.groupindex for g in LOSSES):
        raise ContractError("command.metrics.regex has no group val_loss or train_loss")
    shown = _show(stdout, run_dir)
    matches = [pattern.search(line) for line in _stdout_lines(stdout, run_dir)]
    rows = [{k: v for k, v in m.groupdict().items() if v is not None} for m in matches if m]
    if not rows:
        raise ContractError(f"{shown} has no line matching command.metrics.regex")
    names = list(pattern.groupindex)
    return _Data(rows, names, "group", shown, f"{shown} (regex)", "add it to command.metrics.regex", "step",
                 step_optional="step" not in names)


# --------------------------------------------------------------------------- normalising


def _normalize(data: _Data, keys: dict) -> tuple[list[dict], Optional[int], dict]:
    """(lines merged by step in step order, the last params value, final-only values)."""
    name = {k: keys.get(k, k) for k in KEYS}
    name["step"] = data.step_key or name["step"]
    for mapped in keys.values():  # a mapped name must occur: a typo is not a missing value
        if not _has(data, mapped):
            _missing(data, mapped)
    if data.rows and not data.step_optional and not _has(data, name["step"]):
        _missing(data, name["step"])
    by_step: dict[int, dict] = {}
    params, final = None, {}
    for row in data.rows:
        values = {}
        for key in ("tokens", "train_loss", "val_loss"):
            raw = _get(row, name[key])
            if raw is not _MISSING and raw is not None:
                values[key] = _number(raw, data, name[key])
        raw = _get(row, name["params"])
        if raw is not _MISSING and raw is not None:
            params = _params(raw, data.file)
        raw_step = _get(row, name["step"])
        if raw_step is _MISSING or raw_step is None:
            if values and not data.step_optional:
                raise ContractError(f"{data.file} has a line with {', '.join(values)} but no "
                                    f"{data.kind} '{name['step']}'")
            final.update(values)
            continue
        step = _step(raw_step, data, name["step"])
        if values:
            by_step.setdefault(step, {"step": step}).update(values)
    return [by_step[s] for s in sorted(by_step)], params, final


def _has(data: _Data, name: str) -> bool:
    return name in data.names or any(_get(row, name) is not _MISSING for row in data.rows)


def _get(row: dict, name: str) -> Any:
    """row[name], else a dotted path into nested objects, else _MISSING."""
    if name in row:
        return row[name]
    node: Any = row
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _missing(data: _Data, name: str) -> None:
    names = data.names if len(data.names) <= 20 else data.names[:20] + ["..."]
    raise ContractError(f"{data.file} has no {data.kind} '{name}' "
                        f"({data.kind}s: {', '.join(names) or 'none'}); {data.hint}")


def _no_loss(data: _Data, keys: dict) -> None:
    val, train = keys.get("val_loss", "val_loss"), keys.get("train_loss", "train_loss")
    if not _has(data, val) and not _has(data, train):
        _missing(data, val)
    raise ContractError(f"{data.file} holds no loss value: every '{val}' and '{train}' is empty")


def _keys(metrics: Any) -> dict[str, str]:
    raw = metrics["keys"] if callable(metrics.keys) else metrics.keys  # DictConfig.keys is a method
    keys = {str(k): str(v) for k, v in dict(raw or {}).items()}
    unknown = [k for k in keys if k not in KEYS]
    if unknown:
        raise ContractError(f"command.metrics.keys has '{unknown[0]}', not one of {', '.join(KEYS)}")
    return {} if metrics.format in ("contract", "regex") else keys


def parse_number(value: Any) -> float:
    """A number, or a numeric string such as "3.21", "7e9", "1,234,567", "124.44M", "1.2B",
    "350k" (k/K = 1e3, m/M = 1e6, b/B/g/G = 1e9, t/T = 1e12); ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if _THOUSANDS.fullmatch(text):
            text = text.replace(",", "")
        try:
            return float(text)
        except ValueError:
            match = _SUFFIXED.fullmatch(text)
            if match:
                return float(match.group(1)) * _SUFFIXES[match.group(2).lower()]
    raise ValueError(f"not a number: {value!r}")


def _number(raw: Any, data: _Data, name: str, source: Optional[str] = None) -> float:
    try:
        return parse_number(raw)
    except ValueError:
        raise ContractError(f"{source or data.file} has a non-number in {data.kind} '{name}': "
                            f"{raw!r:.40}") from None


def _step(raw: Any, data: _Data, name: str) -> int:
    value = _number(raw, data, name)
    if not math.isfinite(value) or value < 0 or value != int(value):
        raise ContractError(f"{data.file} has a step that is not a whole number in {data.kind} "
                            f"'{name}': {raw!r:.40}")
    return int(value)


def _params(raw: Any, source: str) -> int:
    try:
        value = parse_number(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 1:
        raise ContractError(f"{source} has a parameter count that is not a positive number: {raw!r:.40}")
    return int(round(value))


def _params_from_stdout(regex: str, stdout: Path, run_dir: Path) -> int:
    pattern = _compile(regex, "command.metrics.params_regex")
    if "params" not in pattern.groupindex:
        raise ContractError("command.metrics.params_regex has no group named params: (?P<params>...)")
    matches = [pattern.search(line) for line in _stdout_lines(stdout, run_dir)]
    found = [m.group("params") for m in matches if m and m.group("params") is not None]
    if not found:
        raise ContractError(f"{_show(stdout, run_dir)} has no line matching command.metrics.params_regex")
    return _params(found[-1], f"{_show(stdout, run_dir)} (params_regex)")


def _final_step(run_dir: Path, final_step: Optional[int], data: _Data) -> int:
    if final_step is not None:
        return int(final_step)
    steps = (runlog.read_json(run_dir / VALUES_FILE) or {}).get("run.steps")
    if isinstance(steps, int) and not isinstance(steps, bool):
        return steps
    raise ContractError(f"{data.file} gives final values without a step, and {VALUES_FILE} "
                        "(the run's planned steps) is missing; log a step with them")


def _resolve(run_dir: Path, pattern: Optional[str], fmt: str, folder: bool = False) -> Path:
    """command.metrics.path as one file (folder=True: a folder); a glob must match just one."""
    if not pattern:
        raise ContractError(f"command.metrics.format={fmt} needs command.metrics.path: the trainer's log file")
    full = Path(os.path.expanduser(pattern))
    full = full if full.is_absolute() else run_dir / full
    if any(c in pattern for c in "*?["):
        found = [Path(p) for p in sorted(glob.glob(str(full), recursive=True))]
        found = sorted({p if p.is_dir() else p.parent for p in found}) if folder else [p for p in found if p.is_file()]
        if not found:
            raise ContractError(f"no {'file or folder' if folder else 'file'} matches command.metrics.path={pattern!r}")
        if len(found) > 1:
            shown = ", ".join(_show(p, run_dir) for p in found[:5]) + (", ..." if len(found) > 5 else "")
            raise ContractError(f"command.metrics.path={pattern!r} matches {len(found)}: {shown}; make it match one")
        return found[0]
    if not full.exists():
        raise ContractError(f"{_show(full, run_dir)} is missing: the trainer wrote no metrics at "
                            f"command.metrics.path={pattern!r}")
    if folder:
        return full if full.is_dir() else full.parent
    if full.is_dir():
        raise ContractError(f"command.metrics.path={pattern!r} is a folder; format={fmt} reads one file")
    return full


def _stdout_lines(stdout: Path, run_dir: Path) -> list[str]:
    try:
        text = stdout.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        raise ContractError(f"{_show(stdout, run_dir)} is missing: the trainer's stdout was not kept") from None
    return text.splitlines()  # \r too: progress bars redraw a line with it


def _compile(regex: str, where: str) -> re.Pattern:
    try:
        return re.compile(regex)
    except re.error as exc:
        raise ContractError(f"{where} is not a valid regular expression: {exc}") from None


def _show(path: Path, run_dir: Path) -> str:
    try:
        return Path(path).relative_to(run_dir).as_posix()
    except ValueError:
        return str(path)
