"""Bias of the allocation exponent a on fixed, off-centre IsoFLOP ladders.

For each design (the demo's ladder: 8 sizes over 74x, 3 budgets a factor 2 apart; a
published-size ladder: 10 sizes over 300x, 5 budgets over 100x) and each (alpha, beta), data
from a known L(N, D) with the middle budget's optimum a third of the way up the ladder.
Prints a_true, then a from one parabola in ln N per budget (Hoffmann et al.'s approach 2, as a
baseline), scaleflow's approach 2 and approach 3: noise-free, and the mean error over seeds
with 0.2% loss noise.

    python benchmarks/fit_ladders.py [--seeds 8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scaleflow.fit.isoflop import IsoFlopFitter, simulate  # noqa: E402
from scaleflow.fit.laws import ChinchillaLaw, loglinear  # noqa: E402
from scaleflow.fit.parametric import ParametricFitter  # noqa: E402

DESIGNS = {
    "demo ladder (8 sizes / 74x, 3 budgets / 4x)": (np.geomspace(4.8e3, 4.8e3 * 74, 8), [1e11, 2e11, 4e11]),
    "wide ladder (10 sizes / 300x, 5 budgets / 100x)": (np.geomspace(1e7, 3e9, 10), np.geomspace(3e17, 3e19, 5)),
}
EXPONENTS = [(0.25, 0.45), (0.30, 0.40), (0.35, 0.37), (0.45, 0.25), (0.60, 0.30)]


def law_with_optimum(alpha: float, beta: float, C: float, n_opt: float) -> ChinchillaLaw:
    B = 2000.0
    G = n_opt / (C / 6.0) ** (beta / (alpha + beta))
    return ChinchillaLaw(E=1.8, A=G ** (alpha + beta) * beta * B / alpha, B=B, alpha=alpha, beta=beta)


def parabola_a(df) -> float:
    """One parabola in ln N per budget, vertex = N_opt (the method scaleflow replaced)."""
    Cs, Ns = [], []
    for C, g in df.groupby("budget"):
        c2, c1, _ = np.polyfit(np.log(g["params"]), g["loss"], 2)
        Cs.append(C)
        Ns.append(np.exp(-c1 / (2 * c2)))
    return float(loglinear(np.array(Cs), np.array(Ns))[1])


def estimates(df) -> tuple[float, float, float]:
    return parabola_a(df), IsoFlopFitter().fit(df).law.a, ParametricFitter().fit(df).a


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    args = ap.parse_args()
    print("| design | alpha, beta | a true | parabola | approach 2 | approach 3 | mean error with 0.2% noise "
          "(parabola / approach 2 / approach 3) |")
    print("|---|---|---|---|---|---|---|")
    for name, (ladder, budgets) in DESIGNS.items():
        n_opt = np.exp(np.log(ladder[0]) + np.log(ladder[-1] / ladder[0]) / 3)
        for alpha, beta in EXPONENTS:
            true = law_with_optimum(alpha, beta, budgets[len(budgets) // 2], n_opt)
            clean = estimates(simulate(true, budgets, noise=0.0, ladder=ladder))
            noisy = np.mean([estimates(simulate(true, budgets, noise=0.002, ladder=ladder, seed=s))
                             for s in range(args.seeds)], axis=0) - true.a
            print(f"| {name} | {alpha}, {beta} | {true.a:.3f} | " + " | ".join(f"{v:.3f}" for v in clean)
                  + " | " + " / ".join(f"{v:+.3f}" for v in noisy) + " |")


if __name__ == "__main__":
    main()
