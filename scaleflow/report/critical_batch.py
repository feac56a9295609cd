"""The report's part for `critical_batch` (scaleflow.fit.critical_batch): its plot and tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scaleflow.fit.laws import OK
from scaleflow.fit.critical_batch import CriticalBatchResult
from scaleflow.fit.types import FitRun
from scaleflow.report.format import Section, fmt_ci, save_figure

RESULTS = ("critical_batch",)


def plot(run: FitRun, out: Path, plt) -> list[str]:
    return plot_result(run.results["critical_batch"], out, plt) if "critical_batch" in run.results else []


def plot_result(res: CriticalBatchResult, out: Path, plt) -> list[str]:
    """critical_batch.png/svg: left, the noise scale against loss with its law and the trade-off's
    B_crit per target loss; right, steps against tokens to reach each target, with the fitted
    hyperbola (S/S_min - 1)(E/E_min - 1) = 1."""
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.5))
    ax = axes[0]
    L, Bn = res.points
    if len(L):
        ax.scatter(L, Bn, s=6, color="0.6", label="logged noise scale")
    if res.noise is not None:
        span = [*res.noise.loss_range, *(f.loss for t in res.tradeoffs for f in t.targets)]
        Ls = np.geomspace(min(span), max(span), 100)
        ax.plot(Ls, res.noise(Ls), color="C1",
                label=f"B_simple = {res.noise.B_star:.3g} / L^(1/{res.noise.alpha_B:.3g})")
        band = res.noise.interval("predict", Ls)
        ax.fill_between(Ls, band[0], band[1], color="C1", alpha=0.2, lw=0)
    ys = list(Bn)
    for j, t in enumerate(res.tradeoffs):
        color = f"C{j % 8}"
        label = f"B_crit = E_min/S_min ({t.model})" if len(res.tradeoffs) > 1 else "B_crit = E_min/S_min"
        ok = [x for x in t.targets if np.isfinite(x.B_crit) and x.status == OK]
        if ok:
            ci = np.array([x.ci["B_crit"] for x in ok]).T
            y = np.array([x.B_crit for x in ok])
            err = np.where(np.isfinite(ci), np.abs(ci - y), 0.0)
            ax.errorbar([x.loss for x in ok], y, yerr=err, fmt="s", ms=5, color=color, capsize=3, label=label)
            ys += list(y)
        bad = [x for x in t.targets if np.isfinite(x.B_crit) and x.status != OK]
        if bad:
            ax.scatter([x.loss for x in bad], [x.B_crit for x in bad], marker="s", s=25, facecolors="none",
                       edgecolors=color, label="B_crit, doubtful (outside the swept batch sizes)")
    if ys:
        ys = np.array(ys)
        ax.set_ylim(ys[ys > 0].min() / 3, ys.max() * 3)  # doubtful B_crit far off may leave the frame
    ax.set(xscale="log", yscale="log", xlabel="loss (nats/token)", ylabel="batch size (tokens)",
           title="critical batch size against loss")
    from matplotlib.ticker import FormatStrFormatter

    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.legend(fontsize=7)
    ax = axes[1]
    cmap = plt.get_cmap("viridis")
    for t in res.tradeoffs[:1]:
        for i, f in enumerate(t.targets):
            color = cmap(i / max(1, len(t.targets) - 1))
            ax.scatter(f.tokens, f.steps, color=color, s=18, label=f"loss {f.loss:.3g}")
            if f.S_min > 0 and f.E_min > 0:
                lo, hi = f.batch.min() / 2, f.batch.max() * 2  # the fitted curve over the swept batch sizes
                Bs = np.geomspace(lo, hi, 100)
                S = f.S_min * (1 + f.B_crit / Bs)
                ax.plot(S * Bs, S, color=color, lw=1)
                if lo <= f.B_crit <= hi:
                    ax.scatter([2 * f.E_min], [2 * f.S_min], marker="*", s=90, color=color, edgecolor="k", zorder=3)
        ax.set_title("steps S vs tokens E to reach a loss (*: B = B_crit)"
                     + (f"\n{t.model}" if len(res.tradeoffs) > 1 else ""), fontsize=9)
    if not res.tradeoffs:
        ax.text(0.5, 0.5, "no batch-size sweep", ha="center", va="center", transform=ax.transAxes)
    ax.set(xscale="log", yscale="log", xlabel="tokens E", ylabel="steps S")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    if res.tradeoffs:
        ax.legend(fontsize=7)
    fig.suptitle("Critical batch size: noise scale (a) and steps-tokens trade-off (b)")
    return [save_figure(fig, out, "critical_batch")]


def sections(d: dict[str, Any]) -> list:
    """Report tables of the `critical_batch` entry of a fit's JSON dict (none without one)."""
    if "critical_batch" not in d:
        return []
    r, out = d["critical_batch"], []
    n = r["noise_scale"]
    if n:
        out.append(Section("Critical batch (a): noise scale B_simple = B* / L^(1/alpha_B) (tokens)",
                           ["param", "value", "95% CI"],
                           [[p, n[p], fmt_ci(n["ci"][p])] for p in ("B_star", "alpha_B")],
                           f"{n['n_points']} logged noise scales from {n['n_runs']} runs, train loss "
                           f"{n['loss_range'][0]:.4g} to {n['loss_range'][1]:.4g}; rms log residual "
                           f"{n['rms_log_residual']:.3g}; intervals resample {n['resampled']}."))
    if r["table"]:
        many = len(r["tradeoff"]) > 1
        model = (lambda x: [x["model"]]) if many else (lambda x: [])
        caption = "; ".join(f"{t['model']}: steps to reach each loss from {t['loss_column']}, batch sizes "
                            f"{', '.join(f'{b:.4g}' for b in t['batch_tokens'])} tokens" for t in r["tradeoff"])
        out.append(Section("Critical batch (b): steps-tokens trade-off S = S_min (1 + B_crit / B)",
                           ["model"] * many + ["loss", "batch sizes", "S_min (steps)", "E_min (tokens)", "B_crit",
                                              "95% CI", "status"],
                           [model(x) + [x["loss"], x["n_batch_sizes"], x["S_min"], x["E_min"], x["B_crit"],
                                        fmt_ci(x["B_crit_ci"]), x["status"]] for x in r["table"]], caption))
        out.append(Section("Critical batch: B_crit from the trade-off beside B_simple from the noise scale (tokens)",
                           ["model"] * many + ["loss", "B_crit", "95% CI", "B_simple", "95% CI", "B_crit / B_simple"],
                           [model(x) + [x["loss"], x["B_crit"], fmt_ci(x["B_crit_ci"]), x["B_simple"],
                                        fmt_ci(x["B_simple_ci"]), x["ratio"]] for x in r["table"]],
                           "B_simple: the fitted law (a) at that loss; '-' where (a) was skipped."))
    return out
