"""When a fitted law is doubtful: parameters the data do not pin, or that sit at a bound.

A fit is returned even then, with status `doubtful` and a message naming each problem and
the data that would fix it (`with_problems`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from scaleflow.fit.laws import DOUBTFUL, Law, PowerLaw

SPREAD = 10.0  # a scale parameter whose 95% interval spans more than this factor is not pinned
FLOOR = 1e-6  # a scale parameter (E, A, B) below this has run into its bound 0


def unpinned(law: Law, hints: dict[str, str]) -> list[str]:
    """What the data leave undetermined: a scale parameter (not an exponent) at its bound 0 or
    with a 95% interval wider than a factor SPREAD; an exponent whose interval is wider than
    the exponent itself. `hints` maps each parameter to check to the data that would pin it.
    Without bootstrap replicates only the bound is checked."""
    out = []
    for name, hint in hints.items():
        value, (lo, hi) = getattr(law, name), law.ci[name]
        exponent = name in ("alpha", "beta", "exponent")
        if not exponent and value < FLOOR:
            out.append(f"{name} = {value:.2g} is at its bound 0: {hint}")
        elif np.isfinite(lo) and np.isfinite(hi) and (
                (hi - lo > abs(value)) if exponent else (lo <= 0 or hi / lo > SPREAD)):
            out.append(f"{name} = {value:.3g} is not pinned by the data (95% interval {lo:.3g} to {hi:.3g}): {hint}")
    return out


def unpinned_exponent(n_law: PowerLaw) -> list[str]:
    """The allocation exponent a of N_opt = k C^a, when its 95% interval is wider than a itself."""
    a, (lo, hi) = n_law.exponent, n_law.ci["exponent"]
    if np.isfinite(lo) and np.isfinite(hi) and hi - lo > abs(a):
        return [f"a = {a:.3g} is not pinned by the data (95% interval {lo:.3g} to {hi:.3g}): more budgets over "
                "a wider range of compute would pin it"]
    return []


def with_problems(law: Law, problems: list[str]) -> Law:
    """The law marked doubtful with `problems` added to its message (unchanged if none)."""
    if not problems:
        return law
    return replace(law, status=DOUBTFUL, message="; ".join(m for m in (law.message, *problems) if m))
