"""Which runs to train next: the candidates that, for the least compute, shrink the interval of
an answer at a target budget the most.

The bootstrap replicates of an approach-3 fit stand for what is still unknown. Under each
replicate theta_r, the runs a study has (X) and a set S of candidate runs give the linearised
(Fisher) covariance of the law's parameters in log-loss units,

    Cov_r(S) = sigma^2 (J_r(X)^T J_r(X) + J_r(S)^T J_r(S))^-1,

J_r the gradient of log L(N, D) with respect to (log E, log A, log B, alpha, beta), sigma the
runs' noise in log loss; the answer q at the target (log N_opt, log D_opt, log best loss, or
a) then has variance v_r(S) = g_r^T Cov_r(S) g_r, g_r its gradient. The criterion is the
geometric mean of v_r over the replicates (robust to the few extreme replicates a short
ladder produces). Runs are chosen greedily by the criterion's drop per FLOP within the compute
given (and, as a guard against that ratio's short-sightedness, also greedily starting from
the single most informative affordable run; the better set wins). The expected interval is
today's, shrunk about its median by sqrt(v(S) / v(nothing)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from scaleflow.errors import FitError
from scaleflow.fit.laws import ChinchillaLaw, jsonable, percentile_interval

#: The least noise (sd of log loss) a proposal reports: seed-to-seed variation of real runs is at
#: least this (a perfect fit's residuals read zero). The choice of runs does not depend on it.
NOISE_FLOOR = 1e-3


class NoAffordableRun(FitError):
    """No candidate run fits in the compute given."""


#: answer name -> (ChinchillaLaw function, judged in log space)
TARGETS = {"n_opt": ("n_opt", True), "d_opt": ("d_opt", True), "loss": ("loss_opt", True), "a": (None, False)}


def _answer(theta: np.ndarray, target: float, quantity: str, k: float) -> np.ndarray:
    """q at `target` FLOPs for rows theta = (log E, log A, log B, alpha, beta); log scale where TARGETS says."""
    func, log = TARGETS[quantity]
    E, A, B = np.exp(theta[:, 0]), np.exp(theta[:, 1]), np.exp(theta[:, 2])
    alpha, beta = theta[:, 3], theta[:, 4]
    with np.errstate(all="ignore"):
        q = beta / (alpha + beta) if func is None else \
            ChinchillaLaw.FUNCS[func](np.float64(target), E=E, A=A, B=B, alpha=alpha, beta=beta, k=k)
    return np.log(q) if log else q


def _thetas(law: ChinchillaLaw) -> np.ndarray:
    """The replicates as rows (log E, log A, log B, alpha, beta), non-finite ones dropped."""
    s = law.samples
    with np.errstate(all="ignore"):
        theta = np.column_stack([np.log(s[:, :3]), s[:, 3:5]])
    return theta[np.isfinite(theta).all(axis=1)]


def replicate_answers(law: ChinchillaLaw, target: float, quantity: str) -> np.ndarray:
    """The answer at `target` FLOPs under every bootstrap replicate (log scale where TARGETS says)."""
    return _answer(_thetas(law), target, quantity, law.k)


def _jacobian(theta: np.ndarray, N: np.ndarray, D: np.ndarray) -> np.ndarray:
    """(replicates, runs, 5) gradient of log L(N, D) with respect to theta."""
    E, a, b, alpha, beta = (theta[:, i][:, None] for i in range(5))
    n_term, d_term = np.exp(a) * N[None, :] ** -alpha, np.exp(b) * D[None, :] ** -beta
    L = np.exp(E) + n_term + d_term
    return np.stack([np.exp(E) / L + 0 * n_term, n_term / L, d_term / L,
                     -n_term * np.log(N)[None, :] / L, -d_term * np.log(D)[None, :] / L], axis=-1)


def _gradient(theta: np.ndarray, target: float, quantity: str, k: float, h: float = 1e-5) -> np.ndarray:
    """(replicates, 5) central-difference gradient of the answer with respect to theta."""
    g = np.empty_like(theta)
    for i in range(theta.shape[1]):
        step = np.zeros(theta.shape[1])
        step[i] = h
        g[:, i] = (_answer(theta + step, target, quantity, k) - _answer(theta - step, target, quantity, k)) / (2 * h)
    return g


def interval_of(values: np.ndarray, log: bool) -> list[float]:
    lo, hi = percentile_interval(values[np.isfinite(values)])
    return [float(np.exp(lo)), float(np.exp(hi))] if log else [float(lo), float(hi)]


@dataclass(frozen=True)
class Proposal:
    """The runs chosen (rows of the candidates, with `gain`: the share of Var(q) each removed when
    added), their cost in FLOPs, today's 95% interval of the answer and the one expected after."""

    target: float
    quantity: str
    runs: pd.DataFrame
    cost: float
    interval_now: list[float]
    interval_expected: list[float]
    variance_ratio: float  # Var(q | runs) / Var(q)
    noise: float

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"target": self.target, "quantity": self.quantity, "cost": self.cost,
                         "interval_now": self.interval_now, "interval_expected": self.interval_expected,
                         "variance_ratio": self.variance_ratio, "noise": self.noise,
                         "runs": self.runs.to_dict(orient="records")})


class _Design:
    """The criterion of a set of candidate runs: the geometric mean over replicates of the
    answer's linearised variance after the study's runs and the set (in units of sigma^2)."""

    def __init__(self, law, existing: pd.DataFrame, candidates: pd.DataFrame, target: float, quantity: str):
        theta = _thetas(law)
        g = _gradient(theta, target, quantity, law.k)
        keep = np.isfinite(g).all(axis=1)
        self.theta, self.g = theta[keep], g[keep]
        col = lambda df, c: df[c].to_numpy(float)
        J0 = _jacobian(self.theta, col(existing, "params"), col(existing, "tokens"))
        self.info0 = np.einsum("rni,rnj->rij", J0, J0) + 1e-9 * np.eye(5)
        self.J = _jacobian(self.theta, col(candidates, "params"), col(candidates, "tokens"))

    def info(self, chosen: list[int]) -> np.ndarray:
        J = self.J[:, chosen]
        return self.info0 + np.einsum("rni,rnj->rij", J, J)

    def criterion(self, info: np.ndarray) -> float:
        v = np.einsum("ri,ri->r", self.g, np.linalg.solve(info, self.g[..., None])[..., 0])
        return float(np.exp(np.mean(np.log(np.maximum(v, 1e-300)))))

    def greedy(self, cost: np.ndarray, compute: float, start: list[int]) -> tuple[list[int], float]:
        chosen = list(start)
        info = self.info(chosen)
        value = self.criterion(info)
        while True:
            left = compute - cost[chosen].sum()
            best, best_rate = None, 0.0
            for j in np.flatnonzero(cost <= left):
                if j in chosen:
                    continue
                Jj = self.J[:, j]
                trial = info + np.einsum("ri,rj->rij", Jj, Jj)
                v = self.criterion(trial)
                if (value - v) / cost[j] > best_rate:
                    best, best_rate, best_info, best_value = int(j), (value - v) / cost[j], trial, v
            if best is None or value - best_value < 1e-6 * value:
                return chosen, value
            chosen.append(best)
            info, value = best_info, best_value


def propose(law: ChinchillaLaw, existing: pd.DataFrame, candidates: pd.DataFrame, target: float, compute: float,
            noise: float, quantity: str = "n_opt") -> Proposal:
    """Runs among `candidates` (columns params, tokens, cost in FLOPs) that fit in `compute` FLOPs and
    are expected to shrink the 95% interval of `quantity` at `target` FLOPs the most, given the
    `existing` runs (params, tokens) that `law` (approach 3, with replicates) was fitted to.
    `noise` (sd of log loss) is the same for every run, so it scales all variances alike and
    does not change the choice; it is reported with the proposal."""
    if quantity not in TARGETS:
        raise FitError(f"unknown quantity {quantity!r}; choose one of {', '.join(TARGETS)}")
    if law.samples.shape[0] < 20:
        raise FitError("proposing runs needs an approach-3 fit with 20 or more bootstrap replicates")
    cost = candidates["cost"].to_numpy(float)
    if not len(cost) or cost.min() > compute:
        cheapest = f"; the cheapest candidate costs {cost.min():.3g} FLOPs" if len(cost) else ""
        raise NoAffordableRun(f"no candidate run fits in {compute:.3g} FLOPs{cheapest}: give more --compute")
    design = _Design(law, existing, candidates, target, quantity)
    by_rate = design.greedy(cost, compute, [])
    affordable = np.flatnonzero(cost <= compute)
    single = min(affordable, key=lambda j: design.criterion(design.info([int(j)])))
    chosen, value = min(by_rate, design.greedy(cost, compute, [int(single)]), key=lambda r: r[1])
    before = design.criterion(design.info([]))
    ratio = value / before
    log = TARGETS[quantity][1]
    q = replicate_answers(law, target, quantity)
    q = q[np.isfinite(q)]
    centre = np.median(q)
    gains, prev = [], before
    for i in range(len(chosen)):
        v = design.criterion(design.info(chosen[:i + 1]))
        gains.append((prev - v) / before)
        prev = v
    runs = candidates.iloc[chosen].reset_index(drop=True).assign(gain=gains)
    return Proposal(float(target), quantity, runs, float(cost[chosen].sum()), interval_of(q, log),
                    interval_of(centre + (q - centre) * np.sqrt(ratio), log), float(ratio), float(max(noise, NOISE_FLOOR)))
