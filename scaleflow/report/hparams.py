"""The report's part for power laws and the LR / batch-size laws: the power law with its data,
LR / batch-size maps per budget and the laws of the optima against compute; their tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scaleflow.fit.types import FitRun
from scaleflow.report.format import Section, fmt_ci, save_figure

RESULTS = ("power", "lr_bs")


def _plot_power(law, table, out: Path, plt) -> str:
    x, L = table[law.x_name].to_numpy(float), table["loss"].to_numpy(float)
    xs = np.geomspace(x.min(), x.max() * 10, 200)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(x, L, s=12)
    ax.plot(xs, law.predict(xs), color="C1", label=f"{law.E:.3g} + {law.A:.3g} x^-{law.alpha:.3g}")
    band = law.interval("predict", xs)
    ax.fill_between(xs, band[0], band[1], color="C1", alpha=0.2, lw=0)
    ax.set(xscale="log", xlabel=law.x_name, ylabel="loss (nats/token)", title="power law with irreducible term")
    ax.legend()
    return save_figure(fig, out, "power")


def _plot_lr_bs(res, out: Path, plt) -> list[str]:
    n = len(res.budgets)
    cols = min(n, 3)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(4.2 * cols, 3.6 * ((n + cols - 1) // cols)),
                             squeeze=False)
    for ax, b in zip(axes.flat, res.budgets):
        sc = ax.scatter(b.lr, b.batch, c=b.loss, cmap="viridis_r", s=30)
        ax.scatter(b.lr[b.near], b.batch[b.near], facecolors="none", edgecolors="r", s=80, label="near-optimal")
        ax.scatter([b.lr[b.best]], [b.batch[b.best]], marker="*", s=150, color="r", label="best")
        ax.set(xscale="log", yscale="log", title=f"{b.flops:.2g} FLOPs", xlabel="learning rate",
               ylabel=f"batch ({res.batch_unit})")
        fig.colorbar(sc, ax=ax, label="loss")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    names = [save_figure(fig, out, "lr_bs_maps")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    C = np.array([b.flops for b in res.budgets])
    Cs = np.geomspace(C.min(), C.max() * 100, 100)
    for ax, law, key, label in ((axes[0], res.lr_law, "lr", "learning rate"),
                                (axes[1], res.batch_law, "batch", f"batch ({res.batch_unit})")):
        for b in res.budgets:
            ax.scatter(np.full(b.near.sum(), b.flops), getattr(b, key)[b.near], s=12, color="C0")
        ax.plot(Cs, law(Cs), color="C1", label=f"{law.k:.3g} C^{law.exponent:.3f}")
        band = law.interval("predict", Cs)
        ax.fill_between(Cs, band[0], band[1], color="C1", alpha=0.2, lw=0)
        ax.set(xscale="log", yscale="log", xlabel="C (FLOPs)", ylabel=label)
        ax.legend()
    names.append(save_figure(fig, out, "lr_bs_laws"))
    return names


def plot(run: FitRun, out: Path, plt) -> list[str]:
    names: list[str] = []
    if "power" in run.results:
        names.append(_plot_power(run.results["power"], run.data.table, out, plt))
    if "lr_bs" in run.results:
        names += _plot_lr_bs(run.results["lr_bs"], out, plt)
    return names


def sections(d: dict[str, Any]) -> list[Section]:
    out = []
    if "power" in d:
        p = d["power"]
        out.append(Section(f"Power law: L = E + A {p['x_name']}^-alpha", ["param", "value", "95% CI"],
                           [[k, p[k], fmt_ci(p["ci"][k])] for k in ("E", "A", "alpha")]))
    if "lr_bs" in d:
        h = d["lr_bs"]
        out.append(Section("Learning rate and batch size", ["law", "k", "exponent", "95% CI of exponent"], [
            ["eta_opt = k C^e", h["lr"]["k"], h["lr"]["exponent"], fmt_ci(h["lr"]["ci"]["exponent"])],
            [f"B_opt = k C^e ({h['batch_unit']})", h["batch"]["k"], h["batch"]["exponent"],
             fmt_ci(h["batch"]["ci"]["exponent"])]]))
        out.append(Section("LR / batch size: budgets", ["budget (FLOPs)", "runs", "best lr", "best batch", "loss",
                                                        "near-optimal", "status"],
                           [[b["flops"], b["n_runs"], b["lr"], b["batch"], b["loss"], b["n_near_optimal"], b["status"]]
                            for b in h["budgets"]]))
    return out
