"""Approach 3 (Chinchilla, as corrected by Epoch AI): L(N, D) = E + A / N^alpha + B / D^beta.

N in parameters, D in training tokens, L in nats/token. The model is fitted in log-sum-exp
form on the log of the loss,

    log L_pred = LSE(e, a_1 - alpha_1 log x_1, ..., a_k - alpha_k log x_k),  E = e^e, A_j = e^a_j,

by minimising the SUMMED Huber loss (delta 1e-3) of log L_pred - log L_obs. k = 2 (x = N, D)
is approach 3; k = 1 is the saturating power law of `power.py`, on the same engine.

Global search by variable projection: at fixed exponents the model is linear in (E, A_j), so
one batched weighted least-squares solve (relative errors, close to log errors) prices every
point of an exponent grid at once; the best grid points then seed L-BFGS-B with the analytic
gradient and tight tolerances (ftol 1e-15, gtol 1e-12). The objective is nearly flat along A
and B, and scipy's default tolerances stop short there. On Epoch's 240 Chinchilla points this
reaches the optimum of Epoch's full 4,500-start grid (`EPOCH_GRID`) in a fraction of a second.
Bootstrap intervals refit point-resampled data (as integer weights), warm-started.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass

import numpy as np

from scaleflow.errors import FitError
from scaleflow.fit.defaults import HUBER_DELTA
from scaleflow.fit.doubt import unpinned, with_problems
from scaleflow.fit.laws import DOUBTFUL, OK, ChinchillaLaw, resample_weights
from scaleflow.fit.tables import check_table, cluster_labels

TIGHT = {"ftol": 1e-15, "gtol": 1e-12}
# Epoch AI's start grid, theta order (e, a, b, alpha, beta): 5 x 6 x 6 x 5 x 5 = 4,500 starts.
EPOCH_GRID = np.array([
    (e, a, b, al, be)
    for al, be, e, a, b in itertools.product(
        np.arange(0, 2.5, 0.5), np.arange(0, 2.5, 0.5), np.arange(-1, 1.5, 0.5), np.arange(0, 30, 5), np.arange(0, 30, 5))
])


def huber_objective(theta: np.ndarray, X: np.ndarray, logy: np.ndarray, delta: float,
                    w: np.ndarray | None = None, asymmetry: float = 1.0) -> tuple[float, np.ndarray]:
    """Summed Huber loss of the LSE model and its gradient.

    theta = [e, a_1..a_k, alpha_1..alpha_k]; X (n, k) = log of the variables; logy (n,) = log
    loss; w (n,) optional point weights (bootstrap counts); `asymmetry` W multiplies the loss of
    every point the model over-estimates (residual log L_pred - log L_obs > 0): W > 1 makes
    the fit a lower envelope (`lse_huber`).
    """
    k = X.shape[1]
    z = [np.full(X.shape[0], theta[0])] + [theta[1 + j] - theta[1 + k + j] * X[:, j] for j in range(k)]
    f, gz = lse_huber(z, logy, delta, w, asymmetry)
    grad = np.empty_like(theta)
    grad[0] = gz[0].sum()
    for j in range(k):
        grad[1 + j] = gz[1 + j].sum()
        grad[1 + k + j] = -(gz[1 + j] @ X[:, j])
    return f, grad


def lse_huber(z: list[np.ndarray], logy: np.ndarray, delta: float, w: np.ndarray | None = None,
              asymmetry: float = 1.0) -> tuple[float, list[np.ndarray]]:
    """Summed Huber loss of log L_pred = LSE(z_1, z_2, ...) against logy, and its gradient in
    each z_j.

    The engine of every LSE-form fit (approach 3, the power law, the compute multiplier): z
    holds one (n,) vector per additive term of the predicted loss, the log of that term at
    each point (one vector per term, not an (n, terms) array: numpy reduces along a short last
    axis slowly, and L-BFGS-B calls this a few hundred times per fit). Points whose residual
    r = log L_pred - log L_obs is positive (the model lies ABOVE the observed loss) have their
    Huber loss multiplied by `asymmetry`; 1 is the symmetric Huber loss.
    """
    m = z[0].copy()
    for zj in z[1:]:
        np.maximum(m, zj, out=m)
    e = [np.exp(zj - m) for zj in z]
    s = sum(e)
    r = m + np.log(s) - logy
    h = _huber(r, delta)
    psi = np.clip(r, -delta, delta)
    if asymmetry != 1.0:
        side = np.where(r > 0.0, asymmetry, 1.0)
        h, psi = h * side, psi * side
    if w is not None:
        h, psi = h * w, psi * w
    q = psi / s
    return float(h.sum()), [q * ej for ej in e]  # d f / d z_j


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    ar = np.abs(r)
    return np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))


def vp_seeds(X: np.ndarray, logy: np.ndarray, delta: float, w: np.ndarray | None = None,
             n_grid: int = 40, n_seeds: int = 4, asymmetry: float = 1.0) -> np.ndarray:
    """Best `n_seeds` starts (rows of theta) from a variable-projection grid over the exponents.

    Exponents run over a geometric grid 0.01..3 (n_grid points per variable); at each grid
    point (E, A_j) solve the relative-error least squares; negative solutions are clipped.
    """
    thetas, cost = vp_grid(X, logy, delta, w, n_grid, asymmetry)
    return thetas[np.argsort(cost)[:n_seeds]]


def vp_grid(X: np.ndarray, logy: np.ndarray, delta: float, w: np.ndarray | None = None,
            n_grid: int = 40, asymmetry: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Every point of the variable-projection grid: (theta rows (G, 2k+1), Huber cost (G,)).

    The grid's exponents depend only on n_grid and k, in a fixed order: the costs of two data
    sets fitted with shared exponents add up row by row (`scaleflow.fit.multiplier`).
    """
    n, k = X.shape
    w = np.ones(n) if w is None else w
    y = np.exp(logy)
    centre = (w @ X) / w.sum()
    Xc = X - centre
    axis = np.geomspace(0.01, 3.0, n_grid)
    idx = np.array(list(itertools.product(range(n_grid), repeat=k)))  # (G, k): each grid point's axis indices
    exps = axis[idx]
    # The basis is separable: term j of grid point g is U[j][idx[g, j]], so every entry of the
    # normal equations is a sum over points of at most two terms: one small matrix product each.
    U = [np.exp(-axis[:, None] * Xc[None, :, j]) for j in range(k)]  # k x (n_grid, n)
    wy = w / y**2
    M = np.empty((len(idx), k + 1, k + 1))
    rhs = np.empty((len(idx), k + 1))
    M[:, 0, 0], rhs[:, 0] = wy.sum(), (wy * y).sum()
    for i in range(k):
        M[:, 0, i + 1] = M[:, i + 1, 0] = (U[i] @ wy)[idx[:, i]]
        rhs[:, i + 1] = (U[i] @ (wy * y))[idx[:, i]]
        for j in range(i, k):
            cross = (U[i] * wy) @ U[j].T  # (n_grid, n_grid)
            M[:, i + 1, j + 1] = M[:, j + 1, i + 1] = cross[idx[:, i], idx[:, j]]
    M += 1e-12 * np.eye(k + 1)
    coef = np.linalg.solve(M, rhs[..., None])[..., 0]
    coef = np.maximum(coef, 1e-9 * y.mean())
    pred = coef[:, :1] + sum(coef[:, j + 1, None] * U[j][idx[:, j]] for j in range(k))
    with np.errstate(divide="ignore"):
        r = np.log(pred) - logy
        h = _huber(r, delta)
        if asymmetry != 1.0:
            h = h * np.where(r > 0.0, asymmetry, 1.0)
        cost = h @ w
    logc = np.log(coef)
    return np.column_stack([logc[:, 0], logc[:, 1:] + exps * centre, exps]), cost


def refine(theta0: np.ndarray, X: np.ndarray, logy: np.ndarray, delta: float, w: np.ndarray | None = None,
           asymmetry: float = 1.0, objective=huber_objective):
    """L-BFGS-B from theta0 with the analytic gradient and tight tolerances (scipy result).

    `objective(theta, X, logy, delta, w, asymmetry)` -> (loss, gradient): approach 3's by
    default; another LSE-form model passes its own, X then being whatever it needs."""
    from scipy.optimize import minimize

    return minimize(objective, np.asarray(theta0, float), args=(X, logy, delta, w, asymmetry), jac=True,
                    method="L-BFGS-B", options=TIGHT)


def batched_refine(starts: np.ndarray, X: np.ndarray, logy: np.ndarray, delta: float, W: np.ndarray,
                   asymmetry: float = 1.0, max_iter: int = 200, tol: float = 1e-13) -> tuple[np.ndarray, np.ndarray]:
    """Many fits at once: row r minimises the summed Huber loss with point weights W[r] from
    starts[r] (or one start for every row). Levenberg-Marquardt steps on the Gauss-Newton model
    with the Huber loss's own curvature (weight 1 for residuals inside delta, 0 outside; the
    IRLS majoriser's min(1, delta/|r|) converged linearly, in 4x the steps on Chinchilla's
    bootstrap), one damping per row, a step kept only where it lowers that row's loss; a row
    stops when a kept step gains less than `tol` of its loss. Returns (theta (R, 2k+1), summed
    Huber loss (R,)).

    The bootstrap's engine: 1,000 replicates of 240 points in well under a second, to the
    optimum L-BFGS-B reaches one replicate at a time (losses within 1e-10, relative)."""
    R, n = W.shape
    k = X.shape[1]
    theta = np.array(np.broadcast_to(starts, (R, 2 * k + 1)), float)
    f, r, p = _batched_eval(theta, X, logy, delta, W, asymmetry)
    damping, eye = np.full(R, 1e-3), np.eye(2 * k + 1)
    rows = np.arange(R)  # the rows still improving
    for _ in range(max_iter):
        Wa, ra, pa = W[rows], r[rows], p[rows]
        side = np.where(ra > 0.0, asymmetry, 1.0) * Wa
        Jt = np.concatenate([pa, -pa[:, 1:] * X.T[None]], axis=1)  # (rows, 2k+1, n): d r / d theta
        g = np.nan_to_num(np.matmul(Jt, (np.clip(ra, -delta, delta) * side)[..., None])[..., 0])
        u = side * (np.abs(ra) <= delta)  # the Huber loss's own curvature: 1 inside delta, 0 outside
        H = np.nan_to_num(np.matmul(Jt * u[:, None, :], Jt.transpose(0, 2, 1)))
        diag = np.einsum("rii->ri", H)
        H += (damping[rows, None] * diag + 1e-12 * (diag.max(axis=1, keepdims=True) + 1.0))[..., None] * eye
        trial = theta[rows] - _solve_rows(H, g)
        f_new, r_new, p_new = _batched_eval(trial, X, logy, delta, Wa, asymmetry)
        better = f_new < f[rows]
        gain = np.where(better, (f[rows] - f_new) / np.maximum(f[rows], 1e-300), 0.0)
        kept = rows[better]
        theta[kept], f[kept], r[kept], p[kept] = trial[better], f_new[better], r_new[better], p_new[better]
        damping[rows] = np.where(better, damping[rows] / 3.0, damping[rows] * 4.0)
        rows = rows[~((better & (gain < tol)) | (damping[rows] > 1e10))]
        if not len(rows):
            break
    return theta, f


def _solve_rows(H: np.ndarray, g: np.ndarray) -> np.ndarray:
    """H[r]^-1 g[r] for every row; a singular row gets its least-squares solution."""
    try:
        return np.linalg.solve(H, g[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return np.stack([np.linalg.lstsq(h, v, rcond=None)[0] for h, v in zip(H, g)])


def _batched_eval(theta: np.ndarray, X: np.ndarray, logy: np.ndarray, delta: float, W: np.ndarray,
                  asymmetry: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: summed Huber loss, residuals (R, n) and the softmax of the LSE terms (R, k+1, n)."""
    k = X.shape[1]
    with np.errstate(all="ignore"):  # a wild trial step gives inf or NaN: its row's loss is not lower, so not kept
        z = [np.broadcast_to(theta[:, :1], W.shape)] + [theta[:, 1 + j, None] - theta[:, 1 + k + j, None] * X[:, j]
                                                         for j in range(k)]
        m = np.maximum.reduce(z)
        e = np.stack([np.exp(zj - m) for zj in z], axis=1)
        s = e.sum(axis=1)
        r = m + np.log(s) - logy
        h = _huber(r, delta) * np.where(r > 0.0, asymmetry, 1.0)
        f = (W * h).sum(axis=1)
    return np.where(np.isfinite(f), f, np.inf), r, e / s[:, None, :]


def one_blas_thread():
    """Context limiting BLAS to one thread (a no-op without threadpoolctl).

    The fits are tiny; OpenBLAS's worker threads, woken by numpy's and L-BFGS-B's BLAS calls,
    spin and steal the core the optimiser runs on. On a busy 2-core machine that made 1,000
    bootstrap fits take 73 s instead of 10 s. Enter it once per batch of fits: entering costs
    about a millisecond.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def fit_lse(X: np.ndarray, logy: np.ndarray, delta: float, w: np.ndarray | None = None,
            starts: np.ndarray | None = None, n_grid: int = 20, n_seeds: int = 2, asymmetry: float = 1.0):
    """Global fit: refine the VP seeds (plus any extra `starts`) together by Levenberg-Marquardt
    (`batched_refine`), then `polish` the best with L-BFGS-B, a second optimiser that must
    find nothing left to gain; the scipy result gains `converged` (bool) and `convergence`
    (why not, or "")."""
    from scipy.optimize import OptimizeResult

    with one_blas_thread():
        seeds = vp_seeds(X, logy, delta, w, n_grid, n_seeds, asymmetry)
        if starts is not None:
            seeds = np.vstack([np.atleast_2d(starts), seeds])
        W = np.tile(np.ones(len(logy)) if w is None else np.asarray(w, float), (len(seeds), 1))
        theta, loss = batched_refine(seeds, X, logy, delta, W, asymmetry)
        best = int(np.argmin(loss))
        res = OptimizeResult(x=theta[best], fun=float(loss[best]), success=True,
                             message="best of the seeds' Levenberg-Marquardt fits")
        return polish(res, X, logy, delta, w, asymmetry)


def polish(res, X: np.ndarray, logy: np.ndarray, delta: float, w: np.ndarray | None = None,
           asymmetry: float = 1.0, objective=huber_objective):
    """Restart L-BFGS-B at the best point and judge convergence by what matters.

    Converged: the restart lowers the summed Huber loss by at most 1e-9 of it (plus a floor of
    1e-15 delta^2 per point for exact fits), and every gradient component, relative to the
    largest it could be (points x delta x (1 + max |log x|)), is below 1e-5. L-BFGS-B's own
    message is not used: at an optimum its line search often ends at machine precision
    ("ABNORMAL"), and whether it does depends on the CPU.
    """
    again = refine(res.x, X, logy, delta, w, asymmetry, objective)
    best = again if again.fun < res.fun else res
    n = float(len(logy) if w is None else np.sum(w))
    drop = res.fun - best.fun
    grad = objective(best.x, X, logy, delta, w, asymmetry)[1]
    scaled = float(np.abs(grad).max() / (n * delta * (1.0 + np.abs(X).max())))
    problems = []
    if drop > 1e-9 * best.fun + 1e-15 * n * delta**2:
        problems.append(f"a restart at the best point still lowered the loss by {drop / max(res.fun, 1e-300):.1e}")
    if scaled > 1e-5:
        problems.append(f"the scaled gradient is {scaled:.1e} (above 1e-5)")
    best.converged, best.convergence = not problems, "; ".join(problems)
    return best


def best_refined(seeds, X, logy, delta, w=None, asymmetry: float = 1.0, objective=huber_objective):
    """The best L-BFGS-B refinement (`refine`) over the rows of `seeds`."""
    return min((refine(s, X, logy, delta, w, asymmetry, objective) for s in seeds), key=lambda r: r.fun)


def bootstrap_lse(X: np.ndarray, logy: np.ndarray, delta: float, theta_hat: np.ndarray,
                  n_bootstrap: int, seed: int = 0, asymmetry: float = 1.0, groups=None) -> np.ndarray:
    """(n_bootstrap, len(theta)) refits on resampled data (points, or whole `groups`:
    `resample_weights`), all at once (`batched_refine`, stopping when a step gains less than
    1e-10 of the loss), each started at theta_hat and at the best coarse VP seed of the whole
    data; the better of the two is kept per replicate."""
    weights = resample_weights(np.random.default_rng(seed), len(logy), n_bootstrap, groups)
    if n_bootstrap == 0:
        return np.empty((0, len(theta_hat)))
    starts = np.vstack([theta_hat, vp_seeds(X, logy, delta, None, 12, 1, asymmetry)])
    chunk = max(1, 2_000_000 // len(logy))  # replicates per batch: bounded memory for large tables
    out = np.empty((n_bootstrap, len(theta_hat)))
    with one_blas_thread():
        for lo in range(0, n_bootstrap, chunk):
            W = weights[lo:lo + chunk]
            fits = [batched_refine(start, X, logy, delta, W, asymmetry, tol=1e-10) for start in starts]
            best = np.argmin(np.stack([f for _, f in fits]), axis=0)
            out[lo:lo + chunk] = np.stack([theta for theta, _ in fits])[best, np.arange(len(W))]
    return out


def theta_status(res, exponents: np.ndarray, X: np.ndarray) -> tuple[str, str]:
    """Status and message of a fit (a `fit_lse` result): not converged, non-positive or huge
    exponents, or collinear variables (e.g. one FLOP budget, where N and D = C/6N carry the
    same information)."""
    problems = []
    if not res.converged:
        problems.append(f"the optimiser did not converge: {res.convergence}")
    if np.any(exponents <= 0.0) or np.any(exponents > 3.0):
        problems.append(f"exponent(s) {np.round(exponents, 4).tolist()} outside (0, 3]")
    if X.shape[1] == 2 and abs(np.corrcoef(X.T)[0, 1]) > 0.999:
        problems.append("log N and log D are collinear (one FLOP budget?): the exponents are not identified")
    return (DOUBTFUL, "; ".join(problems)) if problems else (OK, "")


_SIZES = "runs over a wider range of model sizes would pin it"
_TOKENS = "runs over a wider range of token counts (budgets further apart) would pin it"
PIN_HINTS = {
    "E": "runs nearer the loss floor (larger models on more tokens, budgets spanning more compute) would pin it; "
         "until then the exponents absorb it",
    "A": _SIZES, "alpha": _SIZES, "B": _TOKENS, "beta": _TOKENS,
}


@dataclass(frozen=True, kw_only=True)
class ParametricFitter:
    """Approach 3 estimator: `ParametricFitter(n_bootstrap=200).fit(df)` -> ChinchillaLaw.

    df needs columns `params` (N), `tokens` (D) and `loss` (nats/token), all positive.
    `flops_per_param_token` (k) is how the study counts compute, C = k N D: the law's optima
    are answered at C in that count. `asymmetry` (W > 0, default 1: the symmetric Huber loss)
    multiplies the loss of every run the model over-estimates (log L_pred > log L_obs, the
    curve ABOVE the run): W > 1 makes the fit hug the best runs (a lower envelope), so badly
    tuned runs, whose loss is too high, pull it up less. In the Huber loss's linear region
    about 1/(1 + W) of the runs end up below the curve. `cluster` names a column whose runs
    the bootstrap draws together (e.g. `trunk`: branches of one trunk share its noise); None
    draws each run alone.
    """

    huber_delta: float = HUBER_DELTA
    n_bootstrap: int = 0
    seed: int = 0
    flops_per_param_token: float = 6.0
    asymmetry: float = 1.0
    cluster: str | None = None

    def fit(self, df) -> ChinchillaLaw:
        check_table(df, ("params", "tokens", "loss"), 6, "approach 3 (5 parameters)")
        if not self.asymmetry > 0:
            raise FitError(f"the asymmetry must be positive; got {self.asymmetry}")
        X = np.log(np.column_stack([df["params"], df["tokens"]]).astype(float))
        logy = np.log(np.asarray(df["loss"], float))
        res = fit_lse(X, logy, self.huber_delta, asymmetry=self.asymmetry)
        groups = cluster_labels(df, self.cluster)
        samples = bootstrap_lse(X, logy, self.huber_delta, res.x, self.n_bootstrap, self.seed, self.asymmetry, groups)
        status, message = theta_status(res, res.x[3:], X)
        law = ChinchillaLaw(
            E=math.exp(res.x[0]), A=math.exp(res.x[1]), B=math.exp(res.x[2]), alpha=res.x[3], beta=res.x[4],
            huber_loss=float(res.fun), n_points=len(logy), samples=theta_to_params(samples),
            status=status, message=message, k=self.flops_per_param_token,
        )
        return with_problems(law, unpinned(law, PIN_HINTS))


def theta_to_params(theta: np.ndarray) -> np.ndarray:
    """theta rows [e, a_1.., alpha_1..] -> [E, A_1.., alpha_1..] (exp of the log-scale entries)."""
    k = (theta.shape[1] - 1) // 2
    out = theta.copy()
    out[:, :k + 1] = np.exp(theta[:, :k + 1])
    return out
