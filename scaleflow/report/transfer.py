"""The report's part for `lr_transfer` (scaleflow.fit.transfer): its plot and tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scaleflow.fit.laws import OK
from scaleflow.fit.transfer import TransferResult
from scaleflow.fit.types import FitRun
from scaleflow.report.format import Section, save_figure

RESULTS = ("lr_transfer",)


def plot(run: FitRun, out: Path, plt) -> list[str]:
    return plot_result(run.results["lr_transfer"], out, plt) if "lr_transfer" in run.results else []


def plot_result(res: TransferResult, out: Path, plt) -> list[str]:
    """lr_transfer.png/svg: loss against LR (log x), one curve per width, one panel per
    parametrization, the optimum of each width marked (hollow where it sits on a grid edge),
    diverged LRs dotted; the y axis zooms on the bowls (losses far above them leave the frame)."""
    pars = [d for d in dict.fromkeys(o.parametrization for o in res.optima)]
    fig, axes = plt.subplots(1, len(pars), figsize=(5.5 * len(pars), 4.2), squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis")
    widths = sorted({o.width for o in res.optima})
    for ax, p in zip(axes[0], pars):
        for o in (o for o in res.optima if o.parametrization == p):
            color = cmap(widths.index(o.width) / max(1, len(widths) - 1))
            ax.plot(o.lr, o.loss, "o-", ms=3, lw=1, color=color, label=f"width {o.width:g}")
            edge = o.status != OK
            ax.scatter([o.lr_opt], [o.loss_opt], marker="*", s=160, zorder=3, linewidths=1.5 if edge else 1.0,
                       facecolors="none" if edge else [color], edgecolors=[color] if edge else "k")
            for v in o.diverged_lrs:
                ax.axvline(v, color=color, lw=0.6, ls=":")
        title = p
        d = next((d for d in res.drifts if d.parametrization == p), None)
        if d is not None:
            title += f": lr_opt x{d.ratio:.2g} over {d.width_range:.3g}x width ({d.grid_steps:+.2g} grid steps)"
        ax.set(xscale="log", xlabel="learning rate", title=title)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("loss (nats/token)")
    loss = np.concatenate([o.loss for o in res.optima])
    lo, mid, hi = loss.min(), np.median(loss), loss.max()
    top = min(hi, lo + 4 * (mid - lo)) if mid > lo else hi
    pad = 0.03 * max(top - lo, 1e-3 * lo)
    axes[0][0].set_ylim(lo - pad, top + pad)  # zoom on the bowls; far-off losses leave the frame
    fig.suptitle("LR transfer across width (*: optimum; hollow: grid edge; dotted: diverged)")
    return [save_figure(fig, out, "lr_transfer")]


def sections(d: dict[str, Any]) -> list:
    """Report tables of the `lr_transfer` entry of a fit's JSON dict (none without one)."""
    if "lr_transfer" not in d:
        return []
    r = d["lr_transfer"]
    out = [Section("LR transfer: optimal learning rate per width",
                   ["parametrization", "width", "lr_opt", "best grid lr", "loss at lr_opt", "runs", "status"],
                   [[o["parametrization"], o["width"], o["lr_opt"], o["best_lr"], o["loss_opt"], o["n_runs"], o["status"]]
                    for o in r["optima"]],
                   "lr_opt: vertex of a parabola in log lr through the best grid point and its neighbours; "
                   "on a grid edge, the edge itself.")]
    if r["drift"]:
        out.append(Section("LR transfer: drift of lr_opt from the narrowest to the widest width",
                           ["parametrization", "width range", "lr_opt ratio", "slope vs log width",
                            "slope s.e.", "grid steps moved", "status"],
                           [[p, x["width_range"], x["ratio"], x["slope"], x["slope_se"], x["grid_steps"], x["status"]]
                            for p, x in r["drift"].items()]))
    return out
