"""Optimal learning rate and batch size as functions of model size and data, beside compute.

Step Law's form (Li et al. 2025): eta_opt(N, D) = c N^a D^b and B_opt(N, D) = c N^g D^h, fitted
by weighted log-log least squares through the near-optimal runs of each (N, D) cell of an
(LR x batch size) grid. "Near-optimal" is the compute-only law's rule (`hparams._near`): within
`near_optimal` (0.25%) of the cell's minimum loss. Intervals: runs resampled within each cell.

Cells: runs are grouped into FLOP budgets (`group_budgets`, as the compute-only law does), then
by model size within a budget (sizes within `rtol` share a cell). Separating N from D needs two
or more model sizes at some budget: with one size per budget, N and D move together (D = C/6N).

Leave-one-budget-out: for each budget, both forms, (N, D) and compute-only k C^e, are fitted to
the same near-optimal runs of the other budgets and predict the held-out cells' optima (the
geometric mean of each cell's near-optimal runs: the points the laws are fitted to); the mean
absolute natural-log error of each form, per quantity and averaged, says which generalises better.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import pandas as pd

from scaleflow.errors import FitError
from scaleflow.fit.hparams import NEAR_OPTIMAL, _near
from scaleflow.fit.isoflop import group_budgets
from scaleflow.fit.laws import DOUBTFUL, OK, Law, PowerLaw, jsonable, resample_weights
from scaleflow.fit.tables import check_table

#: Relative difference of the mean log-errors below which neither form is called better.
TIE = 0.1


def _pow_nd(N, D, c, a, b):
    return c * N**a * D**b


def _solve_nd(lN: np.ndarray, lD: np.ndarray, ly: np.ndarray, W: np.ndarray) -> np.ndarray:
    """(R, 3) weighted least squares of ly = log c + a lN + b lD, one row of weights W per replicate;
    NaN rows where the weighted design cannot separate the three coefficients."""
    X = np.column_stack([np.ones_like(lN), lN, lD])
    A = np.einsum("rn,ni,nj->rij", W, X, X)
    rhs = np.einsum("rn,ni,n->ri", W, X, ly)
    out = np.full((len(W), 3), np.nan)
    with np.errstate(all="ignore"):
        ok = np.linalg.cond(A) < 1e10
    if ok.any():
        out[ok] = np.linalg.solve(A[ok], rhs[ok][..., None])[..., 0]
    out[:, 0] = np.exp(out[:, 0])
    return out


@dataclass(frozen=True, eq=False, kw_only=True)
class NDPowerLaw(Law):
    """y = c N^a D^b (N in parameters, D in tokens), fitted in log space."""

    PARAMS: ClassVar[tuple[str, ...]] = ("c", "a", "b")
    FUNCS: ClassVar[dict[str, Callable[..., Any]]] = {"predict": _pow_nd}
    c: float
    a: float
    b: float

    def __call__(self, N: Any, D: Any) -> np.ndarray:
        return self.evaluate("predict", N, D)

    @classmethod
    def fit(cls, N, D, y, w, boot_w: np.ndarray | None = None) -> "NDPowerLaw":
        lN, lD, ly = (np.log(np.asarray(v, float)) for v in (N, D, y))
        c, a, b = _solve_nd(lN, lD, ly, np.asarray(w, float)[None, :])[0]
        samples = np.empty((0, 3))
        if boot_w is not None and len(boot_w):
            samples = _solve_nd(lN, lD, ly, boot_w)
            samples = samples[np.isfinite(samples).all(axis=1)]
        return cls(c=float(c), a=float(a), b=float(b), samples=samples)


@dataclass(frozen=True, eq=False)
class HparamCell:
    """One (N, D) cell of the grid: its runs and near-optimal mask."""

    flops: float  # the budget
    params: float
    tokens: float
    lr: np.ndarray
    batch: np.ndarray
    loss: np.ndarray
    near: np.ndarray

    @property
    def lr_opt(self) -> float:
        """Geometric mean of the near-optimal runs' learning rates (what the laws are fitted to)."""
        return float(np.exp(np.log(self.lr[self.near]).mean()))

    @property
    def batch_opt(self) -> float:
        return float(np.exp(np.log(self.batch[self.near]).mean()))

    def to_dict(self) -> dict:
        i = int(np.argmin(self.loss))
        return jsonable({"flops": self.flops, "params": self.params, "tokens": self.tokens, "n_runs": len(self.loss),
                         "n_near_optimal": int(self.near.sum()), "lr_opt": self.lr_opt, "batch_opt": self.batch_opt,
                         "best_lr": self.lr[i], "best_batch": self.batch[i], "loss": self.loss[i]})


@dataclass(frozen=True, eq=False)
class HparamNDResult:
    """eta_opt(N, D), B_opt(N, D) (batch in `batch_unit`), the compute-only form fitted to the same
    points, and the leave-one-budget-out comparison of the two (None with fewer than 3 budgets)."""

    lr_law: NDPowerLaw
    batch_law: NDPowerLaw
    lr_c: PowerLaw
    batch_c: PowerLaw
    batch_unit: str
    cells: tuple[HparamCell, ...]
    loo: dict[str, Any] | None
    status: str = OK
    message: str = ""

    def predict(self, N, D) -> tuple[np.ndarray, np.ndarray]:
        """(learning rate, batch size in batch_unit) for N parameters trained on D tokens."""
        return self.lr_law(N, D), self.batch_law(N, D)

    def to_dict(self, include_samples: bool = False) -> dict:
        return jsonable({
            "lr": self.lr_law.to_dict(include_samples), "batch": self.batch_law.to_dict(include_samples),
            "lr_compute": self.lr_c.to_dict(False), "batch_compute": self.batch_c.to_dict(False),
            "batch_unit": self.batch_unit, "cells": [c.to_dict() for c in self.cells], "loo": self.loo,
            "status": self.status, "message": self.message,
        })


def _cells(df, batch: str, rtol: float, tol: float) -> list[HparamCell]:
    budget = group_budgets(df, rtol)
    cells = []
    for c in np.unique(budget):
        g = df[budget == c]
        size = group_budgets(pd.DataFrame({"flops": g["params"].to_numpy(float)}), rtol)  # cluster sizes alike
        for n in np.unique(size):
            h = g[size == n]
            lr, bs, loss = (h[k].to_numpy(float) for k in ("lr", batch, "loss"))
            near = _near(loss, np.ones((1, len(loss))), tol)[0] > 0
            cells.append(HparamCell(float(c), float(n), float(np.exp(np.log(h["tokens"].to_numpy(float)).mean())),
                                    lr, bs, loss, near))
    return cells


def _point_fits(cells: list[HparamCell]):
    """(lr (N, D), batch (N, D), lr compute-only, batch compute-only) through the cells' near runs."""
    col = lambda f: np.concatenate([f(c) for c in cells])
    N, D, C = (col(lambda c, k=k: np.full(len(c.lr), getattr(c, k))) for k in ("params", "tokens", "flops"))
    lr, bs, w = col(lambda c: c.lr), col(lambda c: c.batch), col(lambda c: c.near.astype(float))
    return (NDPowerLaw.fit(N, D, lr, w), NDPowerLaw.fit(N, D, bs, w), PowerLaw.fit(C, lr, w), PowerLaw.fit(C, bs, w))


def _separable(cells: list[HparamCell]) -> bool:
    X = np.array([[1.0, np.log(c.params), np.log(c.tokens)] for c in cells])
    return np.linalg.matrix_rank(X - np.r_[0.0, X[:, 1:].mean(0)], tol=1e-6) == 3


def leave_one_budget_out(cells: list[HparamCell]) -> dict[str, Any] | None:
    """Each budget held out in turn: both forms fitted on the others predict its cells' optima."""
    budgets = sorted({c.flops for c in cells})
    if len(budgets) < 3:
        return None
    points, skipped = [], []
    for held in budgets:
        train = [c for c in cells if c.flops != held]
        if not _separable(train):
            skipped.append(held)
            continue
        lr_nd, bs_nd, lr_c, bs_c = _point_fits(train)
        for c in (c for c in cells if c.flops == held):
            points.append({"flops": c.flops, "params": c.params, "tokens": c.tokens,
                           "lr_observed": c.lr_opt, "lr_nd": float(lr_nd(c.params, c.tokens)),
                           "lr_compute": float(lr_c(c.flops)), "batch_observed": c.batch_opt,
                           "batch_nd": float(bs_nd(c.params, c.tokens)), "batch_compute": float(bs_c(c.flops))})
    if not points:
        return None
    err = lambda q, form: float(np.mean([abs(np.log(p[f"{q}_{form}"] / p[f"{q}_observed"])) for p in points]))
    mae = {form: {"lr": err("lr", form), "batch": err("batch", form)} for form in ("nd", "compute")}
    for m in mae.values():
        m["mean"] = (m["lr"] + m["batch"]) / 2
    nd, c = mae["nd"]["mean"], mae["compute"]["mean"]
    winner = "tie" if abs(nd - c) <= TIE * max(nd, c) else "nd" if nd < c else "compute"
    return {"mae_log": mae, "winner": winner, "points": points, "skipped_budgets": skipped}


def _verdict(loo: dict[str, Any] | None) -> str:
    if loo is None:
        return "leave-one-budget-out comparison not run: it needs 3 or more budgets whose others separate N from D"
    nd, c = loo["mae_log"]["nd"]["mean"], loo["mae_log"]["compute"]["mean"]
    says = {"nd": "the (N, D) form generalises better", "compute": "the compute-only form generalises better",
            "tie": f"neither form generalises better (within {TIE:.0%})"}[loo["winner"]]
    return f"leave-one-budget-out: {says} (mean |log error| of LR and batch: (N, D) {nd:.3g}, compute-only {c:.3g})"


@dataclass(frozen=True, kw_only=True)
class LrBsNDFitter:
    """`LrBsNDFitter(batch="batch_tokens", n_bootstrap=200).fit(df)` -> HparamNDResult.

    Columns: params, tokens, flops, lr, the batch column and loss."""

    batch: str = "batch_tokens"
    near_optimal: float = NEAR_OPTIMAL
    rtol: float = 0.1
    n_bootstrap: int = 0
    seed: int = 0

    def fit(self, df) -> HparamNDResult:
        what = "the (N, D) LR / batch-size fit"
        check_table(df, ("params", "tokens", "flops", "lr", self.batch, "loss"), 4, what)
        cells = [c for c in _cells(df, self.batch, self.rtol, self.near_optimal) if len(c.loss) >= 2]
        per_budget = {c.flops: 0 for c in cells}
        for c in cells:
            per_budget[c.flops] += 1
        if len(per_budget) < 2:
            raise FitError(f"{what} needs at least 2 FLOP budgets with 2 or more runs each; found {len(per_budget)}")
        if max(per_budget.values()) < 2 or not _separable(cells):
            raise FitError(f"{what} cannot separate N from D: every FLOP budget has one model size "
                           f"(N and D move together); train two or more model sizes at some budget, or use --law lr-bs")
        rng = np.random.default_rng(self.seed)
        W = np.concatenate([_near(c.loss, resample_weights(rng, len(c.loss), self.n_bootstrap), self.near_optimal)
                            for c in cells], axis=1)
        col = lambda f: np.concatenate([f(c) for c in cells])
        N, D = (col(lambda c, k=k: np.full(len(c.lr), getattr(c, k))) for k in ("params", "tokens"))
        w = col(lambda c: c.near.astype(float))
        lr_nd = NDPowerLaw.fit(N, D, col(lambda c: c.lr), w, W)
        bs_nd = NDPowerLaw.fit(N, D, col(lambda c: c.batch), w, W)
        _, _, lr_c, bs_c = _point_fits(cells)
        loo = leave_one_budget_out(cells)
        edge = [f"{c.params:.3g} params at {c.flops:.3g} FLOPs" for c in cells if _on_edge(c)]
        message = _verdict(loo) + (f"; best run at the edge of the LR or batch grid: {', '.join(edge)}" if edge else "")
        return HparamNDResult(lr_nd, bs_nd, lr_c, bs_c, self.batch, tuple(cells), loo, DOUBTFUL if edge else OK, message)


def _on_edge(c: HparamCell) -> bool:
    i = int(np.argmin(c.loss))
    return any(len(np.unique(v)) > 1 and v[i] in (v.min(), v.max()) for v in (c.lr, c.batch))
