"""Results a group already has, as a runs table: W&B exports, TensorBoard logs, MLflow stores.

`import_table(kind, path)` -> (DataFrame, notes): one row per finished run, its columns named
as the source names them (config keys, summary metrics, scalar tags, params), numbers where
the text parses as numbers. The table then goes through `scaleflow fit`'s column mapping
(`--col params=n_params`), `--where` and fitting like any CSV; `scaleflow import` writes it.

- wandb: the CSV of the W&B runs table's "Export CSV" (Name, State, ..., config and summary
  columns). Runs whose State is not `finished` are left out and counted.
- tensorboard: a log directory; every folder under it holding event files is a run, named by
  its path relative to the directory. A scalar tag's column holds its value at the tag's last
  step; hparams-plugin values (`SummaryWriter.add_hparams`, `hp.hparams`) become columns too,
  and a sub-folder holding hparams (add_hparams writes one) joins the run folder above it.
- mlflow: a file store (`mlruns/` or one experiment's folder), read without mlflow: params,
  each metric's value at its last step, the run name (`tags/mlflow.runName`). Runs whose status
  is not FINISHED are left out and counted; deleted experiments and runs are skipped.

Bad input is a one-line FitError. Imported lazily: pandas, yaml and tensorboard load on use.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from scaleflow.errors import FitError

KINDS = ("wandb", "tensorboard", "mlflow")
LABELS = {"wandb": "W&B export", "tensorboard": "TensorBoard logs", "mlflow": "MLflow store"}
MLFLOW_STATUS = {1: "RUNNING", 2: "SCHEDULED", 3: "FINISHED", 4: "FAILED", 5: "KILLED"}


def import_table(kind: str, path: str | Path) -> tuple[Any, tuple[str, ...]]:
    """(one row per finished run, notes) from a W&B CSV export, TensorBoard logs or an MLflow store."""
    readers = {"wandb": _wandb, "tensorboard": _tensorboard, "mlflow": _mlflow}
    if kind not in readers:
        raise FitError(f"--from takes one of {', '.join(KINDS)}; got {kind!r}")
    if not Path(path).exists():
        raise FitError(f"no such file or directory: {path}")
    rows, n_read, left_out, notes = readers[kind](Path(path))
    summary = f"{LABELS[kind]} {path}: {n_read} run(s) read, {len(rows)} imported"
    if left_out:
        reasons = ", ".join(f"{n} {why}" for why, n in left_out.most_common())
        summary += f"; {sum(left_out.values())} left out: {reasons}"
    if rows.empty:
        raise FitError(f"nothing finished to fit in {path}: {n_read} run(s) read"
                       + (f", left out: {reasons}" if left_out else ""))
    return _numbers(rows.reset_index(drop=True)), (summary, *notes)


def import_to(kind: str, path: str | Path, out: str | Path) -> tuple[Any, tuple[str, ...]]:
    """`scaleflow import`: import_table(kind, path), written to OUT; (table, notes)."""
    _table_format(out)  # a bad --out fails before the import, not after
    table, notes = import_table(kind, path)
    write_table(table, out)
    return table, notes


def write_table(df: Any, out: str | Path) -> Path:
    """Write an imported table to OUT (.csv, or .parquet / .pq), atomically."""
    from scaleflow.files import atomic_write

    out = Path(out)
    if _table_format(out) == "csv":
        atomic_write(out, lambda f: df.to_csv(f, index=False))
    else:  # parquet wants one type per column: a column mixing text and numbers is written as text
        text = {c: df[c].map(lambda v: v if v is None or v != v else str(v)) for c in df.columns
                if df[c].dtype == object and df[c].dropna().map(type).nunique() > 1}
        atomic_write(out, lambda f: df.assign(**text).to_parquet(f, index=False))
    return out


def _table_format(out: str | Path) -> str:
    suffix = Path(out).suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise FitError(f"--out must name a .csv or .parquet file; got {out}")
    return "csv" if suffix == ".csv" else "parquet"


def _numbers(df):
    """Columns whose every non-empty cell reads as a number become numeric (text cells too)."""
    import pandas as pd

    out = {}
    for c in df.columns:
        s = df[c]
        if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            continue
        cells = s.map(lambda v: v.strip() if isinstance(v, str) else v).astype(object)
        filled = cells.notna() & (cells != "")
        if not filled.any() or cells[filled].map(lambda v: isinstance(v, bool)).any():
            continue
        values = pd.to_numeric(cells.where(filled), errors="coerce")
        if values[filled].notna().all():
            out[c] = values
    return df.assign(**out) if out else df


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# ----------------------------------------------------------------------------- W&B


def _wandb(path: Path):
    """The CSV of the W&B runs table's Export CSV: keep rows whose State is `finished`."""
    import pandas as pd

    if path.is_dir():
        raise FitError(f"not a W&B export: {path} is a directory (give the CSV the runs table's Export CSV writes)")
    try:
        df = pd.read_csv(path, encoding="utf-8-sig")
    except Exception as exc:  # empty, binary or malformed: the user's file to fix
        raise FitError(f"not a W&B export: cannot read {path} as CSV: {_first_line(exc)}") from None
    missing = [c for c in ("Name", "State") if c not in df.columns]
    if missing:
        raise FitError(f"not a W&B export: {path} has no {' or '.join(missing)} column "
                       "(the runs table's Export CSV writes Name, State, ...); it has: "
                       f"{', '.join(map(str, df.columns[:12]))}")
    state = df["State"].map(lambda v: str(v).strip().lower() if v == v else "no state")
    done = state == "finished"
    left = Counter(state[~done])
    return df[done], len(df), left, ()


# ----------------------------------------------------------------------------- TensorBoard


def _tensorboard(path: Path):
    """One row per folder with event files: each scalar tag's last value, and its hparams."""
    import pandas as pd

    from scaleflow.external.tensorboard import event_folders, scalars

    if not path.is_dir():
        raise FitError(f"not a TensorBoard log directory: {path} is a file "
                       "(give the folder holding one sub-folder per run)")
    folders = event_folders(path)
    if not folders:
        raise FitError(f"no TensorBoard event files (events.out.tfevents.*) under {path}")
    hparams = {f: _hparams(f) for f in folders}
    runs: dict[Path, tuple[dict, dict]] = {}
    for folder in folders:
        last = {tag: points[-1][1] for tag, points in scalars(folder).items()
                if points and not tag.startswith("_hparams_/")}
        host = next((p for p in folder.parents if p in runs), None) if hparams[folder] else None
        if host is None:
            runs[folder] = (dict(hparams[folder]), last)
        else:  # add_hparams' own sub-folder: its hparams and metrics belong to the run above it
            runs[host][0].update(hparams[folder])
            for tag, value in last.items():
                runs[host][1].setdefault(tag, value)
    rows, renamed, empty = [], set(), 0
    for folder, (hp, last) in runs.items():
        if not last:
            empty += 1
            continue
        clash = set(hp) & set(last)
        renamed |= clash
        name = folder.relative_to(path).as_posix() if folder != path else path.name
        rows.append({"run": name, **{(f"hparams.{k}" if k in clash else k): v for k, v in hp.items()}, **last})
    notes = ((f"hparam(s) named like a scalar tag kept as hparams.NAME: {', '.join(sorted(renamed))}",)
             if renamed else ())
    left = Counter({"without scalar values": empty}) if empty else Counter()
    return pd.DataFrame(rows), len(runs), left, notes


def _hparams(folder: Path) -> dict[str, Any]:
    """The hparams plugin's session-start values in `folder` ({} without), through the
    tensorboard package's own accumulator (scalars are read by external.tensorboard)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 1, "tensors": 1, "histograms": 1,
                                                       "images": 1, "audio": 1, "compressedHistograms": 1})
    acc.Reload()
    try:
        content = acc.PluginTagToContent(metadata.PLUGIN_NAME).get(metadata.SESSION_START_INFO_TAG)
    except KeyError:  # the folder logged no hparams
        return {}
    if content is None:
        return {}
    info = metadata.parse_session_start_info_plugin_data(content)
    out = {}
    for key, value in sorted(info.hparams.items()):
        kind = value.WhichOneof("kind")
        if kind in ("number_value", "string_value", "bool_value"):
            out[key] = getattr(value, kind)
    return out


# ----------------------------------------------------------------------------- MLflow


def _mlflow(path: Path):
    """One row per FINISHED run of every active experiment under `path` (or of `path` itself)."""
    import pandas as pd

    rows, left = [], Counter()
    n_read = 0
    for exp_dir, exp in _experiments(path):
        for run_dir in sorted(d for d in exp_dir.iterdir() if d.is_dir() and (d / "meta.yaml").is_file()):
            meta = _yaml(run_dir / "meta.yaml")
            if not ("run_id" in meta or "run_uuid" in meta):
                continue
            n_read += 1
            status = meta.get("status")
            status = MLFLOW_STATUS.get(status, str(status)) if not isinstance(status, str) else status.upper()
            if exp.get("lifecycle_stage") == "deleted" or meta.get("lifecycle_stage") == "deleted":
                left["deleted"] += 1
            elif status != "FINISHED":
                left[status] += 1
            else:
                rows.append(_mlflow_run(run_dir, meta, exp))
    renamed = sorted({k[len("params."):] for r in rows for k in r if k.startswith("params.")})
    notes = (f"param(s) named like a metric kept as params.NAME: {', '.join(renamed)}",) if renamed else ()
    return pd.DataFrame(rows), n_read, left, notes


def _experiments(path: Path) -> list[tuple[Path, dict]]:
    """(folder, meta) of `path` itself when it is an experiment's folder, else of every
    experiment folder in it; `.trash` (deleted experiments) is never entered."""
    if not path.is_dir():
        raise FitError(f"not an MLflow store: {path} is a file (give the mlruns folder or one experiment's folder)")
    own = _yaml(path / "meta.yaml") if (path / "meta.yaml").is_file() else None
    if own is not None and _is_experiment(own):
        return [(path, own)]
    found = []
    for d in sorted(path.iterdir()):
        if d.is_dir() and not d.name.startswith(".") and (d / "meta.yaml").is_file():
            meta = _yaml(d / "meta.yaml")
            if _is_experiment(meta):
                found.append((d, meta))
    if not found:
        raise FitError(f"not an MLflow store: {path} holds no experiment folder (<experiment_id>/meta.yaml "
                       "with <run_id>/ folders beside it)")
    return found


def _is_experiment(meta: dict) -> bool:
    return "experiment_id" in meta and not ("run_id" in meta or "run_uuid" in meta)


def _mlflow_run(run_dir: Path, meta: dict, exp: dict) -> dict[str, Any]:
    """run, run_id, experiment, then params (a param named like a metric: params.KEY), metrics."""
    params = _key_files(run_dir / "params")
    metrics = {key: _last_value(p) for key, p in _key_paths(run_dir / "metrics").items()}
    metrics = {k: v for k, v in metrics.items() if v is not None}
    tags = _key_files(run_dir / "tags")
    row: dict[str, Any] = {
        "run": tags.get("mlflow.runName") or meta.get("run_name") or run_dir.name,
        "run_id": str(meta.get("run_id") or meta.get("run_uuid")),
        "experiment": str(exp.get("name", exp.get("experiment_id"))),
    }
    row.update({(f"params.{k}" if k in metrics else k): v for k, v in params.items()})
    row.update(metrics)
    return row


def _key_paths(folder: Path) -> dict[str, Path]:
    """key -> file under `folder` (a key with slashes, e.g. val/loss, is a nested path)."""
    if not folder.is_dir():
        return {}
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def _key_files(folder: Path) -> dict[str, str]:
    return {key: p.read_text(encoding="utf-8").strip() for key, p in _key_paths(folder).items()}


def _last_value(path: Path) -> float | None:
    """The value at the last step of an MLflow metric file ("timestamp value [step]" lines);
    of several values at that step, the latest logged."""
    best = None
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            timestamp, value = float(parts[0]), float(parts[1])
            step = int(parts[2]) if len(parts) > 2 else 0
        except (ValueError, IndexError):
            raise FitError(f"not an MLflow store: {path} line {i} is not 'timestamp value step': "
                           f"{line.strip()!r}") from None
        if best is None or (step, timestamp) >= best[:2]:
            best = (step, timestamp, value)
    return None if best is None else best[2]


def _yaml(path: Path) -> dict:
    import yaml

    try:
        meta = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise FitError(f"not an MLflow store: cannot read {path}: {_first_line(exc)}") from None
    return meta if isinstance(meta, dict) else {}
