"""The report's part for `downstream` (scaleflow.fit.downstream): its plot and tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scaleflow.fit.laws import percentile_interval
from scaleflow.fit.types import FitRun
from scaleflow.report.format import Section, fmt_ci, save_figure

RESULTS = ("downstream",)


def plot(run: FitRun, out: Path, plt) -> list[str]:
    return plot_result(run.results["downstream"], out, plt) if "downstream" in run.results else []


def plot_result(res, out: Path, plt) -> list[str]:
    """downstream.png/svg: accuracy against task loss, the runs as points, the fitted sigmoid with
    its 95% band, and the predictions with their intervals."""
    from scaleflow.fit.downstream import _sigmoid

    sig, pts = res.sigmoid, res.points
    L = np.asarray(pts["task_loss"], float)
    preds = [p for p in res.predictions if p.get("task_loss") is not None]
    lo = min([L.min()] + [p["task_loss"] for p in preds])
    hi = L.max()
    grid = np.linspace(lo - 0.05 * (hi - lo), hi, 200)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter(L, pts["accuracy"], s=12, c=np.log10(np.asarray(pts["params"], float)), cmap="viridis",
               label="runs (colour: log10 N)")
    ax.plot(grid, sig.predict(grid), "k-", lw=1.5, label="sigmoid fit")
    if sig.samples.size:
        band = percentile_interval(_sigmoid(grid[None], *(sig.samples[:, i, None] for i in range(4))))
        ax.fill_between(grid, band[0], band[1], color="k", alpha=0.15, label="95% band")
    if sig.chance is not None:
        ax.axhline(sig.chance, color="grey", ls=":", lw=1, label=f"chance {sig.chance:g}")
    for p in preds:
        xerr = np.abs(np.array([[p["task_loss"] - (p["task_loss_ci"][0] or p["task_loss"])],
                                [(p["task_loss_ci"][1] or p["task_loss"]) - p["task_loss"]]]))
        yerr = np.abs(np.array([[p["accuracy"] - (p["accuracy_ci"][0] or p["accuracy"])],
                                [(p["accuracy_ci"][1] or p["accuracy"]) - p["accuracy"]]]))
        ax.errorbar([p["task_loss"]], [p["accuracy"]], xerr=xerr, yerr=yerr, fmt="r*", ms=10, capsize=3)
        ax.annotate(f"C={p['flops']:.2g}", (p["task_loss"], p["accuracy"]), fontsize=7, xytext=(4, -10),
                    textcoords="offset points")
    ax.set(xlabel="task loss (nats/token)", ylabel="accuracy", title="Downstream: accuracy vs task loss "
           "(red: predictions)")
    ax.legend(fontsize=7)
    return [save_figure(fig, out, "downstream")]


def sections(d: dict[str, Any]) -> list:
    """Report tables of the `downstream` entry of a fit's JSON dict (none without one)."""
    if "downstream" not in d:
        return []
    r = d["downstream"]
    t, s = r["task_loss_law"], r["sigmoid"]
    out = [Section("Downstream step 1: task loss L_task(N, D) = E + A/N^alpha + B/D^beta",
                   ["parameter", "value", "95% CI"], [[k, t[k], fmt_ci(t["ci"][k])] for k in ("E", "A", "B", "alpha", "beta")],
                   f"status: {t['status']}"),
           Section("Downstream step 2: accuracy = lo + (hi - lo) / (1 + exp(k (L_task - L0)))",
                   ["parameter", "value", "95% CI"], [[k, s[k], fmt_ci(s["ci"][k])] for k in ("lo", "hi", "k", "L0")],
                   f"rmse {s['rmse']:.3g} on {s['n_points']} runs; "
                   + (f"lo fixed at chance {s['chance']:g}" if s["chance"] is not None else "lo fitted")
                   + f"; status: {s['status']}")]
    if r["predictions"]:
        out.append(Section("Downstream predictions (95% intervals through both steps)",
                           ["C (FLOPs)", "N", "D", "task loss", "95% CI", "accuracy", "95% CI", "at"],
                           [[p["flops"], p["params"], p["tokens"], p["task_loss"], fmt_ci(p["task_loss_ci"]),
                             p["accuracy"], fmt_ci(p["accuracy_ci"]), p["how"]] for p in r["predictions"]]))
    return out
