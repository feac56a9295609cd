"""Compute multiplier of one training recipe over another (`scaleflow fit --law compute-multiplier`).

Two recipes (an architecture, a data mix, an optimiser: anything that changes the loss
reached for a given N and D) are fitted jointly with approach 3's law and SHARED exponents,

    L_r(N, D) = E_r + A_r / N^alpha + B_r / D^beta,   r in {A, B},

recipe-specific E_r (one shared E with `shared_e`), A_r, B_r, by the summed Huber loss of
log L_pred - log L_obs in log-sum-exp form, on approach 3's engine (`fit.parametric`:
`lse_huber`, its variable-projection grid for the seeds, its L-BFGS-B refinement and polish).
Under C = k N D (k = 6 for the 6ND count) each recipe's compute-optimal loss is
L*_r(C) = E_r + K_r (C/k)^-gamma with gamma = alpha beta / (alpha + beta) (science.md, section 3).

The effective compute multiplier of B over A at budget C is the m with L*_A(m C) = L*_B(C): A
needs m times the compute to match what B reaches with C (m > 1: B is better; infinite where
B's loss is below A's E). With a shared E it is the same at every C, (K_A / K_B)^(1/gamma).
The crossover is the C where L*_A = L*_B (m = 1), searched within a factor CROSSOVER_SPAN of
the data's budgets either side; "none" when the curves do not cross there. Intervals: 95%
percentile bootstrap, runs resampled within each recipe, every replicate refitted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scaleflow.errors import FitError
from scaleflow.fit.defaults import HUBER_DELTA
from scaleflow.fit.laws import DOUBTFUL, OK, _chin_compute_for_loss, _chin_G, _chin_loss_opt, jsonable, \
    percentile_interval, resample_weights
from scaleflow.fit.parametric import best_refined, lse_huber, one_blas_thread, polish, theta_status, vp_grid
from scaleflow.fit.tables import check_table, require_columns

PARAMS = ("E_A", "E_B", "A_A", "A_B", "B_A", "B_B", "alpha", "beta")
CROSSOVER_SPAN = 1e6  # the crossover is searched from the smallest budget / this to the largest x this
MIN_RUNS = 4  # per recipe


def design(X: np.ndarray, group: np.ndarray, shared_e: bool) -> np.ndarray:
    """(n, 3, p) tensor T with log L_pred = LSE_t(T[i, t] @ theta); X = log [N, D], group 0 (A) or 1 (B).

    theta = [e_A, e_B, a_A, a_B, b_A, b_B, alpha, beta] (one e when shared), e = log E etc."""
    n, off = len(group), 1 if shared_e else 2
    T = np.zeros((n, 3, off + 6))
    rows = np.arange(n)
    T[rows, 0, 0 if shared_e else group] = 1.0
    T[rows, 1, off + group] = 1.0
    T[rows, 2, off + 2 + group] = 1.0
    T[:, 1, off + 4] = -X[:, 0]
    T[:, 2, off + 5] = -X[:, 1]
    return T


def joint_objective(theta, T, logy, delta, w=None, asymmetry=1.0):
    """Summed Huber loss of the joint model and its gradient (`refine`'s objective signature)."""
    flat = T.reshape(-1, T.shape[2])
    f, gz = lse_huber(list((flat @ theta).reshape(T.shape[:2]).T), logy, delta, w, asymmetry)
    return f, np.column_stack(gz).reshape(-1) @ flat


def recentre(theta: np.ndarray, centre: np.ndarray, shared_e: bool, sign: float = 1.0) -> np.ndarray:
    """theta rows fitted on X - centre -> on X (sign -1: the reverse). Centring the log
    variables decouples the a's from the exponents: L-BFGS-B then needs far fewer steps."""
    theta = np.array(np.atleast_2d(theta), float)
    off = 1 if shared_e else 2
    theta[:, off:off + 2] += sign * theta[:, [off + 4]] * centre[0]
    theta[:, off + 2:off + 4] += sign * theta[:, [off + 5]] * centre[1]
    return theta


def to_params(theta: np.ndarray, shared_e: bool) -> np.ndarray:
    """theta rows (on uncentred X) -> rows of PARAMS (E_A, E_B, A_A, A_B, B_A, B_B, alpha, beta)."""
    theta = np.atleast_2d(theta)
    e = np.repeat(theta[:, :1], 2, axis=1) if shared_e else theta[:, :2]
    off = 1 if shared_e else 2
    return np.column_stack([np.exp(e), np.exp(theta[:, off:off + 4]), theta[:, off + 4:]])


def _recipe(p: dict[str, Any], r: str) -> dict[str, Any]:
    return {"E": p[f"E_{r}"], "A": p[f"A_{r}"], "B": p[f"B_{r}"], "alpha": p["alpha"], "beta": p["beta"]}


def loss_opt(p: dict[str, Any], r: str, C, k: float = 6.0):
    """Recipe r's ("A" or "B") compute-optimal loss at C FLOPs; p maps PARAMS to values or arrays."""
    return _chin_loss_opt(np.asarray(C, float), k=k, **_recipe(p, r))


def multiplier(p: dict[str, Any], C, k: float = 6.0):
    """m(C) with L*_A(m C) = L*_B(C); inf where B's loss is at or below A's E."""
    C = np.asarray(C, float)
    with np.errstate(all="ignore"):
        need = _chin_compute_for_loss(loss_opt(p, "B", C, k), k=k, **_recipe(p, "A"))
        return np.where(np.isfinite(need), need / C, np.inf)


def crossover(p: dict[str, Any], lo: float, hi: float, k: float = 6.0):
    """C where L*_A(C) = L*_B(C), NaN when the curves do not cross within [lo, hi]."""
    gamma = p["alpha"] * p["beta"] / (p["alpha"] + p["beta"])
    K = {}
    for r in ("A", "B"):
        q = _recipe(p, r)
        G = _chin_G(q["A"], q["B"], q["alpha"], q["beta"])
        K[r] = q["A"] * G ** -q["alpha"] + q["B"] * G ** q["beta"]
    with np.errstate(all="ignore"):
        ratio = np.asarray((p["E_A"] - p["E_B"]) / (K["B"] - K["A"]), float)
        C = np.where(ratio > 0, k * ratio ** (-1.0 / gamma), np.nan)
        return np.where((C >= lo) & (C <= hi), C, np.nan)


@dataclass(frozen=True, eq=False, kw_only=True)
class MultiplierResult:
    """The joint fit: params (PARAMS), bootstrap samples (rows in PARAMS order), the multiplier of
    recipe B over recipe A at each budget with intervals, and the crossover (NaN: none)."""

    recipes: tuple[str, str]
    params: dict[str, float]
    budgets: np.ndarray
    crossover_range: tuple[float, float]
    samples: np.ndarray = field(default_factory=lambda: np.empty((0, len(PARAMS))))
    shared_e: bool = False
    k: float = 6.0
    huber_loss: float = math.nan
    n_points: tuple[int, int] = (0, 0)
    status: str = OK
    message: str = ""

    def _columns(self) -> dict[str, np.ndarray]:
        return {p: self.samples[:, i][:, None] for i, p in enumerate(PARAMS)}

    def loss_opt(self, recipe: str, C) -> np.ndarray:
        return loss_opt(self.params, recipe, C, self.k)

    def multiplier(self, C) -> np.ndarray:
        return multiplier(self.params, C, self.k)

    def multiplier_interval(self, C) -> np.ndarray:
        """(2, len(C)) 95% interval of the multiplier over the replicates (NaN without them)."""
        C = np.atleast_1d(np.asarray(C, float))
        if not self.samples.size:
            return np.full((2, len(C)), np.nan)
        return percentile_interval(multiplier(self._columns(), C[None, :], self.k))

    @property
    def crossover(self) -> float:
        return float(crossover(self.params, *self.crossover_range, self.k))

    def crossover_samples(self) -> np.ndarray:
        if not self.samples.size:
            return np.empty(0)
        return crossover(self._columns(), *self.crossover_range, self.k)[:, 0]

    @property
    def ci(self) -> dict[str, list[float]]:
        s = self.samples if self.samples.size else np.empty((0, len(PARAMS)))
        lo, hi = percentile_interval(s)
        return {p: [float(lo[i]), float(hi[i])] for i, p in enumerate(PARAMS)}

    def to_dict(self, include_samples: bool = False) -> dict[str, Any]:
        m, (lo, hi) = self.multiplier(self.budgets), self.multiplier_interval(self.budgets)
        cross, cs = self.crossover, self.crossover_samples()
        found = cs[np.isfinite(cs)]
        d: dict[str, Any] = {
            **self.params, "recipe_A": self.recipes[0], "recipe_B": self.recipes[1], "shared_e": self.shared_e,
            "k": self.k, "huber_loss": self.huber_loss, "n_points_A": self.n_points[0], "n_points_B": self.n_points[1],
            "ci": self.ci, "multiplier": [
                {"flops": float(C), "multiplier": float(v), "ci": [float(a), float(b)],
                 "loss_A": float(self.loss_opt("A", C)), "loss_B": float(self.loss_opt("B", C))}
                for C, v, a, b in zip(self.budgets, m, lo, hi)],
            "crossover": cross if np.isfinite(cross) else "none",
            "crossover_ci": percentile_interval(found).tolist() if len(found) else [None, None],
            "crossover_fraction": float(len(found) / len(cs)) if len(cs) else None,
            "crossover_range": list(self.crossover_range),
            "status": self.status, "message": self.message, "n_bootstrap": len(self.samples),
        }
        if include_samples:
            d["samples"] = self.samples.tolist()
        return jsonable(d)


@dataclass(frozen=True, kw_only=True)
class MultiplierFitter:
    """`MultiplierFitter(n_bootstrap=200).fit(df)` -> MultiplierResult.

    df: columns `params`, `tokens`, `loss` (positive) and `recipe` (exactly two distinct values;
    recipe A is `baseline`, else the first in sorted order). `budgets`: FLOPs at which to report
    the multiplier (empty: the data's budgets, `flops` column or k N D, grouped within
    `budget_rtol`). `flops_per_param_token` (k): C = k N D.
    """

    huber_delta: float = HUBER_DELTA
    n_bootstrap: int = 0
    seed: int = 0
    flops_per_param_token: float = 6.0
    shared_e: bool = False
    asymmetry: float = 1.0
    budgets: tuple[float, ...] = ()
    budget_rtol: float = 0.1
    baseline: str | None = None

    def fit(self, df) -> MultiplierResult:
        require_columns(df, ("recipe",), "compute-multiplier (map it with --col recipe=Column, or give --versus)")
        check_table(df, ("params", "tokens", "loss"), 1, "compute-multiplier")
        names = sorted({str(v) for v in df["recipe"].dropna()})
        if len(names) != 2:
            raise FitError(f"compute-multiplier needs two recipes, got {len(names)}: {', '.join(names[:10]) or 'none'}")
        if self.baseline is not None and str(self.baseline) in names:
            names.remove(str(self.baseline))
            names.insert(0, str(self.baseline))
        recipe = df["recipe"].astype(str).to_numpy()
        group = (recipe == names[1]).astype(int)
        counts = (int((group == 0).sum()), int((group == 1).sum()))
        if min(counts) < MIN_RUNS:
            raise FitError(f"compute-multiplier needs at least {MIN_RUNS} runs of each recipe; got "
                           f"{counts[0]} of {names[0]!r} and {counts[1]} of {names[1]!r}")
        X = np.log(np.column_stack([df["params"], df["tokens"]]).astype(float))
        logy = np.log(np.asarray(df["loss"], float))
        centre = X.mean(axis=0)
        T = design(X - centre, group, self.shared_e)
        k = self.flops_per_param_token
        with one_blas_thread():
            seeds = recentre(self._seeds(X, logy, group, None, 40, 4), centre, self.shared_e, -1.0)
            res = polish(best_refined(seeds, T, logy, self.huber_delta, None, self.asymmetry, joint_objective),
                         T, logy, self.huber_delta, None, self.asymmetry, joint_objective)
            samples = recentre(self._bootstrap(X, logy, group, T, res.x, centre), centre, self.shared_e)
            res.x = recentre(res.x, centre, self.shared_e)[0]
        status, message = theta_status(res, res.x[-2:], X)
        problems = [message] if message else []
        for g, name in enumerate(names):
            Xg = X[group == g]
            if abs(np.corrcoef(Xg.T)[0, 1]) > 0.999:
                problems.append(f"recipe {name!r}: log N and log D are collinear (one FLOP budget?)")
        flops = np.asarray(df["flops"], float) if "flops" in df.columns else k * np.exp(X).prod(axis=1)
        budgets = np.asarray(self.budgets or self._data_budgets(df, flops), float)
        return MultiplierResult(
            recipes=(names[0], names[1]), params=dict(zip(PARAMS, to_params(res.x, self.shared_e)[0].tolist())),
            budgets=budgets, crossover_range=(float(flops.min() / CROSSOVER_SPAN), float(flops.max() * CROSSOVER_SPAN)),
            samples=to_params(samples, self.shared_e) if len(samples) else np.empty((0, len(PARAMS))),
            shared_e=self.shared_e, k=k, huber_loss=float(res.fun), n_points=counts,
            status=DOUBTFUL if problems else status, message="; ".join(problems))

    def _seeds(self, X, logy, group, w, n_grid: int, n_seeds: int) -> np.ndarray:
        """Best starts from approach 3's variable-projection grid, the two recipes' costs added
        at each shared (alpha, beta)."""
        grids = [vp_grid(X[group == g], logy[group == g], self.huber_delta, None if w is None else w[group == g],
                         n_grid, self.asymmetry) for g in (0, 1)]
        best = np.argsort(grids[0][1] + grids[1][1])[:n_seeds]
        tA, tB = grids[0][0][best], grids[1][0][best]  # rows [e, a, b, alpha, beta]
        e = [(tA[:, 0] + tB[:, 0]) / 2] if self.shared_e else [tA[:, 0], tB[:, 0]]
        return np.column_stack([*e, tA[:, 1], tB[:, 1], tA[:, 2], tB[:, 2], tA[:, 3], tA[:, 4]])

    def _bootstrap(self, X, logy, group, T, theta_hat, centre) -> np.ndarray:
        """Replicates resampling runs within each recipe; each refit from the full fit and from
        its own best coarse grid seed."""
        rng = np.random.default_rng(self.seed)
        idx = [np.flatnonzero(group == g) for g in (0, 1)]
        wA, wB = (resample_weights(rng, len(i), self.n_bootstrap) for i in idx)
        out = np.empty((self.n_bootstrap, len(theta_hat)))
        for b in range(self.n_bootstrap):
            w = np.empty(len(logy))
            w[idx[0]], w[idx[1]] = wA[b], wB[b]
            seeds = np.vstack([theta_hat, recentre(self._seeds(X, logy, group, w, 12, 1), centre, self.shared_e, -1.0)])
            out[b] = best_refined(seeds, T, logy, self.huber_delta, w, self.asymmetry, joint_objective).x
        return out

    def _data_budgets(self, df, flops: np.ndarray) -> np.ndarray:
        from scaleflow.fit.isoflop import group_budgets

        budgets = np.unique(group_budgets(df.assign(flops=flops), self.budget_rtol))
        return budgets if len(budgets) <= 12 else np.geomspace(budgets.min(), budgets.max(), 5)


def with_versus(table, options) -> Any:
    """`--versus SOURCE_B`: the main table (recipe "source") and the second source, read and
    prepared the same way (`--col`, `--where`, `--from` apply to both; recipe = its path)."""
    import pandas as pd

    from scaleflow.fit.prepare import load_source, prepare

    if "recipe" in table.columns:
        raise FitError("compute-multiplier takes either a recipe column or --versus, not both")
    runs, notes, _ = load_source(options.versus, options.source_kind)
    other = prepare(runs, options, notes).table
    cols = [c for c in ("params", "tokens", "flops", "loss") if c in table.columns and c in other.columns]
    return pd.concat([table[cols].assign(recipe="source"), other[cols].assign(recipe=str(options.versus))],
                     ignore_index=True)
