"""The report's part for `rollout` (scaleflow.fit.rollout): its plot and tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scaleflow.fit.types import FitRun
from scaleflow.report.format import Section, fmt, fmt_ci, save_figure

RESULTS = ("rollout",)
COLORS = {"approach3": "C0", "approach2": "C1", "approach1": "C2"}


def plot(run: FitRun, out: Path, plt) -> list[str]:
    return plot_result(run.results["rollout"].to_dict(), out, plt) if "rollout" in run.results else []


def _rows(d: dict[str, Any]):
    for s in d["steps"]:
        for p in s["predicted"]:
            yield s, p


def plot_result(d: dict[str, Any], out: Path, plt) -> list[str]:
    """rollout.png/svg: relative error of N_opt and of the loss against the step (left), predicted
    N_opt and loss with their 95% prediction intervals against the observed optimum of each
    held-out budget (middle, right)."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    approaches = list(dict.fromkeys(p["approach"] for _, p in _rows(d)))
    for i, a in enumerate(approaches):
        rows = [(s, p) for s, p in _rows(d) if p["approach"] == a]
        color = COLORS.get(a, f"C{i + 3}")
        step = np.array([s["step"] for s, _ in rows], float) + 0.08 * (i - 1)
        for ax, key, err, marker in ((axes[0], "params", "params_error", "o-"), (axes[0], "loss", "loss_error", "s--")):
            e = np.array([np.nan if p[err] is None else p[err] for _, p in rows], float)
            ax.plot(step, 100 * e, marker, color=color, ms=4, label=f"{a} {'N_opt' if key == 'params' else 'loss'}")
        for ax, key in ((axes[1], "params"), (axes[2], "loss")):
            C = np.array([s["flops"] for s, _ in rows], float) * (1 + 0.04 * (i - 1))
            y = np.array([np.nan if p[key] is None else p[key] for _, p in rows], float)
            pi = np.array([[np.nan, np.nan] if p[f"{key}_pi"][0] is None else p[f"{key}_pi"] for _, p in rows], float)
            ok = np.isfinite(y)
            if ok.any():
                yerr = np.abs(np.vstack([y - pi[:, 0], pi[:, 1] - y]))
                yerr[~np.isfinite(yerr)] = 0.0
                ax.errorbar(C[ok], y[ok], yerr=yerr[:, ok], fmt="o", color=color, capsize=3, ms=4,
                            label=f"{a} predicted (95% PI)")
    for ax, key in ((axes[1], "params"), (axes[2], "loss")):
        C = [s["flops"] for s in d["steps"]]
        ax.plot(C, [s["measured"][key] for s in d["steps"]], "k*", ms=11, label="observed")
        ax.set(xscale="log", xlabel="held-out budget C (FLOPs)", yscale="log" if key == "params" else "linear",
               ylabel="N_opt (parameters)" if key == "params" else "loss at the optimum (nats/token)")
        ax.legend(fontsize=7)
    axes[0].axhline(0, color="k", lw=0.6)
    axes[0].set(xlabel="step k (fit C_1..C_k, predict C_(k+1))", ylabel="relative error (%)")
    axes[0].set_xticks([s["step"] for s in d["steps"]])
    axes[0].legend(fontsize=7)
    fig.suptitle("Rollout backtest: predicted vs observed optimum of the next budget")
    return [save_figure(fig, out, "rollout")]


def sections(d: dict[str, Any]) -> list:
    """Report tables of the `rollout` entry of a fit's JSON dict (none without one)."""
    if "rollout" not in d:
        return []
    r = d["rollout"]
    rows = [[s["step"], s["flops"], p["approach"], s["measured"]["params"], p["params"], fmt_ci(p["params_pi"]),
             p["params_error"], _yes(p["params_inside"]), s["measured"]["loss"], p["loss"], fmt_ci(p["loss_pi"]),
             p["loss_error"], _yes(p["loss_inside"])] for s, p in _rows(r)]
    out = [Section("Rollout backtest: each step predicts the next budget's optimum",
                   ["step", "held-out C", "approach", "N observed", "N predicted", "95% PI", "N rel. error",
                    "inside", "loss observed", "loss predicted", "95% PI", "loss rel. error", "inside"], rows,
                   "Observed: the minimum of the held-out budget's IsoFLOP curve (else its best run). PI: "
                   "prediction interval, bootstrap replicates times a resampled residual of the training budgets.")]
    out.append(Section("Rollout backtest: summary per approach",
                       ["approach", "steps", "mean abs N error", "N inside PI", "mean abs loss error", "loss inside PI"],
                       [[a, x["steps"], x["params_abs_error"], x["params_inside"] or "-", x["loss_abs_error"],
                         x["loss_inside"] or "-"] for a, x in r["summary"].items()],
                       f"Budgets: {', '.join(fmt(c) for c in r['budgets'])} FLOPs."))
    return out


def _yes(v: Any) -> str:
    return "-" if v is None else "yes" if v else "NO"
