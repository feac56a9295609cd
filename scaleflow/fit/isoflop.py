"""Approach 2 (IsoFLOP, Hoffmann et al. 2022): per FLOP budget, the model size of least loss.

Budgets (C, FLOPs): the `budget` column where present (the planned budget), else runs whose
`flops` agree within `rtol` (relative to the smallest run of the group).

Why not one parabola in ln N per budget (Hoffmann's method): along a budget, L(N, D) = E +
A/N^alpha + B/D^beta with D proportional to C/N is lopsided in x = ln N whenever alpha !=
beta, so a parabola over a wide ladder puts its vertex off the minimum, by a different factor
at each budget when the ladder is fixed, and the fitted exponent tilts (docs/science.md,
"Approach 2"). Each budget is fitted instead with the shape that form implies,

    L_c(x) = E_c + A_c exp(-alpha u) + B_c exp(beta u),   u = x - mean(x of budget c),

with the shape exponents alpha, beta shared by all budgets and E_c, A_c, B_c free per budget
(so the optimum of each budget is its own: nothing forces the budgets onto one law). The fit
minimises the summed squared relative error; at fixed (alpha, beta) it is linear, so a
log-spaced grid over (alpha, beta) is priced in one batched solve and refined by shrinking
grids. The minimum is u* = ln(alpha A_c / (beta B_c)) / (alpha + beta); a parabola is the
limit of small alpha and beta, so symmetric curves are fitted as well as before.

A budget is refused when its curve has no interior minimum (A_c or B_c <= 0) or the minimum
lies outside the sampled sizes, and marked doubtful when it is near an edge. D_opt (tokens)
at the minimum comes from a line of ln D on ln N within the budget (exact for D = C / 6N).
Across accepted budgets: N_opt = k_N C^a and D_opt = k_D C^b; intervals by resampling runs
within each budget and refitting everything, the shape included.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scaleflow.errors import FitError
from scaleflow.fit.defaults import HUBER_DELTA
from scaleflow.fit.doubt import unpinned_exponent
from scaleflow.fit.laws import DOUBTFUL, OK, REFUSED, AllocationLaw, PowerLaw, jsonable, resample_weights
from scaleflow.fit.tables import cluster_labels, check_table

EDGE = 0.8  # minimum beyond this fraction of the half-range from the centre: "near the edge"
SHAPE_RANGE = (0.05, 2.5)  # range searched for the shape exponents alpha, beta
COARSE, FINE, ROUNDS = 24, 5, 14  # coarse grid points per axis; refinement grid points and rounds
BOOTSTRAP_ROUNDS = 40  # at most, of a replicate's pattern search (_pattern_search)


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


@dataclass(frozen=True, eq=False)
class Curve:
    """One budget's points: x = ln N (parameters), u = x - mean(x), loss y (nats/token)."""

    x: np.ndarray
    y: np.ndarray

    @property
    def u(self) -> np.ndarray:
        return self.x - self.x.mean()


def _basis(u: np.ndarray, log_exps: np.ndarray) -> np.ndarray:
    """(..., m, 3) columns 1, exp(-alpha u), exp(beta u) for log_exps (..., 2) = ln(alpha, beta)."""
    e = np.exp(log_exps)[..., None, :]
    F = np.ones(log_exps.shape[:-1] + (len(u), 3))
    F[..., 1] = np.exp(-e[..., 0] * u)
    F[..., 2] = np.exp(e[..., 1] * u)
    return F


def _solve(c: Curve, w: np.ndarray, log_exps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relative-error least squares of one budget at each shape: w (R, m) point weights,
    log_exps (G, 2) shared by the replicates or (R, G, 2) -> coefficients (R, G, 3)
    [E_c, A_c, B_c] and weighted SSE (R, G).

    The 3 x 3 normal equations are summed and solved in closed form over every (replicate,
    shape) at once: the bootstrap's search prices thousands of shapes per budget, and small
    batched matmuls and LAPACK solves cost more than the arithmetic."""
    e = np.exp(log_exps)
    a, b = np.exp(-e[..., 0, None] * c.u), np.exp(e[..., 1, None] * c.u)  # (G, m) or (R, G, m)
    v = w / c.y**2  # relative errors: weight 1 / y^2
    vy = v * c.y
    if a.ndim == 2:  # one grid for every replicate: each sum is one matrix product
        wsum = lambda f, weight: weight @ f.T
    else:
        wsum = lambda f, weight: (f @ weight[:, :, None])[..., 0]
    s1, sy = v.sum(1)[:, None], vy.sum(1)[:, None]
    sa, sb, saa, sab, sbb = (wsum(f, v) for f in (a, b, a * a, a * b, b * b))
    ra, rb = wsum(a, vy), wsum(b, vy)
    ridge = 1e-12 * (s1 + saa + sbb)  # as a ridge of 1e-12 x trace: a flat shape stays solvable
    with np.errstate(divide="ignore", invalid="ignore"):  # a replicate that drew none of the runs: NaN
        coef = _solve_spd3(s1 + ridge, sa, sb, saa + ridge, sab, sbb + ridge, sy, ra, rb, ridge)
    residual = coef[..., 0, None] + coef[..., 1, None] * a + coef[..., 2, None] * b - c.y
    sse = wsum(residual**2, v) if a.ndim == 3 else np.einsum("rgm,rm->rg", residual**2, v)
    return coef, np.where(s1 > 0, sse, 0.0)  # a budget without runs (cluster bootstrap) prices no shape


def _solve_spd3(m00, m01, m02, m11, m12, m22, r0, r1, r2, floor) -> np.ndarray:
    """x (..., 3) of M x = r for symmetric positive semi-definite 3 x 3 matrices M, elementwise,
    by Cholesky (backward stable, unlike Cramer's rule: a budget whose resampled runs cover
    fewer than 3 sizes is singular but for the ridge, and must still get a small residual).
    A pivot that rounding pushes below `floor` is raised to it."""
    l00 = np.sqrt(m00)
    l10, l20 = m01 / l00, m02 / l00
    l11 = np.sqrt(np.maximum(m11 - l10**2, floor))
    l21 = (m12 - l20 * l10) / l11
    l22 = np.sqrt(np.maximum(m22 - l20**2 - l21**2, floor))
    z0 = r0 / l00
    z1 = (r1 - l10 * z0) / l11
    z2 = (r2 - l20 * z0 - l21 * z1) / l22
    x2 = z2 / l22
    x1 = (z1 - l21 * x2) / l11
    x0 = (z0 - l10 * x1 - l20 * x2) / l00
    return np.stack([x0, x1, x2], -1)


def fit_shapes(curves: list[Curve], weights: list[np.ndarray],
               start: np.ndarray | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Shared shape ln(alpha, beta) (R, 2) and per-budget coefficients [(R, 3)] for R replicates.

    weights[j] (R, m_j) weights the points of budget j (bootstrap counts; ones for the fit).
    A log-spaced COARSE x COARSE grid, then ROUNDS of FINE x FINE grids, each half as wide,
    around every replicate's best point. With `start` (ln(alpha, beta) of the full fit, for
    bootstrap replicates): a pattern search from there instead (_pattern_search).
    """
    R = len(weights[0])
    lo, hi = np.log(SHAPE_RANGE)
    step = (hi - lo) / (COARSE - 1)
    if start is not None:
        best = _pattern_search(curves, weights, np.asarray(start, float), 2.0 * step)
    else:
        local = np.stack(np.meshgrid(*[np.linspace(-1, 1, FINE)] * 2, indexing="ij"), -1).reshape(-1, 2)
        axis = np.linspace(lo, hi, COARSE)
        grid = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
        for _ in range(ROUNDS + 1):
            sse = sum(_solve(c, w, grid)[1] for c, w in zip(curves, weights))
            best = np.broadcast_to(grid, (R,) + grid.shape[-2:])[np.arange(R), np.argmin(np.nan_to_num(sse, nan=np.inf), 1)]
            grid = np.clip(best[:, None, :] + step * local[None], lo, hi)
            step /= 2.0
    coefs = [_solve(c, w, best[:, None, :])[0][:, 0] for c, w in zip(curves, weights)]
    return best, coefs


def _pattern_search(curves: list[Curve], weights: list[np.ndarray], start: np.ndarray, step: float) -> np.ndarray:
    """ln(alpha, beta) (R, 2) of every replicate by compass search from `start`: each round
    prices the 3 x 3 shapes at +-step around each replicate's best; a replicate moves to the
    best of them and keeps its step, or halves the step when it stays (the centre wins ties),
    so it follows a long shallow valley as far as it goes. Until every step is below 1e-4."""
    R = len(weights[0])
    lo, hi = np.log(SHAPE_RANGE)
    local = np.array([[0, 0], [-1, -1], [-1, 0], [-1, 1], [0, -1], [0, 1], [1, -1], [1, 0], [1, 1]], float)
    best, steps = np.tile(start, (R, 1)), np.full(R, step)
    for _ in range(BOOTSTRAP_ROUNDS):
        active = np.flatnonzero(steps >= 1e-4)  # only replicates still searching are priced
        if not len(active):
            break
        grid = np.clip(best[active, None, :] + steps[active, None, None] * local[None], lo, hi)
        sse = sum(_solve(c, w[active], grid)[1] for c, w in zip(curves, weights))
        pick = np.argmin(np.nan_to_num(sse, nan=np.inf), 1)
        best[active] = grid[np.arange(len(active)), pick]
        steps[active] = np.where(pick == 0, steps[active] / 2.0, steps[active])
    return best


def minimum(c: Curve, log_exps: np.ndarray, coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x*, loss at x*) of the fitted curve, batched over rows; x* NaN where the curve has no
    interior minimum or it lies outside the sampled sizes."""
    alpha, beta = np.exp(log_exps[..., 0]), np.exp(log_exps[..., 1])
    A, B = coef[..., 1], coef[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        u = np.log(alpha * A / (beta * B)) / (alpha + beta)
        loss = coef[..., 0] + A * np.exp(-alpha * u) + B * np.exp(beta * u)
    x = c.x.mean() + u
    inside = (A > 0) & (B > 0) & (x >= c.x.min()) & (x <= c.x.max())
    return np.where(inside, x, np.nan), np.where(inside, loss, np.nan)


def curve_loss(c: Curve, log_exps: np.ndarray, coef: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The fitted loss curve of budget c at x = ln N (for plots)."""
    return _basis(x - c.x.mean(), np.asarray(log_exps, float)) @ np.asarray(coef, float)


@dataclass(frozen=True, eq=False)
class BudgetFit:
    """One IsoFLOP budget: its runs, fitted curve and minimum. flops in FLOPs."""

    flops: float
    params: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray
    coef: np.ndarray  # [E_c, A_c, B_c] of L = E_c + A_c exp(-alpha u) + B_c exp(beta u)
    params_opt: float
    tokens_opt: float
    loss_opt: float
    status: str
    message: str

    @property
    def curve(self) -> Curve:
        return Curve(np.log(self.params), self.loss)

    def to_dict(self) -> dict:
        return jsonable({
            "flops": self.flops, "n_points": len(self.params), "params_range": [self.params.min(), self.params.max()],
            "coef": self.coef, "params_opt": self.params_opt, "tokens_opt": self.tokens_opt,
            "loss_opt": self.loss_opt, "status": self.status, "message": self.message,
        })


@dataclass(frozen=True, eq=False)
class IsoFlopResult:
    """Approach 2: per-budget fits, their shared shape exponents and the allocation law."""

    law: AllocationLaw
    budgets: tuple[BudgetFit, ...]
    shape: tuple[float, float]  # (alpha, beta) of the budgets' curves

    def curve_loss(self, budget: BudgetFit, params: np.ndarray) -> np.ndarray:
        """Fitted loss of `budget` at `params` (parameters)."""
        return curve_loss(budget.curve, np.log(self.shape), budget.coef, np.log(params))

    def to_dict(self, include_samples: bool = False) -> dict:
        return {**self.law.to_dict(include_samples), "budgets": [b.to_dict() for b in self.budgets],
                "method": "per-budget curves E_c + A_c N^-alpha + B_c N^beta with shared alpha, beta",
                "shape": {"alpha": self.shape[0], "beta": self.shape[1]}}


def _tokens_at(params: np.ndarray, tokens: np.ndarray, log_params):
    """Tokens of a model of exp(log_params) parameters at one budget: the line through its
    runs' (ln N, ln D), exact when every run counts C = k N D."""
    return np.exp(np.polyval(np.polyfit(np.log(params), np.log(tokens), 1), log_params))


def _budget(C: float, g, log_exps: np.ndarray, coef: np.ndarray) -> BudgetFit:
    c = Curve(np.log(g["params"].to_numpy(float)), g["loss"].to_numpy(float))
    tokens = g["tokens"].to_numpy(float)
    xv, lv = (float(v) for v in minimum(c, log_exps, coef))
    if not np.isfinite(xv):
        why = ("the fitted curve has no interior minimum" if not (coef[1] > 0 and coef[2] > 0)
               else "its minimum lies outside the sampled model sizes")
        return BudgetFit(C, np.exp(c.x), tokens, c.y, coef, np.nan, np.nan, np.nan, REFUSED,
                         f"budget {C:.3g} FLOPs refused: {why}")
    lo, hi = c.x.min(), c.x.max()
    near_edge = abs(xv - (lo + hi) / 2) / ((hi - lo) / 2) > EDGE
    status, msg = (DOUBTFUL, f"budget {C:.3g} FLOPs: minimum near the edge of the sampled sizes") if near_edge \
        else (OK, "")
    return BudgetFit(C, np.exp(c.x), tokens, c.y, coef, float(np.exp(xv)), float(_tokens_at(np.exp(c.x), tokens, xv)),
                     lv, status, msg)


@dataclass(frozen=True, kw_only=True)
class IsoFlopFitter:
    """Approach 2 estimator: `IsoFlopFitter(n_bootstrap=200).fit(df)` -> IsoFlopResult.

    df needs `params`, `tokens`, `loss`, `flops` (and optionally `budget`), all in natural
    units (parameters, tokens, nats/token, FLOPs). The bootstrap resamples runs within each
    budget; with `cluster` (a column, e.g. `trunk`), it draws whole clusters across budgets
    instead (each cluster's runs at every budget together).
    """

    rtol: float = 0.1
    n_bootstrap: int = 0
    seed: int = 0
    huber_delta: float = HUBER_DELTA
    cluster: str | None = None

    def fit(self, df) -> IsoFlopResult:
        from scaleflow.fit.parametric import one_blas_thread

        with one_blas_thread():  # small batched solves: idle BLAS threads would only spin
            return self._fit(df)

    def _fit(self, df) -> IsoFlopResult:
        check_table(df, ("params", "tokens", "loss", "flops"), 6, "approach 2 (IsoFLOP)")
        df = df.reset_index(drop=True)  # row labels are positions: the cluster bootstrap indexes by them
        C = group_budgets(df, self.rtol)
        groups = [(float(c), g) for c, g in df.groupby(C) if g["params"].nunique() >= 3]
        if len(groups) < 2:
            raise FitError(f"approach 2 needs at least 2 FLOP budgets with 3 or more model sizes each; found "
                           f"{len(groups)} (budgets grouped within {self.rtol:.0%} of FLOPs)")
        if max(g["params"].nunique() for _, g in groups) < 4:
            raise FitError("approach 2 needs 4 or more model sizes in at least one budget to fit the curves' shape")
        curves = [Curve(np.log(g["params"].to_numpy(float)), g["loss"].to_numpy(float)) for _, g in groups]
        log_exps, coefs = fit_shapes(curves, [np.ones((1, len(c.x))) for c in curves])
        budgets = tuple(_budget(c, g, log_exps[0], k[0]) for (c, g), k in zip(groups, coefs))
        good = [b for b in budgets if b.status != REFUSED]
        if len(good) < 2:
            raise FitError(f"approach 2: only {len(good)} of {len(budgets)} budgets have a minimum inside the "
                           "sampled model sizes; widen the grids or use approach 3")
        Cs = np.array([b.flops for b in good])
        n_boot, d_boot = self._bootstrap(budgets, curves, log_exps[0], self._weights(df, groups))
        keep = [i for i, b in enumerate(budgets) if b.status != REFUSED]
        n_boot, d_boot = n_boot[:, keep], d_boot[:, keep]
        n_law = PowerLaw.fit(Cs, [b.params_opt for b in good], boot=(Cs, n_boot, np.isfinite(n_boot)))
        d_law = PowerLaw.fit(Cs, [b.tokens_opt for b in good], boot=(Cs, d_boot, np.isfinite(d_boot)))
        law = AllocationLaw("approach2", n_law, d_law, self._loss_law(good), *self._status(budgets, good, n_law))
        return IsoFlopResult(law, budgets, tuple(float(v) for v in np.exp(log_exps[0])))

    @staticmethod
    def _status(budgets, good, n_law: PowerLaw) -> tuple[str, str]:
        problems = [f"{n} of {len(budgets)} budgets {what}" for n, what in (
            (sum(b.status == REFUSED for b in budgets), "refused (no minimum inside the sampled sizes)"),
            (sum(b.status == DOUBTFUL for b in budgets), "with the minimum near the edge of the sampled sizes"))
            if n]
        if len(good) == 2:
            problems.append("only 2 usable budgets: the exponents go through 2 points")
        problems += unpinned_exponent(n_law)
        return (DOUBTFUL if problems else OK), "; ".join(problems)

    def _weights(self, df, groups) -> list[np.ndarray]:
        """Each budget's (R, runs) bootstrap counts: its runs resampled, or, with a cluster
        column, the counts of one draw of whole clusters over the table."""
        rng = np.random.default_rng(self.seed)
        if self.cluster is None:
            return [resample_weights(rng, len(g), self.n_bootstrap) for _, g in groups]
        every_row = resample_weights(rng, len(df), self.n_bootstrap, cluster_labels(df, self.cluster))
        return [every_row[:, g.index.to_numpy()] for _, g in groups]

    def _bootstrap(self, budgets, curves: list[Curve], start: np.ndarray,
                   weights: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(R, budgets) N_opt and D_opt from resampled runs (`weights`: each budget's counts),
        the shape refitted too; NaN where a replicate's curve has no minimum inside the sampled
        sizes."""
        R = self.n_bootstrap
        if R == 0:
            return np.empty((0, len(curves))), np.empty((0, len(curves)))
        log_exps, coefs = fit_shapes(curves, weights, start)
        n_opt, d_opt = np.full((R, len(curves)), np.nan), np.full((R, len(curves)), np.nan)
        for j, (c, b, k) in enumerate(zip(curves, budgets, coefs)):
            distinct = (weights[j] @ (c.x[:, None] == np.unique(c.x)[None]) > 0).sum(axis=1)
            xv = np.where(distinct >= 3, minimum(c, log_exps, k)[0], np.nan)
            n_opt[:, j], d_opt[:, j] = np.exp(xv), _tokens_at(b.params, b.tokens, xv)
        return n_opt, d_opt

    def _loss_law(self, good: list[BudgetFit]):
        """L_opt(C) = E + A C^-alpha through the minima's losses, when at least 4 budgets allow it."""
        if len(good) < 4:
            return None
        import pandas as pd

        from scaleflow.fit.power import PowerFitter

        pts = pd.DataFrame({"flops": [b.flops for b in good], "loss": [b.loss_opt for b in good]})
        fitter = PowerFitter(x="flops", huber_delta=self.huber_delta, n_bootstrap=self.n_bootstrap, seed=self.seed)
        return fitter.fit(pts)


def simulate(law, budgets, sizes_per_budget: int = 9, span: float = 16.0, noise: float = 0.005,
             seed: int = 0, offset: float = 1.0, ladder=None):
    """Synthetic IsoFLOP study from a known ChinchillaLaw (the test oracle).

    For each budget C (FLOPs): model sizes N (parameters) from `ladder` (the same fixed sizes at
    every budget, as real studies use), else `sizes_per_budget` sizes log-spaced over a factor
    `span` around offset * law.n_opt(C); D = C / 6N tokens, loss = law.predict(N, D) times
    exp(noise * standard normal). Returns a DataFrame with params, tokens, flops, budget, loss.
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for C in budgets:
        N = np.asarray(ladder, float) if ladder is not None else \
            offset * law.n_opt(C) * np.geomspace(span**-0.5, span**0.5, sizes_per_budget)
        D = C / (6.0 * N)
        loss = law.predict(N, D) * np.exp(noise * rng.standard_normal(len(N)))
        rows.append(pd.DataFrame({"params": N, "tokens": D, "flops": C, "budget": C, "loss": loss}))
    return pd.concat(rows, ignore_index=True)
