"""The steps-tokens trade-off of a batch-size sweep (McCandlish et al. 2018; docs/science.md section 6):
the steps S a batch size B needs to reach a loss follow S = S_min (1 + B_crit / B), i.e.
S = S_min + E_min / B with E_min = S_min B_crit tokens. Steps in optimizer steps, B in tokens."""

from __future__ import annotations

import math

import numpy as np

from scaleflow.fit.defaults import N_BOOTSTRAP


def running_median(y: np.ndarray, window: int) -> np.ndarray:
    """Centred running median (shrinking at the ends); no lag on a steady trend."""
    if window <= 1 or len(y) < 3:
        return y.copy()
    h = window // 2
    return np.array([np.median(y[max(0, i - h):i + h + 1]) for i in range(len(y))])


def first_reach(steps: np.ndarray, loss: np.ndarray, target: float) -> float:
    """First step at which the non-increasing envelope of `loss` reaches `target`, linearly
    interpolated between log lines; NaN if never reached or already reached at the first line."""
    env = np.minimum.accumulate(loss)
    hit = np.flatnonzero(env <= target)
    if not len(hit) or hit[0] == 0:
        return math.nan
    k = hit[0]
    l0, l1 = env[k - 1], env[k]
    return float(steps[k - 1] + (steps[k] - steps[k - 1]) * (l0 - target) / (l0 - l1))


def fit_tradeoff(batch: np.ndarray, steps: np.ndarray, n_bootstrap: int = N_BOOTSTRAP,
                 seed: int = 0) -> tuple[float, float, np.ndarray]:
    """(S_min, E_min, (R, 2) replicates) of S = S_min + E_min / B by least squares on S's
    relative residuals; replicates resample the residuals (none with 2 batch sizes)."""
    B, S = np.asarray(batch, float), np.asarray(steps, float)
    A = np.column_stack([np.ones_like(B), 1.0 / B]) / S[:, None]
    coef = np.linalg.lstsq(A, np.ones_like(S), rcond=None)[0]
    if len(B) <= 2 or not n_bootstrap:
        return float(coef[0]), float(coef[1]), np.empty((0, 2))
    fitted = coef[0] + coef[1] / B
    if not (fitted > 0).all():
        return float(coef[0]), float(coef[1]), np.empty((0, 2))
    r = np.log(S / fitted) * math.sqrt(len(B) / (len(B) - 2))
    rng = np.random.default_rng(seed)
    Sb = fitted * np.exp(r[rng.integers(0, len(B), size=(n_bootstrap, len(B)))])  # (R, n)
    X = np.column_stack([np.ones_like(B), 1.0 / B])  # solve each replicate's 2x2 normal equations
    W = 1.0 / Sb**2
    G = np.einsum("rn,ni,nj->rij", W, X, X)
    rhs = np.einsum("rn,ni,rn->ri", W, X, Sb)
    return float(coef[0]), float(coef[1]), np.linalg.solve(G, rhs[..., None])[..., 0]
