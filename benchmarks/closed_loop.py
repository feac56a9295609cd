"""The runs `scaleflow next` chooses against a uniform grid, on synthetic laws, at equal compute.

    python benchmarks/closed_loop.py [--seeds 10] [--width 3] [--bootstrap 100]

Truth: Hoffmann et al.'s fitted law (alpha 0.34 != beta 0.28), 1% noise in log loss, a fixed
ladder of 8 sizes (2e7 to 1e9 parameters); a study starts with 3 budgets (1e18 to 4e18 FLOPs);
the answer is N_opt at 1e22 FLOPs, its 95% bootstrap interval's width the hi/lo factor.

1. Equal compute: the uniform grid adds the next two budgets (8e18, 1.6e19) with every size;
   `next` (fit/propose.py) spends the same FLOPs among the ladder at 8e18 to 6.4e19. Printed:
   each seed's width factor after each, and the geometric mean of the ratio of log widths.
2. Compute to a width: rounds of the uniform grid's next budget level, and rounds of `next`
   given the same FLOPs per round, until the width factor is at most --width (or 6 rounds).
   Printed: the compute each strategy needed, per seed and as a median ratio.

Both strategies draw their runs' noise from the same stream per seed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from scaleflow.fit.isoflop import simulate
from scaleflow.fit.laws import ChinchillaLaw
from scaleflow.fit.parametric import ParametricFitter, one_blas_thread
from scaleflow.fit.propose import interval_of, propose, replicate_answers
from scaleflow.fit.simulate import draw

TRUTH = ChinchillaLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
LADDER = np.geomspace(2e7, 1e9, 8)
NOISE, TARGET, START = 0.01, 1e22, (1e18, 2e18, 4e18)


def grid(budgets) -> pd.DataFrame:
    d = simulate(TRUTH, budgets, ladder=LADDER, noise=0.0).drop(columns="loss")
    return d.assign(cost=d["flops"])


def fitted_width(table: pd.DataFrame, n_bootstrap: int, seed: int):
    law = ParametricFitter(n_bootstrap=n_bootstrap, seed=seed).fit(table)
    lo, hi = interval_of(replicate_answers(law, TARGET, "n_opt"), True)
    return law, hi / lo


def _new(table: pd.DataFrame, candidates: pd.DataFrame) -> pd.DataFrame:
    have = set(zip(table["params"].round(), table["flops"].round()))
    keep = [(p, c) not in have for p, c in zip(candidates["params"].round(), candidates["flops"].round())]
    return candidates[keep].reset_index(drop=True)


def equal_compute(seed: int, n_bootstrap: int) -> tuple[float, float, float]:
    """(width now, after the uniform grid's next two budgets, after `next` with the same FLOPs)."""
    rng = np.random.default_rng(seed)
    start = draw(TRUTH, grid(START), NOISE, rng)
    law, now = fitted_width(start, n_bootstrap, seed)
    uniform = grid([8e18, 1.6e19])
    chosen = propose(law, start, grid([8e18, 1.6e19, 3.2e19, 6.4e19]), TARGET, uniform["cost"].sum(), NOISE).runs
    widths = []
    for runs in (uniform, chosen):
        new = draw(TRUTH, runs, NOISE, np.random.default_rng(seed + 1000))
        widths.append(fitted_width(pd.concat([start, new], ignore_index=True), n_bootstrap, seed)[1])
    return now, widths[0], widths[1]


def compute_to_width(seed: int, width: float, n_bootstrap: int, rounds: int = 6) -> dict[str, float]:
    """FLOPs each strategy spent before the width factor reached `width` (inf: not within `rounds`)."""
    out = {}
    for strategy in ("uniform", "next"):
        rng = np.random.default_rng(seed)
        table = draw(TRUTH, grid(START), NOISE, rng)
        spent, level = 0.0, START[-1]
        for _ in range(rounds + 1):
            law, w = fitted_width(table, n_bootstrap, seed)
            if w <= width:
                break
            level *= 2
            per_round = level * len(LADDER)
            if strategy == "uniform":
                runs = grid([level])
            else:
                runs = propose(law, table, _new(table, grid([level / 4, level / 2, level, level * 2, level * 4])),
                               TARGET, per_round, NOISE).runs.drop(columns="gain")
            table = pd.concat([table, draw(TRUTH, runs, NOISE, rng)], ignore_index=True)
            spent += runs["cost"].sum()
        out[strategy] = spent if w <= width else float("inf")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--width", type=float, default=3.0, help="target width factor (hi/lo) of N_opt")
    parser.add_argument("--bootstrap", type=int, default=100)
    args = parser.parse_args()
    started = time.time()
    with one_blas_thread():
        print("1. equal compute (1.92e20 FLOPs more): width factor of N_opt at 1e22")
        ratios = []
        for seed in range(args.seeds):
            now, uniform, chosen = equal_compute(seed, args.bootstrap)
            ratios.append(np.log(chosen) / np.log(uniform))
            print(f"  seed {seed}: now x{now:.3g}, uniform grid x{uniform:.3g}, next x{chosen:.3g}")
        print(f"  log-width ratio next / uniform: geometric mean {np.exp(np.mean(np.log(ratios))):.3f}, "
              f"next narrower in {sum(r < 1 for r in ratios)} of {len(ratios)} seeds")
        print(f"2. compute to reach a width factor of {args.width:g}")
        spent = []
        for seed in range(args.seeds):
            s = compute_to_width(seed, args.width, args.bootstrap)
            spent.append(s)
            print(f"  seed {seed}: uniform {s['uniform']:.3g} FLOPs, next {s['next']:.3g} FLOPs")
        ratio = [s["next"] / s["uniform"] for s in spent if np.isfinite(s["uniform"]) and s["uniform"] > 0]
        print(f"  compute ratio next / uniform: median {np.median(ratio):.3f} over {len(ratio)} seeds "
              f"(uniform never reached it in {sum(not np.isfinite(s['uniform']) for s in spent)}, "
              f"next in {sum(not np.isfinite(s['next']) for s in spent)})")
    print(f"wall {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
