"""Do the Chinchilla approaches agree on the allocation exponent a (N_opt ~ C^a)?

Approaches 1-3 answer one question three ways; when their answers disagree beyond their
intervals, none of them should be trusted alone. `compare(results, table)` says so, with the
likely causes read off the fits themselves: budgets whose minimum sits at a grid edge, too
few budgets or too narrow a compute range, an irreducible loss E the data do not pin, short
runs, lopsided IsoFLOP curves. The CLI and the report show it before anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scaleflow.fit.laws import ChinchillaLaw, jsonable

APPROACHES = ("approach3", "approach2", "approach1")
NO_CI_GAP = 0.05  # without bootstrap intervals, exponents further apart than this disagree
SHORT_RUN = 100  # optimiser steps: shorter runs carry warmup and schedule effects in their loss


@dataclass(frozen=True)
class Agreement:
    """The exponent a of each approach with its 95% interval, and the verdict."""

    exponents: dict[str, tuple[float, float, float]]  # approach -> (a, low, high)
    agree: bool
    message: str
    causes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"agree": self.agree, "message": self.message, "causes": list(self.causes),
                         "a": {k: {"value": v[0], "ci": [v[1], v[2]]} for k, v in self.exponents.items()}})


def _exponent(result) -> tuple[float, float, float]:
    if isinstance(result, ChinchillaLaw):
        return (result.a, *result.ci["a"])
    law = result.law
    return (law.a, *law.n_law.ci["exponent"])


def _disagreeing(ex: dict[str, tuple[float, float, float]]) -> list[str]:
    """Where one approach's estimate lies outside another's interval (or, without intervals,
    where two estimates are further apart than NO_CI_GAP)."""
    out = []
    for p, (a, lo_a, hi_a) in ex.items():
        for q, (b, lo_b, hi_b) in ex.items():
            if p == q:
                continue
            if np.isfinite([lo_b, hi_b]).all():
                if not lo_b <= a <= hi_b:
                    out.append(f"{p}'s a lies outside {q}'s interval")
            elif p < q and abs(a - b) > NO_CI_GAP:
                out.append(f"{p} and {q} differ by {abs(a - b):.2f} (no intervals: fit with --bootstrap)")
    return out


def causes(results: dict[str, Any], table) -> list[str]:
    """Likely causes of a disagreement, from what the fits and the table show."""
    out = []
    a2 = results.get("approach2")
    if a2 is not None:
        edge = [b for b in a2.budgets if b.status != "ok"]
        if edge:
            out.append(f"grid edges: {len(edge)} of {len(a2.budgets)} IsoFLOP budgets have no minimum inside the "
                       "sampled sizes or have it near an edge; extend the ladder past the optimum")
        alpha, beta = a2.shape
        if abs(alpha - beta) > 0.25 * (alpha + beta):
            out.append(f"lopsided IsoFLOP curves (shape alpha {alpha:.2f}, beta {beta:.2f}): a few sizes per budget "
                       "place the minimum imprecisely, and approach 1's envelope between sizes even more so")
    a1 = results.get("approach1")
    if a1 is not None and "left out" in a1.law.message:
        out.append("grid edges: the smallest or largest model is best over part of approach 1's envelope")
    if "flops" in table.columns:
        from scaleflow.fit.isoflop import group_budgets

        budgets = np.unique(group_budgets(table))
        span = budgets.max() / budgets.min()
        if len(budgets) < 5 or span < 100:
            out.append(f"too few budgets: {len(budgets)} spanning a factor {span:.3g} in compute; exponents through so "
                       "few points move with every point (aim for 5 or more budgets over a factor 100)")
    a3 = results.get("approach3")
    if a3 is not None and "E =" in a3.message:
        out.append(f"unpinned E: approach 3's irreducible loss ({a3.E:.3g}) is not pinned by the data, and its "
                   "exponents absorb the error")
    if "steps" in table.columns:
        short = int((np.asarray(table["steps"], float) < SHORT_RUN).sum())
        if short:
            out.append(f"short runs: {short} of {len(table)} runs train fewer than {SHORT_RUN} steps; their loss "
                       "still carries warmup and schedule effects")
    return out


def compare(results: dict[str, Any], table) -> Agreement | None:
    """The verdict on the approaches in `results` (None with fewer than two of them)."""
    ex = {name: _exponent(results[name]) for name in APPROACHES if name in results}
    if len(ex) < 2:
        return None
    pairs = _disagreeing(ex)
    listing = ", ".join(f"{k} {v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]" for k, v in ex.items())
    if not pairs:
        return Agreement(ex, True, f"the approaches agree on a: {listing}")
    why = causes(results, table) or ["no single cause found in the fits: compare their plots"]
    message = (f"the approaches DISAGREE on a (N_opt ~ C^a): {listing}; {'; '.join(pairs)}. "
               f"Trust none of them alone. Likely causes: {'; '.join(why)}")
    return Agreement(ex, False, message, tuple(why))
