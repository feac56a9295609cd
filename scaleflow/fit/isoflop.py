"""Approach 2 (IsoFLOP, Hoffmann et al. 2022): per FLOP budget a parabola of loss in log N.

Budgets (C, FLOPs): the `budget` column where present (the planned budget), else runs whose
`flops` agree within `rtol` (relative to the smallest run of the group). Per budget with at
least 3 model sizes: loss = c0 + c1 x + c2 x^2 with x = ln N (N in parameters); the vertex
x* = -c1 / (2 c2) is N_opt(C). A budget is refused when the parabola is not convex or its
vertex lies outside the sampled sizes, and marked doubtful when the vertex is near an edge
(the parabola is biased there). D_opt (tokens) at the vertex comes from a line of ln D on
ln N within the budget (exact for D = C / 6N). Across accepted budgets: N_opt = k_N C^a and
D_opt = k_D C^b; intervals by resampling runs within each budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scaleflow.errors import FitError
from scaleflow.fit.laws import (DOUBTFUL, OK, REFUSED, AllocationLaw, PowerLaw, check_table, jsonable,
                                resample_weights)

EDGE = 0.8  # vertex beyond this fraction of the half-range from the centre: "near the edge"


def group_budgets(df, rtol: float = 0.1) -> np.ndarray:
    """FLOP budget of each row: `budget` where given, else the geometric mean of its flops group."""
    flops = np.asarray(df["flops"], float)
    out = np.asarray(df["budget"], float).copy() if "budget" in df.columns else np.full(len(flops), np.nan)
    free = np.flatnonzero(~np.isfinite(out))
    order = free[np.argsort(flops[free])]
    start = 0
    for i in range(1, len(order) + 1):
        if i == len(order) or flops[order[i]] > flops[order[start]] * (1.0 + rtol):
            group = order[start:i]
            out[group] = np.exp(np.log(flops[group]).mean())
            start = i
    return out


def parabolas(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted quadratic fits y = c0 + c1 x + c2 x^2, batched over the rows of w (R, m).

    Returns (R, 3) coefficients [c0, c1, c2] in raw x; NaN rows where fewer than 3 distinct x
    carry weight.
    """
    xm = x.mean()
    V = np.vander(x - xm, 3, increasing=True)  # (m, 3): 1, u, u^2 with u = x - xm
    M = np.einsum("rm,mi,mj->rij", w, V, V)
    rhs = np.einsum("rm,mi,m->ri", w, V, y)
    ux, inv = np.unique(x, return_inverse=True)
    ok = ((w @ (inv[:, None] == np.arange(len(ux)))) > 0).sum(axis=1) >= 3  # 3+ distinct x
    c = np.full((len(w), 3), np.nan)
    c[ok] = np.linalg.solve(M[ok], rhs[ok][..., None])[..., 0]
    # back to raw x: c0 + c1 (x - xm) + c2 (x - xm)^2
    return np.column_stack([c[:, 0] - c[:, 1] * xm + c[:, 2] * xm**2, c[:, 1] - 2 * c[:, 2] * xm, c[:, 2]])


def vertices(coef: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """x* of each parabola; NaN where not convex or outside [lo, hi]."""
    with np.errstate(invalid="ignore", divide="ignore"):
        xv = -coef[:, 1] / (2.0 * coef[:, 2])
    return np.where((coef[:, 2] > 0) & (xv >= lo) & (xv <= hi), xv, np.nan)


@dataclass(frozen=True, eq=False)
class BudgetFit:
    """One IsoFLOP budget: its runs, parabola (in ln N) and vertex. flops in FLOPs."""

    flops: float
    params: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray
    coef: np.ndarray  # [c0, c1, c2] of loss = c0 + c1 ln N + c2 (ln N)^2
    params_opt: float
    tokens_opt: float
    loss_opt: float
    status: str
    message: str

    def to_dict(self) -> dict:
        return jsonable({
            "flops": self.flops, "n_points": len(self.params), "params_range": [self.params.min(), self.params.max()],
            "coef": self.coef, "params_opt": self.params_opt, "tokens_opt": self.tokens_opt,
            "loss_opt": self.loss_opt, "status": self.status, "message": self.message,
        })


@dataclass(frozen=True, eq=False)
class IsoFlopResult:
    """Approach 2: per-budget fits and the allocation law over the accepted budgets."""

    law: AllocationLaw
    budgets: tuple[BudgetFit, ...]

    def to_dict(self, include_samples: bool = False) -> dict:
        return {**self.law.to_dict(include_samples), "budgets": [b.to_dict() for b in self.budgets]}


def fit_budget(C: float, g) -> BudgetFit:
    x, y = np.log(g["params"].to_numpy(float)), g["loss"].to_numpy(float)
    coef = parabolas(x, y, np.ones((1, len(x))))[0]
    lo, hi = x.min(), x.max()
    xv = vertices(coef[None], lo, hi)[0]
    kd = np.polyfit(x, np.log(g["tokens"].to_numpy(float)), 1)
    nan = np.nan
    if not np.isfinite(xv):
        why = "the parabola is not convex" if not coef[2] > 0 else "its minimum lies outside the sampled model sizes"
        return BudgetFit(C, np.exp(x), g["tokens"].to_numpy(float), y, coef, nan, nan, nan, REFUSED,
                         f"budget {C:.3g} FLOPs refused: {why}")
    offset = abs(xv - (lo + hi) / 2) / ((hi - lo) / 2)
    status, msg = (DOUBTFUL, f"budget {C:.3g} FLOPs: minimum near the edge of the sampled sizes "
                   "(the parabola may be biased)") if offset > EDGE else (OK, "")
    return BudgetFit(C, np.exp(x), g["tokens"].to_numpy(float), y, coef, float(np.exp(xv)),
                     float(np.exp(np.polyval(kd, xv))), float(np.polyval(coef[::-1], xv)), status, msg)


@dataclass(frozen=True)
class IsoFlopFitter:
    """Approach 2 estimator: `IsoFlopFitter(n_bootstrap=200).fit(df)` -> IsoFlopResult.

    df needs `params`, `tokens`, `loss`, `flops` (and optionally `budget`), all in natural
    units (parameters, tokens, nats/token, FLOPs).
    """

    rtol: float = 0.1
    n_bootstrap: int = 0
    seed: int = 0
    huber_delta: float = 1e-3

    def fit(self, df) -> IsoFlopResult:
        check_table(df, ("params", "tokens", "loss", "flops"), 6, "approach 2 (IsoFLOP)")
        C = group_budgets(df, self.rtol)
        groups = [(c, g) for c, g in df.groupby(C) if g["params"].nunique() >= 3]
        if len(groups) < 2:
            raise FitError(f"approach 2 needs at least 2 FLOP budgets with 3 or more model sizes each; found "
                           f"{len(groups)} (budgets grouped within {self.rtol:.0%} of FLOPs)")
        budgets = tuple(fit_budget(float(c), g) for c, g in groups)
        good = [b for b in budgets if b.status != REFUSED]
        if len(good) < 2:
            raise FitError(f"approach 2: only {len(good)} of {len(budgets)} budgets have a minimum inside the "
                           "sampled model sizes; widen the grids or use approach 3")
        Cs = np.array([b.flops for b in good])
        n_boot, d_boot = self._bootstrap(good)
        n_law = PowerLaw.fit(Cs, [b.params_opt for b in good], boot=(Cs, n_boot, np.isfinite(n_boot)))
        d_law = PowerLaw.fit(Cs, [b.tokens_opt for b in good], boot=(Cs, d_boot, np.isfinite(d_boot)))
        problems = [f"{n} of {len(budgets)} budgets {what}" for n, what in (
            (sum(b.status == REFUSED for b in budgets), "refused (no minimum inside the sampled sizes)"),
            (sum(b.status == DOUBTFUL for b in budgets), "with the minimum near the edge of the sampled sizes"))
            if n]
        if len(good) == 2:
            problems.append("only 2 usable budgets: the exponents go through 2 points")
        law = AllocationLaw("approach2", n_law, d_law, self._loss_law(good),
                            DOUBTFUL if problems else OK, "; ".join(problems))
        return IsoFlopResult(law, budgets)

    def _bootstrap(self, good: list[BudgetFit]) -> tuple[np.ndarray, np.ndarray]:
        """(R, budgets) N_opt and D_opt from runs resampled within each budget; NaN if refused."""
        rng = np.random.default_rng(self.seed)
        R = self.n_bootstrap
        n_opt, d_opt = np.full((R, len(good)), np.nan), np.full((R, len(good)), np.nan)
        for j, b in enumerate(good):
            x, m = np.log(b.params), len(b.params)
            w = resample_weights(rng, m, R)
            xv = vertices(parabolas(x, b.loss, w), x.min(), x.max())
            kd = np.polyfit(x, np.log(b.tokens), 1)
            n_opt[:, j], d_opt[:, j] = np.exp(xv), np.exp(np.polyval(kd, xv))
        return n_opt, d_opt

    def _loss_law(self, good: list[BudgetFit]):
        """L_opt(C) = E + A C^-alpha through the vertex losses, when at least 4 budgets allow it."""
        if len(good) < 4:
            return None
        import pandas as pd

        from scaleflow.fit.power import PowerFitter

        pts = pd.DataFrame({"flops": [b.flops for b in good], "loss": [b.loss_opt for b in good]})
        return PowerFitter("flops", self.huber_delta, self.n_bootstrap, self.seed).fit(pts)


def simulate(law, budgets, sizes_per_budget: int = 9, span: float = 16.0, noise: float = 0.005,
             seed: int = 0, offset: float = 1.0):
    """Synthetic IsoFLOP study from a known ChinchillaLaw (the test oracle).

    For each budget C (FLOPs): `sizes_per_budget` model sizes log-spaced over a factor `span`
    around offset * law.n_opt(C), D = C / 6N tokens, loss = law.predict(N, D) times
    exp(noise * standard normal). Returns a DataFrame with params, tokens, flops, budget, loss.
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for C in budgets:
        N = offset * law.n_opt(C) * np.geomspace(span**-0.5, span**0.5, sizes_per_budget)
        D = C / (6.0 * N)
        loss = law.predict(N, D) * np.exp(noise * rng.standard_normal(len(N)))
        rows.append(pd.DataFrame({"params": N, "tokens": D, "flops": C, "budget": C, "loss": loss}))
    return pd.concat(rows, ignore_index=True)
