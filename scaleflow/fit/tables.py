"""Checks on the tables a fitter is given: columns present, numeric, finite and positive, enough
rows. Each failure is a FitError that names the column and what to do."""

from __future__ import annotations

from typing import Any

import numpy as np

from scaleflow.errors import FitError


def numeric_column(df: Any, name: str, kind: str = "column") -> np.ndarray:
    """df[name] as floats; FitError ("<kind> 'name' is not numeric") if it is not numeric."""
    try:
        return np.asarray(df[name], dtype=float)
    except (TypeError, ValueError):
        raise FitError(f"{kind} {name!r} is not numeric") from None


def require_columns(df: Any, columns: tuple[str, ...] | list[str], what: str) -> None:
    """FitError naming the missing columns unless `df` has all of `columns`."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise FitError(f"{what} needs column(s) {', '.join(missing)}; the table has: {', '.join(map(str, df.columns))}")


def check_table(df: Any, columns: tuple[str, ...] | list[str], min_rows: int, what: str) -> None:
    """Raise FitError unless `df` has `columns`, all finite and > 0, and at least `min_rows` rows.

    `what` names the fit in the message (e.g. "approach 3 (5 parameters)").
    """
    require_columns(df, columns, what)
    for c in columns:
        v = numeric_column(df, c)
        bad = int((~np.isfinite(v) | (v <= 0)).sum())
        if bad:
            raise FitError(f"column {c!r} has {bad} non-positive or missing value(s); fix or filter them (--where)")
    if len(df) < min_rows:
        raise FitError(f"{what} needs at least {min_rows} points; got {len(df)}")


def cluster_labels(df: Any, column: str | None) -> np.ndarray | None:
    """df[column] as text labels, the units a cluster bootstrap draws (None: no column, no
    clusters); FitError if the column is missing or has gaps."""
    if column is None:
        return None
    require_columns(df, (column,), f"resampling by {column!r}")
    missing = int(df[column].isna().sum())
    if missing:
        raise FitError(f"column {column!r} has {missing} missing value(s): each run needs one to be resampled by")
    return df[column].astype(str).to_numpy()
