"""Does the best learning rate transfer across width? (`scaleflow fit --law lr-transfer`)

docs/science.md section 7. Input: one row per run of an LR x width grid (`scaleflow/sweeps/mup_transfer_*`),
columns `lr`, `d_model` (the width), `loss` (final loss, nats/token), optional
`parametrization` ('sp' | 'mup'; one group "all" without it) and `diverged` (such runs are
left out and listed; a non-finite loss counts as diverged). Repeated runs of one
(parametrization, width, lr), e.g. seeds, are averaged.

Per (parametrization, width): the optimal LR, interpolated by a parabola in log LR through
the best grid point and its two neighbours (its vertex lies between the neighbours). A best
point at the edge of the grid is reported as it is, never extrapolated, with status
`edge_low` / `edge_high`, or `below_divergence` when the table's larger LRs diverged (or are
missing) at that width. (Through `scaleflow fit`, diverged runs are dropped before this
analysis sees them: a larger LR that finished at another width but not at this one marks it.)
Per parametrization, the drift across widths: lr_opt(widest) / lr_opt(narrowest), the slope
of log lr_opt against log width (least squares; its standard error from 3 widths up) and the
number of grid steps the optimum moved (log of the ratio over log of the grid's LR factor).
muP predicts a slope near 0; under SP with Adam the hidden-matrix rule suggests down to -1
(lr_opt ~ 1/width).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from scaleflow.errors import FitError
from scaleflow.fit.laws import DOUBTFUL, OK, jsonable
from scaleflow.fit.tables import numeric_column, require_columns

EDGE_LOW, EDGE_HIGH, BELOW_DIVERGENCE = "edge_low", "edge_high", "below_divergence"


def parabola_vertex(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(x, y) of the vertex of the parabola through three points; NaN when it is not convex."""
    (x0, x1, x2), (y0, y1, y2) = x, y
    d = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / d
    b = (x2**2 * (y0 - y1) + x1**2 * (y2 - y0) + x0**2 * (y1 - y2)) / d
    if not a > 1e-12 * max(1.0, abs(b)):
        return math.nan, math.nan
    c = y0 - a * x0**2 - b * x0
    xv = -b / (2 * a)
    return xv, c - b * b / (4 * a)


@dataclass(frozen=True, eq=False)
class WidthOptimum:
    """One (parametrization, width): its LR grid, losses and the optimal LR."""

    parametrization: str
    width: float
    lr: np.ndarray  # sorted, distinct, finished runs only
    loss: np.ndarray
    lr_opt: float  # interpolated (status ok) or the best grid point
    loss_opt: float
    status: str  # ok | edge_low | edge_high | below_divergence
    message: str = ""
    diverged_lrs: tuple[float, ...] = ()
    n_runs: int = 0

    @property
    def best(self) -> int:
        return int(np.argmin(self.loss))

    def to_dict(self) -> dict[str, Any]:
        return jsonable({
            "parametrization": self.parametrization, "width": self.width, "lr_opt": self.lr_opt,
            "loss_opt": self.loss_opt, "best_lr": self.lr[self.best], "best_loss": self.loss[self.best],
            "status": self.status, "message": self.message, "n_runs": self.n_runs,
            "lrs": self.lr, "losses": self.loss, "diverged_lrs": list(self.diverged_lrs),
        })


@dataclass(frozen=True, eq=False)
class Drift:
    """How the optimal LR of one parametrization moves from the narrowest to the widest width."""

    parametrization: str
    widths: np.ndarray
    lr_opt: np.ndarray
    ratio: float  # lr_opt(widest) / lr_opt(narrowest)
    slope: float  # d log lr_opt / d log width
    slope_se: float  # standard error of the slope (NaN with 2 widths)
    grid_factor: float  # LR ratio of neighbouring grid points (median)
    grid_steps: float  # log(ratio) / log(grid_factor), signed
    grid_points_moved: int  # between the best grid points of the narrowest and the widest width, signed
    status: str
    message: str = ""

    @property
    def width_range(self) -> float:
        return float(self.widths.max() / self.widths.min())

    @property
    def within_one_grid_step(self) -> bool:
        return bool(abs(self.grid_steps) <= 1.0 + 1e-9)

    def to_dict(self) -> dict[str, Any]:
        return jsonable({
            "parametrization": self.parametrization, "widths": self.widths, "lr_opt": self.lr_opt,
            "width_range": self.width_range, "ratio": self.ratio, "slope": self.slope, "slope_se": self.slope_se,
            "grid_factor": self.grid_factor, "grid_steps": self.grid_steps, "grid_points_moved": self.grid_points_moved,
            "within_one_grid_step": self.within_one_grid_step, "status": self.status, "message": self.message,
        })


@dataclass(frozen=True, eq=False)
class TransferResult:
    """Optimal LR per (parametrization, width) and its drift across widths per parametrization."""

    optima: tuple[WidthOptimum, ...]
    drifts: tuple[Drift, ...]
    status: str = OK
    message: str = ""
    skipped: dict[str, str] | None = None  # group -> why it was left out

    def drift(self, parametrization: str) -> Drift:
        return next(d for d in self.drifts if d.parametrization == parametrization)

    def optimum(self, parametrization: str, width: float) -> WidthOptimum:
        return next(o for o in self.optima if o.parametrization == parametrization and o.width == width)

    def to_dict(self, include_samples: bool = False) -> dict[str, Any]:
        return jsonable({
            "optima": [o.to_dict() for o in self.optima], "drift": {d.parametrization: d.to_dict() for d in self.drifts},
            "skipped_groups": self.skipped or {}, "status": self.status, "message": self.message,
        })


@dataclass(frozen=True, kw_only=True)
class LrTransferFitter:
    """`LrTransferFitter().fit(df)` -> TransferResult (df: lr, d_model, loss[, parametrization, diverged])."""

    width: str = "d_model"

    def fit(self, df) -> TransferResult:
        what = "the LR transfer analysis"
        require_columns(df, ("lr", self.width, "loss"), what)
        lr, width, loss = numeric_column(df, "lr"), numeric_column(df, self.width), numeric_column(df, "loss")
        if ((~np.isfinite(lr)) | (lr <= 0)).any() or ((~np.isfinite(width)) | (width <= 0)).any():
            raise FitError(f"{what}: columns 'lr' and {self.width!r} must be positive numbers in every row")
        par = (df["parametrization"].fillna("?").astype(str).to_numpy() if "parametrization" in df.columns
               else np.full(len(df), "all"))
        diverged = (np.asarray(df["diverged"].fillna(False), dtype=bool) if "diverged" in df.columns
                    else np.zeros(len(df), bool)) | ~np.isfinite(loss)
        optima, skipped = [], {}
        grid = np.unique(lr)
        for p in sorted(set(par)):
            for w in sorted(set(width[par == p])):
                sel = (par == p) & (width == w)
                name = f"{p} width {w:g}"
                ok = sel & ~diverged
                if not ok.any():
                    skipped[name] = "every run diverged"
                    continue
                lrs = np.unique(lr[ok])
                if len(lrs) < 2:
                    skipped[name] = f"only one learning rate ({lrs[0]:.3g}) finished"
                    continue
                mean_loss = np.array([loss[ok & (lr == v)].mean() for v in lrs])
                optima.append(self._optimum(p, float(w), lrs, mean_loss, np.unique(lr[sel & diverged]),
                                            grid, int(sel.sum())))
        if not optima:
            why = [f"{k}: {v}" for k, v in skipped.items()]
            raise FitError(f"{what} needs at least 2 finished learning rates at some width; "
                           + "; ".join(why[:3]) + (f"; and {len(why) - 3} more" if len(why) > 3 else ""))
        drifts = []
        for p in sorted({o.parametrization for o in optima}):
            group = sorted((o for o in optima if o.parametrization == p), key=lambda o: o.width)
            if len(group) < 2:
                skipped[f"{p} drift"] = "only one width with a usable LR grid"
                continue
            drifts.append(self._drift(p, group, grid))
        problems = [o.message for o in optima if o.status != OK] + [d.message for d in drifts if d.status != OK]
        dup = len(df) - len(set(zip(par, width, lr)))
        if dup:
            problems.append(f"{dup} repeated run(s) of one (parametrization, width, lr) averaged")
        status = DOUBTFUL if any(o.status != OK for o in optima) or any(d.status != OK for d in drifts) else OK
        return TransferResult(tuple(optima), tuple(drifts), status, "; ".join(problems), skipped)

    @staticmethod
    def _optimum(p: str, w: float, lr: np.ndarray, loss: np.ndarray, diverged: np.ndarray, grid: np.ndarray,
                 n: int) -> WidthOptimum:
        """`grid`: every finished LR of the table; larger ones missing here diverged or were not run."""
        i = int(np.argmin(loss))
        where = f"{p} width {w:g}"
        lr_opt, loss_opt, status, message = float(lr[i]), float(loss[i]), OK, ""
        if i == len(lr) - 1:
            above = np.union1d(diverged[diverged > lr[i]], grid[grid > lr[i]])
            if len(above):
                why = "diverged" if len(diverged) and diverged.max() > lr[i] else "diverged or are missing"
                status = BELOW_DIVERGENCE
                message = (f"{where}: best at the largest LR that finished ({lr[i]:.3g}); larger LRs "
                           f"({', '.join(f'{v:.3g}' for v in above)}) {why}")
            else:
                status = EDGE_HIGH
                message = f"{where}: best at the largest LR of the grid ({lr[i]:.3g}); the optimum may be larger"
        elif i == 0:
            status = EDGE_LOW
            message = f"{where}: best at the smallest LR of the grid ({lr[i]:.3g}); the optimum may be smaller"
        else:
            xv, yv = parabola_vertex(np.log(lr[i - 1:i + 2]), loss[i - 1:i + 2])
            if np.isfinite(xv):  # equal losses have no curvature: keep the grid point
                lr_opt, loss_opt = float(np.exp(xv)), float(yv)
        return WidthOptimum(p, w, lr, loss, lr_opt, loss_opt, status, message,
                            tuple(float(v) for v in diverged), n)

    @staticmethod
    def _drift(p: str, group: list[WidthOptimum], grid: np.ndarray) -> Drift:
        w = np.array([o.width for o in group])
        y = np.array([o.lr_opt for o in group])
        lx, ly = np.log(w), np.log(y)
        A = np.column_stack([np.ones_like(lx), lx])
        coef, *_ = np.linalg.lstsq(A, ly, rcond=None)
        slope, se = float(coef[1]), math.nan
        if len(w) >= 3:
            resid = ly - A @ coef
            se = float(math.sqrt((resid @ resid) / (len(w) - 2) / ((lx - lx.mean()) @ (lx - lx.mean()))))
        steps = np.diff(np.log(grid))
        factor = float(np.exp(np.median(steps))) if len(steps) else math.nan
        ratio = float(y[-1] / y[0])
        grid_steps = math.log(ratio) / math.log(factor) if factor > 1 else math.nan
        best = [o.lr[o.best] for o in (group[0], group[-1])]
        moved = int(round(math.log(best[1] / best[0]) / math.log(factor))) if factor > 1 else 0
        edges = [f"{o.width:g}" for o in group if o.status != OK]
        if edges:
            return Drift(p, w, y, ratio, slope, se, factor, grid_steps, moved, DOUBTFUL,
                         f"{p}: the optimum is on the edge of the LR grid at width(s) {', '.join(edges)}: "
                         "its drift is a bound, not a measurement")
        return Drift(p, w, y, ratio, slope, se, factor, grid_steps, moved, OK)
