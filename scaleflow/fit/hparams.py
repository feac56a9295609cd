"""Optimal learning rate and batch size against compute (DeepSeek LLM 2024, section 3.1).

Input: one row per run of an (LR x batch size) grid at several FLOP budgets, columns `flops`
(FLOPs; grouped into budgets as in approach 2, or the `budget` column), `lr`, the batch
column (`batch_tokens` in tokens by default, or `batch_size` in sequences) and `loss`
(nats/token). Per budget: the best run and the near-optimal set, the runs within 0.25% of
the budget's minimum loss. Fits through all near-optimal runs: eta_opt = k C^e and
B_opt = k C^e (log-log least squares); intervals by resampling runs within each budget.
DeepSeek's fits: eta_opt = 0.3118 C^-0.1250, B_opt = 0.2920 C^0.3271 (tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scaleflow.errors import FitError
from scaleflow.fit.isoflop import group_budgets
from scaleflow.fit.laws import DOUBTFUL, OK, PowerLaw, jsonable, resample_weights
from scaleflow.fit.tables import check_table


@dataclass(frozen=True, eq=False)
class HparamBudget:
    """One budget of the grid: its runs, the best one and the near-optimal mask."""

    flops: float
    lr: np.ndarray
    batch: np.ndarray
    loss: np.ndarray
    near: np.ndarray  # bool per run: within the tolerance of the minimum loss
    status: str
    message: str

    @property
    def best(self) -> int:
        return int(np.argmin(self.loss))

    def to_dict(self) -> dict:
        i = self.best
        return jsonable({
            "flops": self.flops, "n_runs": len(self.loss), "lr": self.lr[i], "batch": self.batch[i],
            "loss": self.loss[i], "n_near_optimal": int(self.near.sum()),
            "near_lr_range": [self.lr[self.near].min(), self.lr[self.near].max()],
            "near_batch_range": [self.batch[self.near].min(), self.batch[self.near].max()],
            "status": self.status, "message": self.message,
        })


@dataclass(frozen=True, eq=False)
class HparamResult:
    """eta_opt(C) and B_opt(C) (batch in `batch_unit`), with the per-budget optima."""

    lr_law: PowerLaw
    batch_law: PowerLaw
    batch_unit: str
    budgets: tuple[HparamBudget, ...]
    status: str = OK
    message: str = ""

    def predict(self, C) -> tuple[np.ndarray, np.ndarray]:
        """(learning rate, batch size in batch_unit) for C FLOPs."""
        return self.lr_law(C), self.batch_law(C)

    def to_dict(self, include_samples: bool = False) -> dict:
        return jsonable({
            "lr": self.lr_law.to_dict(include_samples), "batch": self.batch_law.to_dict(include_samples),
            "batch_unit": self.batch_unit, "budgets": [b.to_dict() for b in self.budgets],
            "status": self.status, "message": self.message,
        })


def _near(loss: np.ndarray, w: np.ndarray, tol: float) -> np.ndarray:
    """(R, m) weights of near-optimal runs in each replicate (runs drawn w times)."""
    best = np.where(w > 0, loss, np.inf).min(axis=1, keepdims=True)
    return w * (loss <= best * (1.0 + tol))


NEAR_OPTIMAL = 0.0025  # runs within this fraction of a cell's best loss count as optimal


@dataclass(frozen=True, kw_only=True)
class LrBsFitter:
    """`LrBsFitter(batch="batch_tokens", n_bootstrap=200).fit(df)` -> HparamResult."""

    batch: str = "batch_tokens"
    near_optimal: float = NEAR_OPTIMAL
    rtol: float = 0.1
    n_bootstrap: int = 0
    seed: int = 0

    def fit(self, df) -> HparamResult:
        check_table(df, ("flops", "lr", self.batch, "loss"), 4, "the LR / batch-size fit")
        C = group_budgets(df, self.rtol)
        groups = [(float(c), g) for c, g in df.groupby(C) if len(g) >= 2]
        if len(groups) < 2:
            raise FitError(f"the LR / batch-size fit needs at least 2 FLOP budgets with 2 or more runs each; "
                           f"found {len(groups)}")
        rng = np.random.default_rng(self.seed)
        budgets, cols, reps = [], {"flops": [], "lr": [], "batch": [], "near": []}, []
        for c, g in groups:
            lr, bs, loss = (g[k].to_numpy(float) for k in ("lr", self.batch, "loss"))
            near = _near(loss, np.ones((1, len(loss))), self.near_optimal)[0] > 0
            budgets.append(HparamBudget(c, lr, bs, loss, near, *self._edge(c, lr, bs, int(np.argmin(loss)))))
            for k, v in (("flops", np.full(len(lr), c)), ("lr", lr), ("batch", bs), ("near", near)):
                cols[k].append(v)
            reps.append(_near(loss, resample_weights(rng, len(loss), self.n_bootstrap), self.near_optimal))
        x, lr, bs, near = (np.concatenate(cols[k]) for k in ("flops", "lr", "batch", "near"))
        W = np.concatenate(reps, axis=1)
        lr_law = PowerLaw.fit(x, lr, near, boot=(x, lr, W))
        batch_law = PowerLaw.fit(x, bs, near, boot=(x, bs, W))
        problems = [b.message for b in budgets if b.status != OK]
        return HparamResult(lr_law, batch_law, self.batch, tuple(budgets),
                            DOUBTFUL if problems else OK, "; ".join(problems))

    @staticmethod
    def _edge(c: float, lr: np.ndarray, bs: np.ndarray, i: int) -> tuple[str, str]:
        """Doubtful when the best run sits on the edge of the budget's LR or batch grid."""
        edges = [name for name, v in (("learning rate", lr), ("batch size", bs))
                 if len(np.unique(v)) > 1 and v[i] in (v.min(), v.max())]
        if not edges:
            return OK, ""
        return DOUBTFUL, f"budget {c:.3g} FLOPs: the best run is at the edge of the {' and '.join(edges)} grid"
