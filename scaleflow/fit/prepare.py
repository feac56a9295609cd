"""The table a fit works on: load a source, map its columns, leave out what must not be fitted.

SOURCE is a CSV or parquet table (columns `params, tokens, loss`, optional `flops, lr,
batch_size, batch_tokens, budget, diverged`), a study directory (collected on the fly), or,
with a kind (`scaleflow fit --from wandb|tensorboard|mlflow`), results read by
`scaleflow.importers`.
Units: params in parameters, tokens in tokens, flops in FLOPs, loss in nats/token.
`prepare` drops WSD trunks, diverged runs and duplicate rows (counted), applies `--where`,
fills a missing tokens or flops column, fixes the one FLOP count every approach uses, and
builds approach 1's curves from annealed points only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scaleflow.errors import FitError
from scaleflow.fit.tables import check_table, numeric_column
from scaleflow.fit.types import PARAM_COUNTS, RESAMPLE_UNITS, SIX_ND, FitData, FitOptions


def load_source(source: str | Path, kind: str | None = None):
    """(runs table, notes, history or None) from a CSV/parquet file or a study directory, or,
    with `kind` (wandb, tensorboard, mlflow: FitOptions.source_kind), an importer."""
    if kind:
        from scaleflow.importers import import_table

        runs, notes = import_table(kind, source)
        return runs, notes, None
    path = Path(source)
    if path.is_dir():
        from scaleflow.collect import collect

        c = collect(path)
        return c.runs, tuple(getattr(c, "warnings", ()) or ()), getattr(c, "history", None)
    return read_table(path, source), (), None


def read_table(path: Path, source: str | Path):
    import pandas as pd

    if not path.exists():
        raise FitError(f"no such file or study directory: {source}")
    readers = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".pq": pd.read_parquet}
    if path.suffix.lower() not in readers:
        raise FitError(f"cannot read {source}: expected a .csv or .parquet table, or a study directory")
    try:
        return readers[path.suffix.lower()](path)
    except Exception as exc:  # a corrupt or unreadable file is the user's to fix
        raise FitError(f"cannot read {source}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _map_columns(df, columns: dict[str, str], param_count: str | None):
    for logical, src in columns.items():
        if src not in df.columns:
            raise FitError(f"--col {logical}={src}: no column {src!r}; the table has: {', '.join(map(str, df.columns))}")
        df = df.drop(columns=[logical], errors="ignore") if logical != src else df
        df = df.rename(columns={src: logical})
    if param_count:
        if param_count not in PARAM_COUNTS:
            raise FitError(f"--param-count must be one of {', '.join(PARAM_COUNTS)}; got {param_count!r}")
        col = f"params_{param_count}"
        if col not in df.columns:
            raise FitError(f"--param-count {param_count} needs column {col!r}, which the table lacks")
        df = df.assign(params=df[col])
    return df


def _derive(df, notes: list[str]):
    """Fill tokens = flops / (6 params) or flops = 6 params tokens when one of them is absent."""
    cols = set(df.columns)
    if "tokens" not in cols and {"flops", "params"} <= cols:
        check_table(df, ("flops", "params"), 1, "deriving tokens")
        df = df.assign(tokens=df["flops"] / (6.0 * df["params"]))
        notes.append("no tokens column: tokens = flops / (6 params)")
    elif "flops" not in cols and {"tokens", "params"} <= cols:
        check_table(df, ("tokens", "params"), 1, "deriving flops")
        df = df.assign(flops=6.0 * df["params"] * df["tokens"])
        notes.append("no flops column: flops = 6 params tokens")
    return df


def _trunk_column(df, resample: str, notes: list[str]):
    """Add `trunk` (the run each row branched off, else its own run) where the table says
    which runs are branches (`parent`); note when branches share trunks but runs are resampled
    as independent. `resample`: runs or trunks (FitOptions.resample)."""
    if resample not in RESAMPLE_UNITS:
        raise FitError(f"--resample must be one of {', '.join(RESAMPLE_UNITS)}; got {resample!r}")
    if "trunk" not in df.columns and "parent" in df.columns:
        own = df["run_id"] if "run_id" in df.columns else df.index.astype(str).to_series(index=df.index)
        df = df.assign(trunk=df["parent"].where(df["parent"].notna(), own))
    if resample == "trunks" and "trunk" not in df.columns:
        raise FitError("--resample trunks needs each run's trunk: a study directory's branches name theirs; "
                       "a table needs a parent or trunk column (--col trunk=COLUMN)")
    if resample == "runs" and "trunk" in df.columns:
        sizes = df["trunk"].value_counts()
        if (sizes > 1).any():
            notes.append(f"{int(sizes[sizes > 1].sum())} runs branch off {int((sizes > 1).sum())} shared trunks: "
                         "intervals resample runs as independent, which understates them as far as branches share "
                         "their trunk's noise; --resample trunks draws whole trunks (approaches 2 and 3)")
    return df


def flop_definition(df, notes: list[str]) -> dict[str, Any]:
    """The one FLOP count C of every approach and prediction: the `flops` column as the study
    counted it. Approach 3 needs C as a function of N and D: C = k N D with k the geometric
    mean of flops / (N D) over the runs (6 for the 6ND count with the same N)."""
    with np.errstate(all="ignore"):
        ratio = np.log(numeric_column(df, "flops") / (numeric_column(df, "params") * numeric_column(df, "tokens")))
    ratio = ratio[np.isfinite(ratio)]
    if not len(ratio):
        return dict(SIX_ND)
    k = float(np.exp(ratio.mean()))
    spread = float(np.exp(np.abs(ratio - ratio.mean()).max()) - 1.0)
    counts = sorted({str(c) for c in df["flop_count"].dropna()}) if "flop_count" in df.columns else []
    definition = f"flops column (trainer.flop_count={', '.join(counts)})" if counts else "flops column"
    if spread > 0.01:
        notes.append(f"FLOPs per parameter per token vary by up to {spread:.1%} across runs (the FLOP count is "
                     "not proportional to this N times D: attention or embedding terms, or another parameter count): "
                     f"approach 3 converts with C = {k:.3g} N D, so its optima are approximate by about that much")
    return {"definition": definition, "flops_per_param_token": k, "spread": spread}


CURVE_KEYS = ("lr", "batch_size", "seed", "parent")  # besides the size, what makes runs one curve


def final_point_curves(table):
    """Approach-1 curves: one point per finished run (its final loss) or WSD branch (its end),
    one curve per model size (4 significant digits) and setting (LR, batch, seed, trunk).

    Mid-run evaluation points are never used: before its schedule has annealed, a run's loss
    overstates what that compute buys (Hoffmann et al. 2022's caveat on approach 1), and
    stable-phase (trunk) losses are already left out by `prepare`."""
    need = {"params", "flops", "tokens", "loss"}
    if not need <= set(table.columns):
        return None
    t = table[list(need)].copy()
    key = table["params"].map(lambda v: f"{float(v):.4g}")
    for col in (c for c in CURVE_KEYS if c in table.columns):
        key = key + "|" + table[col].map(str)
    t["curve"] = key
    return t


def prepare(runs, options: FitOptions, notes: tuple[str, ...] = (), history=None) -> FitData:
    """Map columns, pick the parameter count, drop trunks and diverged runs, filter, derive."""
    notes_l, excluded = list(notes), {}
    df = _map_columns(runs, options.columns, options.param_count)
    if "kind" in df.columns and (df["kind"] == "trunk").any():
        excluded["trunks"] = int((df["kind"] == "trunk").sum())
        notes_l.append(f"{excluded['trunks']} trunk run(s) left out: stable-phase losses are not final")
        df = df[df["kind"] != "trunk"]
    if "diverged" in df.columns:
        bad = df["diverged"].fillna(False).astype(bool)
        if bad.any():
            ids = df.loc[bad, "run_id"] if "run_id" in df.columns else df.index[bad]
            excluded["diverged"] = [str(i) for i in ids]
            notes_l.append(f"{int(bad.sum())} diverged run(s) excluded: {', '.join(excluded['diverged'][:10])}")
            df = df[~bad]
    dup = df.duplicated()
    if dup.any():
        excluded["duplicates"] = int(dup.sum())
        notes_l.append(f"{excluded['duplicates']} duplicate row(s) dropped (identical in every column)")
        df = df[~dup]
    if options.where:
        n = len(df)
        try:
            df = df.query(options.where)
        except Exception as exc:
            raise FitError(f"--where {options.where!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        excluded["filtered"] = n - len(df)
    if not len(df):
        raise FitError("no runs left to fit (after dropping diverged runs and applying --where)")
    counted = "flops" in df.columns
    df = _trunk_column(_derive(df.reset_index(drop=True), notes_l), options.resample, notes_l)
    flops = flop_definition(df, notes_l) if counted and {"params", "tokens"} <= set(df.columns) else dict(SIX_ND)
    return FitData(df, final_point_curves(df), tuple(notes_l), excluded, history, flops)
