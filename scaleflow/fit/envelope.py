"""Approach 1 (Hoffmann et al. 2022): the lower envelope of loss against training FLOPs.

Input: one row per point of a curve, columns `curve` (an id), `params` (N), `flops` (C, FLOPs),
`tokens` (D) and `loss` (nats/token). A curve is one model size trained to several token
counts, each point a run whose schedule has annealed: final points of runs, or the ends of the
decay branches of one WSD trunk (`fit.api.final_point_curves`; never mid-run or stable-phase
losses, which overstate the loss that compute buys). Each curve is interpolated in log FLOPs
onto a common log-spaced grid; at each grid point the curve with the lowest loss gives
N_opt(C) and D_opt(C). Fits: N_opt = k_N C^a and D_opt = k_D C^b through the envelope,
intervals by resampling whole curves; L_opt(C) = E + A C^-alpha through the envelope losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scaleflow.errors import FitError
from scaleflow.fit.defaults import HUBER_DELTA
from scaleflow.fit.doubt import unpinned_exponent
from scaleflow.fit.laws import DOUBTFUL, OK, AllocationLaw, PowerLaw, jsonable, resample_weights
from scaleflow.fit.tables import check_table


@dataclass(frozen=True, eq=False)
class EnvelopeResult:
    """Approach 1: the envelope points (FLOPs, parameters, tokens, loss) and the allocation law."""

    law: AllocationLaw
    flops: np.ndarray
    params: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray
    used: str = ""  # which points the envelope was built from

    def to_dict(self, include_samples: bool = False) -> dict:
        env = {"flops": self.flops, "params": self.params, "tokens": self.tokens, "loss": self.loss}
        return {**self.law.to_dict(include_samples), "envelope": jsonable(env), "used": self.used}


def _interpolate(curves, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(params per curve, loss matrix, tokens matrix) on the log-FLOP grid; NaN outside a curve."""
    lg = np.log(grid)
    params, loss, tokens = [], [], []
    for _, c in curves.groupby("curve", sort=False):
        c = c.sort_values("flops")
        lf = np.log(c["flops"].to_numpy(float))
        params.append(float(c["params"].iloc[-1]))
        loss.append(np.interp(lg, lf, c["loss"].to_numpy(float), left=np.nan, right=np.nan))
        tokens.append(np.exp(np.interp(lg, lf, np.log(c["tokens"].to_numpy(float)), left=np.nan, right=np.nan)))
    return np.array(params), np.array(loss), np.array(tokens)


def lower_envelope(loss: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Index of the best curve at each grid point (-1 where none covers it), batched over the
    rows of w (R, n_curves): curves with weight 0 are left out of a replicate."""
    w = np.ones((1, loss.shape[0])) if w is None else w
    filled = np.where(np.isfinite(loss), loss, np.inf)
    out = np.empty((len(w), loss.shape[1]), dtype=int)
    for i in range(0, len(w), 64):  # chunks of replicates bound the (R, curves, grid) memory
        masked = np.where(w[i:i + 64, :, None] > 0, filled[None], np.inf)
        out[i:i + 64] = np.where(np.isfinite(masked.min(axis=1)), masked.argmin(axis=1), -1)
    return out


@dataclass(frozen=True, kw_only=True)
class EnvelopeFitter:
    """Approach 1 estimator: `EnvelopeFitter(n_bootstrap=200).fit(curves)` -> EnvelopeResult."""

    n_grid: int = 60
    n_bootstrap: int = 0
    seed: int = 0
    huber_delta: float = HUBER_DELTA

    def fit(self, curves) -> EnvelopeResult:
        if "curve" not in curves.columns:
            raise FitError("approach 1 needs a `curve` column naming the curve of each evaluation point")
        check_table(curves, ("params", "flops", "tokens", "loss"), 4, "approach 1 (envelope)")
        sizes = curves.groupby("curve")["flops"].transform("nunique")
        curves = curves[sizes >= 2]
        if curves["curve"].nunique() < 2:
            raise FitError("approach 1 needs at least 2 curves (runs, or trunks with branches) of 2 or more points")
        grid = np.geomspace(curves["flops"].min(), curves["flops"].max(), self.n_grid)
        params, loss, tokens = _interpolate(curves, grid)
        best = lower_envelope(loss)[0]
        # Where the smallest or largest model size is best, the true optimum may lie beyond the
        # sampled sizes (censored): those grid points are left out of the fits. Compared by
        # size, since several curves (settings, trunks) can share one size.
        best_size = np.where(best >= 0, params[np.maximum(best, 0)], np.nan)
        edge = (best < 0) | (best_size == params.min()) | (best_size == params.max())
        if len(np.unique(best[~edge])) < 2:
            raise FitError("approach 1: fewer than 2 model sizes are ever best away from the smallest and "
                           "largest models; N_opt(C) cannot be fitted")
        keep = np.flatnonzero(~edge)
        grid, best = grid[keep], best[keep]
        env_n, env_d, env_l = params[best], tokens[best, keep], loss[best, keep]
        boot = lower_envelope(loss[:, keep], resample_weights(np.random.default_rng(self.seed), len(params),
                                                              self.n_bootstrap))
        n_rep = np.where(boot >= 0, params[boot], np.nan)
        d_rep = np.where(boot >= 0, tokens[:, keep][boot, np.arange(len(keep))], np.nan)
        n_law = PowerLaw.fit(grid, env_n, boot=(grid, n_rep, np.isfinite(n_rep)))
        d_law = PowerLaw.fit(grid, env_d, boot=(grid, d_rep, np.isfinite(d_rep)))
        distinct = len(np.unique(env_n))
        notes = [f"the envelope uses only {distinct} model sizes: the exponents are coarse"] if distinct < 3 else []
        notes += unpinned_exponent(n_law)
        status = DOUBTFUL if notes else OK
        if edge.any():
            notes.append(f"{int(edge.sum())} of {len(edge)} FLOP grid points left out: the smallest or largest "
                         "model was best there (optimum possibly outside the sampled sizes)")
        law = AllocationLaw("approach1", n_law, d_law, self._loss_law(grid, env_l),
                            status, "; ".join(notes))
        used = (f"{len(curves)} annealed points (final points of runs or decay-branch ends) on "
                f"{curves['curve'].nunique()} curves of {len(np.unique(params))} model sizes")
        return EnvelopeResult(law, grid, env_n, env_d, env_l, used)

    def _loss_law(self, flops: np.ndarray, loss: np.ndarray):
        import pandas as pd

        from scaleflow.fit.power import PowerFitter

        return PowerFitter(x="flops", huber_delta=self.huber_delta, n_bootstrap=self.n_bootstrap, seed=self.seed).fit(
            pd.DataFrame({"flops": flops, "loss": loss}))
