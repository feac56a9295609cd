"""A study's design, tried before any compute is spent: draw its runs' losses from an assumed
law many times, fit every draw as the real study will be fitted, and see how far the answers
at a target budget scatter and how far they sit from the truth.

The spread of the estimates over the draws is the interval a calibrated fit of the real study
would report (its 2.5-97.5 percentiles); the mean against the truth is each approach's bias on
this design. Approaches 2 and 3 are simulated: approach 1 needs whole loss curves, which a law
of final losses does not give.

Units: params in parameters, tokens in tokens, flops and the target in FLOPs, loss in nats/token;
`noise` is the standard deviation of log loss (0.01: about 1% per run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from scaleflow.errors import FitError
from scaleflow.fit.defaults import HUBER_DELTA
from scaleflow.fit.laws import ChinchillaLaw, jsonable
from scaleflow.fit.prepare import flop_definition
from scaleflow.fit.types import allocation

#: The answers compared at the target budget: a (the N_opt exponent), N_opt, D_opt, best loss.
QUANTITIES = ("a", "n_opt", "d_opt", "loss_opt")
APPROACHES = ("approach2", "approach3")


def law_from_text(text: str, k: float = 6.0) -> ChinchillaLaw:
    """'E=1.69,A=406.4,B=410.7,alpha=0.34,beta=0.28' -> ChinchillaLaw (C = k N D)."""
    values: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, value = item.partition("=")
        try:
            values[name.strip()] = float(value)
        except ValueError:
            raise FitError(f"cannot read {item!r} in the law {text!r}: expected NAME=NUMBER") from None
    missing = [p for p in ChinchillaLaw.PARAMS if p not in values]
    extra = sorted(set(values) - set(ChinchillaLaw.PARAMS))
    if missing or extra:
        raise FitError(f"the law needs exactly E, A, B, alpha and beta (e.g. E=1.69,A=406.4,B=410.7,alpha=0.34,"
                       f"beta=0.28); {'missing ' + ', '.join(missing) if missing else 'unknown ' + ', '.join(extra)}")
    if min(values.values()) <= 0:
        raise FitError(f"every parameter of the law must be positive; got {text}")
    return ChinchillaLaw(**values, k=k)


def answers(law: Any, target: float) -> dict[str, float]:
    """a, N_opt, D_opt and the best loss of an allocation law at `target` FLOPs."""
    return {"a": float(law.a), **{q: float(getattr(law, q)(target)) for q in QUANTITIES[1:]}}


def residual_noise(law: ChinchillaLaw, table: pd.DataFrame) -> float:
    """The runs' noise: the standard deviation of log loss around the law, with 5 degrees of freedom
    taken by the fit (the median absolute residual would under-read it: an L1-like Huber fit
    passes exactly through about 5 runs)."""
    r = np.log(table["loss"].to_numpy(float)) - np.log(law.predict(table["params"], table["tokens"]))
    return float(np.sqrt(np.sum(r**2) / max(len(r) - 5, 1)))


def draw(law: ChinchillaLaw, design: pd.DataFrame, noise: float, rng: np.random.Generator) -> pd.DataFrame:
    """The design's runs with losses drawn from `law`, log-normal noise of sd `noise`."""
    loss = law.predict(design["params"], design["tokens"]) * np.exp(noise * rng.standard_normal(len(design)))
    return design.assign(loss=loss)


def fit_approach(name: str, table: pd.DataFrame, k: float, budget_rtol: float = 0.1):
    """One point fit (no bootstrap) of approach 2 or 3, as `scaleflow fit` makes it."""
    if name == "approach3":
        from scaleflow.fit.parametric import ParametricFitter

        return ParametricFitter(huber_delta=HUBER_DELTA, flops_per_param_token=k).fit(table)
    from scaleflow.fit.isoflop import IsoFlopFitter

    return allocation(IsoFlopFitter(rtol=budget_rtol, huber_delta=HUBER_DELTA).fit(table))


@dataclass(frozen=True)
class DesignSimulation:
    """The expected answers of a design at `target` FLOPs: per approach and quantity, the mean,
    the relative bias, the 95% interval of the estimates over the draws and its width."""

    target: float
    noise: float
    n_sim: int
    truth: dict[str, float]
    approaches: dict[str, dict[str, Any]]
    n_runs: int
    compute: float  # FLOPs the design spends

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"target": self.target, "noise": self.noise, "n_sim": self.n_sim, "truth": self.truth,
                         "n_runs": self.n_runs, "compute": self.compute, "approaches": self.approaches})


def _summary(estimates: np.ndarray, truth: float, log: bool) -> dict[str, Any]:
    """Mean, bias, 95% interval and width of one quantity's estimates; log scale for positive ones."""
    est = estimates[np.isfinite(estimates) & ((estimates > 0) if log else True)]
    if len(est) == 0:
        return {"mean": None, "bias": None, "interval": [None, None], "width": None, "factor": None}
    lo, hi = np.percentile(est, [2.5, 97.5])
    mean = float(np.exp(np.log(est).mean())) if log else float(est.mean())
    out = {"mean": mean, "bias": mean / truth - 1 if log else mean - truth, "interval": [float(lo), float(hi)],
           "width": float(hi - lo)}
    out["factor"] = float(hi / lo) if log else None
    return out


def simulate_design(design: pd.DataFrame, law: ChinchillaLaw, noise: float, target: float, n_sim: int = 100,
                    seed: int = 0, approaches: tuple[str, ...] = APPROACHES) -> DesignSimulation:
    """Fit `n_sim` draws of the design (columns params, tokens, flops; budget, kind and cost
    optional) with each approach; the bias of a (absolute) and of N_opt, D_opt, loss (relative)
    is the mean's. WSD trunks (kind trunk) are not fitted, as `prepare` leaves them out, but
    their cost counts (a run's own FLOPs: `cost` where given)."""
    from scaleflow.fit.parametric import one_blas_thread

    compute = float(design["cost"].sum() if "cost" in design.columns else design["flops"].sum())
    n_runs = len(design)
    if "kind" in design.columns:
        design = design[design["kind"] != "trunk"]
    if target <= 0 or noise < 0 or n_sim < 2:
        raise FitError(f"need a positive target, a noise >= 0 and 2 or more draws; got {target}, {noise}, {n_sim}")
    k = flop_definition(design, [])["flops_per_param_token"]  # C = k N D, as the real fit converts
    law = ChinchillaLaw(**law.params, k=k)
    truth = answers(law, target)
    rng = np.random.default_rng(seed)
    estimates = {a: np.full((n_sim, len(QUANTITIES)), np.nan) for a in approaches}
    failures = {a: 0 for a in approaches}
    with one_blas_thread():
        for i in range(n_sim):
            table = draw(law, design, noise, rng)
            for a in approaches:
                try:
                    fitted = answers(fit_approach(a, table, k), target)
                except FitError:
                    failures[a] += 1
                    continue
                estimates[a][i] = [fitted[q] for q in QUANTITIES]
    out = {}
    for a in approaches:
        out[a] = {q: _summary(estimates[a][:, j], truth[q], log=q != "a") for j, q in enumerate(QUANTITIES)}
        out[a]["failed"] = failures[a]
    return DesignSimulation(float(target), float(noise), n_sim, truth, out, n_runs, compute)
