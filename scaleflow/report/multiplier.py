"""The report's part for `compute_multiplier` (scaleflow.fit.multiplier): its plot and tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scaleflow.fit.laws import percentile_interval
from scaleflow.fit.multiplier import loss_opt
from scaleflow.fit.types import FitRun
from scaleflow.report.format import Section, fmt_ci, save_figure

RESULTS = ("compute_multiplier",)


def plot(run: FitRun, out: Path, plt) -> list[str]:
    res = run.results.get("compute_multiplier")
    return [] if res is None else [plot_result(res, out, plt)]


def plot_result(res, out: Path, plt) -> str:
    """compute_multiplier.png/svg: left, each recipe's compute-optimal loss against C (FLOPs)
    with its band; right, the multiplier of B over A against C with its 95% band, the reported
    budgets marked, the crossover (if any) as a vertical line."""
    lo, hi = res.budgets.min() / 10, res.budgets.max() * 10
    if np.isfinite(res.crossover):
        lo, hi = min(lo, res.crossover / 3), max(hi, res.crossover * 3)
    C = np.geomspace(lo, hi, 150)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for r, color in (("A", "C0"), ("B", "C1")):
        name = res.recipes[0 if r == "A" else 1]
        left.plot(C, res.loss_opt(r, C), color=color, label=f"{r}: {name}")
        if res.samples.size:
            band = percentile_interval(loss_opt(res._columns(), r, C[None, :], res.k))
            left.fill_between(C, band[0], band[1], color=color, alpha=0.15, lw=0)
    left.set(xscale="log", xlabel="C (FLOPs)", ylabel="compute-optimal loss (nats/token)",
             title="Loss-optimal curves of both recipes")
    left.legend(fontsize=8)
    m = res.multiplier(C)
    right.plot(C, m, color="C2", label="multiplier of B over A")
    if res.samples.size:
        band = res.multiplier_interval(C)
        right.fill_between(C, band[0], band[1], color="C2", alpha=0.2, lw=0)
    right.scatter(res.budgets, res.multiplier(res.budgets), color="C2", zorder=3, s=20)
    right.axhline(1.0, color="0.5", lw=0.8, ls=":")
    if np.isfinite(res.crossover):
        for ax in (left, right):
            ax.axvline(res.crossover, color="C3", lw=0.8, ls="--", label="crossover")
    right.set(xscale="log", yscale="log", xlabel="C (FLOPs)", ylabel="m: L*_A(m C) = L*_B(C)",
              title="Effective compute multiplier (band: 95% bootstrap)")
    right.legend(fontsize=8)
    return save_figure(fig, out, "compute_multiplier")


def sections(d: dict[str, Any]) -> list[Section]:
    """Report tables of the `compute_multiplier` entry of a fit's JSON dict (none without one)."""
    if "compute_multiplier" not in d:
        return []
    r = d["compute_multiplier"]
    a, b = r["recipe_A"], r["recipe_B"]
    rows = [[x["flops"], x["multiplier"], fmt_ci(x["ci"]), x["loss_A"], x["loss_B"]] for x in r["multiplier"]]
    cross = r["crossover"]
    text = (f"A = {a} ({r['n_points_A']} runs), B = {b} ({r['n_points_B']} runs). m: A needs m times the compute "
            f"to reach B's compute-optimal loss at C (m > 1: B is better). Crossover (L*_A = L*_B): "
            + ("none" if cross == "none" else f"{cross:.3g} FLOPs, 95% CI {fmt_ci(r['crossover_ci'])}")
            + f" within {r['crossover_range'][0]:.2g} to {r['crossover_range'][1]:.2g} FLOPs"
            + (f"; {r['crossover_fraction']:.0%} of the bootstrap replicates cross there"
               if r.get("crossover_fraction") is not None else "") + ".")
    out = [Section(f"Compute multiplier of {b} over {a}", ["C (FLOPs)", "multiplier", "95% CI", "loss A", "loss B"],
                   rows, text)]
    names = ["alpha", "beta", "E_A", "E_B", "A_A", "A_B", "B_A", "B_B"]
    out.append(Section("Compute multiplier: joint fit (shared exponents" + (", shared E)" if r["shared_e"] else ")"),
                       ["parameter", "value", "95% CI"], [[n, r[n], fmt_ci(r["ci"][n])] for n in names],
                       f"status: {r['status']}"))
    return out
