"""The report's part for power laws and the LR / batch-size laws: the power law with its data,
LR / batch-size maps per budget, the laws of the optima against compute, and the (N, D) laws
against the compute-only ones (predicted against observed optima); their tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scaleflow.fit.types import FitRun
from scaleflow.report.format import Section, fmt_ci, save_figure

RESULTS = ("power", "lr_bs", "lr_bs_nd")


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


def _plot_lr_bs_nd(res, out: Path, plt) -> str:
    """Each cell's observed optimum against both forms' predictions: held out by budget where the
    leave-one-budget-out comparison ran, in sample otherwise."""
    held = res.loo is not None
    points = res.loo["points"] if held else [
        {"lr_observed": c.lr_opt, "lr_nd": float(res.lr_law(c.params, c.tokens)), "lr_compute": float(res.lr_c(c.flops)),
         "batch_observed": c.batch_opt, "batch_nd": float(res.batch_law(c.params, c.tokens)),
         "batch_compute": float(res.batch_c(c.flops))} for c in res.cells]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, q, label in ((axes[0], "lr", "learning rate"), (axes[1], "batch", f"batch ({res.batch_unit})")):
        obs = np.array([p[f"{q}_observed"] for p in points])
        for form, marker, name in (("nd", "o", "(N, D) law"), ("compute", "s", "compute-only law")):
            ax.scatter(obs, [p[f"{q}_{form}"] for p in points], marker=marker, s=30, alpha=0.8, label=name)
        lo, hi = obs.min() / 2, obs.max() * 2
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel=f"observed optimum {label}",
               ylabel="predicted" + (" (budget held out)" if held else " (in sample)"))
        ax.legend()
    return save_figure(fig, out, "lr_bs_nd")


def plot(run: FitRun, out: Path, plt) -> list[str]:
    names: list[str] = []
    if "lr_bs_nd" in run.results:
        names.append(_plot_lr_bs_nd(run.results["lr_bs_nd"], out, plt))
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
    if "lr_bs_nd" in d:
        out += _lr_bs_nd_sections(d["lr_bs_nd"])
    return out


def _lr_bs_nd_sections(h: dict[str, Any]) -> list[Section]:
    ci = lambda law, k: fmt_ci(law["ci"][k])
    laws = Section("LR and batch size against (N, D): y = c N^a D^b", ["law", "c", "a", "95% CI of a", "b", "95% CI of b"],
                   [[name, h[k]["c"], h[k]["a"], ci(h[k], "a"), h[k]["b"], ci(h[k], "b")]
                    for k, name in (("lr", "eta_opt"), ("batch", f"B_opt ({h['batch_unit']})"))], h["message"])
    out = [laws]
    if h["loo"]:
        m = h["loo"]["mae_log"]
        out.append(Section("Leave-one-budget-out: mean |log error| of the optima", ["form", "lr", "batch", "mean"],
                           [[name, m[f]["lr"], m[f]["batch"], m[f]["mean"]]
                            for f, name in (("nd", "(N, D)"), ("compute", "compute-only"))],
                           f"generalises better: {h['loo']['winner']}"))
    out.append(Section("LR / batch size: (N, D) cells", ["budget (FLOPs)", "params", "tokens", "runs", "near-optimal",
                                                         "lr_opt", "batch_opt", "best loss"],
                       [[c["flops"], c["params"], c["tokens"], c["n_runs"], c["n_near_optimal"], c["lr_opt"],
                         c["batch_opt"], c["loss"]] for c in h["cells"]]))
    return out
