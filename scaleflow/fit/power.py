"""Saturating power law of one variable: L = E + A x^-alpha (Hestness et al. 2017).

x is any positive variable (FLOPs, parameters or tokens), L the loss in nats/token. Fitted on
the engine of approach 3 (`parametric.py`, k = 1): summed Huber loss on log L in log-sum-exp
form, variable-projection seeds, tight L-BFGS-B, point-resampling bootstrap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scaleflow.fit.defaults import HUBER_DELTA
from scaleflow.fit.doubt import unpinned, with_problems
from scaleflow.fit.laws import SaturatingPowerLaw
from scaleflow.fit.parametric import theta_to_params, bootstrap_lse, fit_lse, theta_status
from scaleflow.fit.tables import check_table


_RANGE = "points over a wider range of x would pin it"
PIN_HINTS = {"E": "points at larger x, where the curve flattens, would pin it; until then alpha absorbs it",
             "A": _RANGE, "alpha": _RANGE}


@dataclass(frozen=True, kw_only=True)
class PowerFitter:
    """`PowerFitter(x="flops").fit(df)` -> SaturatingPowerLaw of df["loss"] against df[x]."""

    x: str = "flops"
    huber_delta: float = HUBER_DELTA
    n_bootstrap: int = 0
    seed: int = 0

    def fit(self, df) -> SaturatingPowerLaw:
        check_table(df, (self.x, "loss"), 4, "a power law with an irreducible term (3 parameters)")
        X = np.log(np.asarray(df[self.x], float))[:, None]
        logy = np.log(np.asarray(df["loss"], float))
        res = fit_lse(X, logy, self.huber_delta, n_grid=200, n_seeds=4)
        samples = bootstrap_lse(X, logy, self.huber_delta, res.x, self.n_bootstrap, self.seed)
        status, message = theta_status(res, res.x[2:], X)
        law = SaturatingPowerLaw(
            E=math.exp(res.x[0]), A=math.exp(res.x[1]), alpha=float(res.x[2]), huber_loss=float(res.fun),
            n_points=len(logy), x_name=self.x, samples=theta_to_params(samples), status=status, message=message,
        )
        return with_problems(law, unpinned(law, PIN_HINTS))
