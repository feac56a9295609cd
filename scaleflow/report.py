"""Plots and the report of a fit: `write(run, out_dir)` -> fit.json, PNG + SVG plots,
report.md and a self-contained report.html (images embedded as base64).

Plots (matplotlib, Agg backend): IsoFLOP curves with their fitted shapes and minima; N_opt and
D_opt against C with the bootstrap band, dashed where extrapolated; the parametric fit with
the data and its residuals; the approach-1 envelope; the power law; LR / batch-size maps per
budget. Axes: parameters, tokens, FLOPs, loss in nats/token.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scaleflow.files import write_text
from scaleflow.fit.api import FitRun, allocation


def fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)


def fmt_ci(pair: Any) -> str:
    return "-" if not pair or pair[0] is None else f"[{fmt(pair[0])}, {fmt(pair[1])}]"


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) if not isinstance(v, str) else v for v in r) + " |" for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots

def _save(fig, out: Path, name: str) -> str:
    for ext in ("png", "svg"):
        fig.savefig(out / f"{name}.{ext}", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f"{name}.png"


def _plot_isoflop(res, out: Path, plt) -> str:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("viridis")
    for i, b in enumerate(res.budgets):
        color = cmap(i / max(1, len(res.budgets) - 1)) if b.status != "refused" else "0.6"
        ax.scatter(b.params, b.loss, s=14, color=color, label=f"{b.flops:.2g} FLOPs")
        n = np.geomspace(b.params.min(), b.params.max(), 100)
        ax.plot(n, res.curve_loss(b, n), color=color, lw=1, ls="-" if b.status != "refused" else ":")
        if np.isfinite(b.params_opt):
            ax.scatter([b.params_opt], [b.loss_opt], marker="*", s=120, color=color, edgecolor="k", zorder=3)
    ax.set(xscale="log", xlabel="parameters N", ylabel="loss (nats/token)", title="IsoFLOP curves and minima (*)")
    if len(res.budgets) <= 12:
        ax.legend(fontsize=7)
    return _save(fig, out, "isoflop")


def _plot_optimal(run: FitRun, out: Path, plt) -> str | None:
    laws = {k: law for k, r in run.results.items() if (law := allocation(r)) is not None}
    if not laws:
        return None
    flops = run.data.table["flops"].to_numpy(float)
    lo, hi_data = flops.min(), flops.max()
    hi = max([hi_data * 100, *run.options.predict])
    C = np.geomspace(lo, hi, 200)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for (name, law), color in zip(laws.items(), ("C0", "C1", "C2", "C3")):
        for ax, q in zip(axes, ("n_opt", "d_opt")):
            y = getattr(law, q)(C)
            band = law.interval(q, C)
            inside = C <= hi_data
            ax.plot(C[inside], y[inside], color=color, label=name)
            ax.plot(C[~inside], y[~inside], color=color, ls="--")
            ax.fill_between(C, band[0], band[1], color=color, alpha=0.15, lw=0)
        pts = _measured_optima(run.results[name])
        if pts is not None:
            axes[0].scatter(pts[0], pts[1], s=12, color=color)
            axes[1].scatter(pts[0], pts[2], s=12, color=color)
    for ax, label in zip(axes, ("N_opt (parameters)", "D_opt (tokens)")):
        ax.axvline(hi_data, color="0.5", lw=0.8, ls=":")
        ax.set(xscale="log", yscale="log", xlabel="C (FLOPs)", ylabel=label)
        ax.legend(fontsize=8)
    fig.suptitle("Compute-optimal allocation (band: 95% bootstrap; dashed: extrapolated)")
    return _save(fig, out, "optimal")


def _measured_optima(res) -> tuple | None:
    """(C, N, D) measured optima of a result: IsoFLOP vertices or envelope points."""
    if hasattr(res, "budgets") and hasattr(res.budgets[0], "params_opt"):
        ok = [b for b in res.budgets if np.isfinite(b.params_opt)]
        return np.array([b.flops for b in ok]), np.array([b.params_opt for b in ok]), np.array([b.tokens_opt for b in ok])
    if hasattr(res, "flops") and hasattr(res, "params"):
        return res.flops, res.params, res.tokens
    return None


def _plot_parametric(law, table, out: Path, plt) -> list[str]:
    N, D, L = (table[c].to_numpy(float) for c in ("params", "tokens", "loss"))
    pred = law.predict(N, D)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    sc = axes[0].scatter(N, L, c=np.log10(D), s=10, cmap="viridis")
    fig.colorbar(sc, ax=axes[0], label="log10 tokens")
    Ns = np.geomspace(N.min(), N.max(), 100)
    for q in (0.1, 0.5, 0.9):
        d = np.quantile(D, q)
        axes[0].plot(Ns, law.predict(Ns, d), color=plt.get_cmap("viridis")((np.log10(d) - np.log10(D).min())
                                                                          / max(np.ptp(np.log10(D)), 1e-9)))
    axes[0].set(xscale="log", xlabel="parameters N", ylabel="loss (nats/token)", title="L(N, D) fit and data")
    axes[1].scatter(pred, L, s=10)
    lim = [min(pred.min(), L.min()), max(pred.max(), L.max())]
    axes[1].plot(lim, lim, color="k", lw=0.8)
    axes[1].set(xlabel="predicted loss", ylabel="measured loss", title="approach 3: predicted vs measured")
    names = [_save(fig, out, "parametric")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    r = np.log(L) - np.log(pred)
    for ax, x, label in zip(axes, (N, D), ("parameters N", "tokens D")):
        ax.scatter(x, r, s=10)
        ax.axhline(0, color="k", lw=0.8)
        ax.set(xscale="log", xlabel=label)
    axes[0].set_ylabel("log L measured - log L predicted")
    fig.suptitle("approach 3 residuals")
    names.append(_save(fig, out, "residuals"))
    return names


def _plot_envelope(res, curves, out: Path, plt) -> str:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for _, c in curves.groupby("curve"):
        c = c.sort_values("flops")
        ax.plot(c["flops"], c["loss"], color="0.7", lw=0.8)
    ax.scatter(res.flops, res.loss, c=np.log10(res.params), s=14, cmap="viridis", zorder=3)
    ax.set(xscale="log", xlabel="C (FLOPs)", ylabel="loss (nats/token)", title="approach 1: lower envelope")
    return _save(fig, out, "envelope")


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
    return _save(fig, out, "power")


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
    names = [_save(fig, out, "lr_bs_maps")]
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
    names.append(_save(fig, out, "lr_bs_laws"))
    return names


def plot_all(run: FitRun, out: Path) -> list[str]:
    """Every plot the results support; returns the PNG file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: list[str] = []
    r = run.results
    if "approach2" in r:
        names.append(_plot_isoflop(r["approach2"], out, plt))
    if "approach1" in r and run.data.curves is not None:
        names.append(_plot_envelope(r["approach1"], run.data.curves, out, plt))
    name = _plot_optimal(run, out, plt)
    names += [name] if name else []
    if "approach3" in r:
        names += _plot_parametric(r["approach3"], run.data.table, out, plt)
    if "power" in r:
        names.append(_plot_power(r["power"], run.data.table, out, plt))
    if "lr_bs" in r:
        names += _plot_lr_bs(r["lr_bs"], out, plt)
    if "lr_transfer" in r:
        from scaleflow.fit.transfer import plot

        names += plot(r["lr_transfer"], out, plt)
    if "critical_batch" in r:
        from scaleflow.fit.critical_batch import plot

        names += plot(r["critical_batch"], out, plt)
    return names


# ----------------------------------------------------------------------------- report

@dataclass(frozen=True)
class Section:
    """One table of the report, rendered as Markdown here and as a rich table by the CLI."""

    title: str
    header: list[str]
    rows: list[list[Any]]
    text: str = ""


def _law_rows(x: dict[str, Any]) -> list[list[Any]]:
    return [["a (N_opt ~ C^a)", x["a"], fmt_ci(x["ci"]["a"])], ["b (D_opt ~ C^b)", x["b"], fmt_ci(x["ci"]["b"])],
            ["k_N", x["k_n"], fmt_ci(x["ci"]["k_n"])], ["k_D", x["k_d"], fmt_ci(x["ci"]["k_d"])]]


def sections(d: dict[str, Any]) -> list[Section]:
    """The tables of a fit's JSON dict, in report order."""
    out = []
    if "approach3" in d:
        a3 = d["approach3"]
        out.append(Section("Approach 3: L(N, D) = E + A/N^alpha + B/D^beta", ["param", "value", "95% CI"],
                           [[p, a3[p], fmt_ci(a3["ci"][p])] for p in ("E", "A", "B", "alpha", "beta", "a", "b")],
                           f"Summed Huber loss {fmt(a3['huber_loss'])} on {a3['n_points']} points."))
    if "approach2" in d:
        shape = d["approach2"]["shape"]
        out.append(Section("Approach 2: IsoFLOP minima", ["", "value", "95% CI"], _law_rows(d["approach2"]),
                           f"Each budget fitted with E_c + A_c N^-alpha + B_c N^beta, shape shared by the budgets "
                           f"(alpha {fmt(shape['alpha'])}, beta {fmt(shape['beta'])}); its minimum is N_opt."))
    if "approach1" in d:
        out.append(Section("Approach 1: envelope", ["", "value", "95% CI"], _law_rows(d["approach1"]),
                           f"Built from {d['approach1']['used']}; mid-run points are not used."))
    if "approach2" in d:
        out.append(Section("Approach 2: budgets", ["budget (FLOPs)", "runs", "N_opt", "D_opt", "loss", "status"],
                           [[b["flops"], b["n_points"], b["params_opt"], b["tokens_opt"], b["loss_opt"], b["status"]]
                            for b in d["approach2"]["budgets"]]))
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
    if "lr_transfer" in d or "critical_batch" in d:
        from scaleflow.fit import critical_batch, transfer

        out += transfer.sections(d) + critical_batch.sections(d)
    if d.get("optimal"):
        out.append(Section("Compute-optimal predictions",
                           ["C (FLOPs)", "approach", "N_opt", "95% CI", "D_opt", "95% CI", "D/N", "loss", "95% CI"],
                           [[o["flops"], o["approach"], o["params"], fmt_ci(o["params_ci"]), o["tokens"],
                             fmt_ci(o["tokens_ci"]), o["tokens_per_param"], o["loss"], fmt_ci(o["loss_ci"])]
                            for o in d["optimal"]]))
    if d.get("holdout"):
        h = d["holdout"]
        m = h["measured"]
        out.append(Section(f"Backtest: largest budget ({fmt(h['flops'])} FLOPs) held out",
                           ["approach", "N_opt predicted", "N ratio", "loss predicted", "loss rel. error"],
                           [[p["approach"], p["params"], p["params_ratio"], p["loss"], p["loss_error"]]
                            for p in h["predicted"]],
                           f"Measured ({m['how']}): N = {fmt(m['params'])}, loss = {fmt(m['loss'])}."))
    return out


def disagreement(d: dict[str, Any]) -> str | None:
    """The warning that the approaches disagree (shown before anything else), or None."""
    a = d.get("agreement")
    return None if not a or a["agree"] else a["message"]


def warnings_of(d: dict[str, Any]) -> list[str]:
    """Notes, skipped approaches and doubtful statuses of a fit's JSON dict, one line each."""
    lines = [f"note: {n}" for n in d["notes"]] + [f"skipped {k}: {v}" for k, v in d.get("skipped", {}).items()]
    for name in ("approach3", "approach2", "approach1", "power", "lr_bs", "lr_transfer", "critical_batch"):
        if name in d and (d[name].get("status") != "ok" or d[name].get("message")):
            lines.append(f"{name} {d[name]['status']}: {d[name]['message']}")
    return lines


def flops_line(d: dict[str, Any]) -> str:
    """Which FLOP count C every approach and prediction uses."""
    f = d.get("flops") or {}
    return (f"C = {f.get('definition', '6 N D')}; approach 3 converts with C = "
            f"{f.get('flops_per_param_token', 6.0):.4g} N D")


def markdown(d: dict[str, Any], images: list[str], command: str = "") -> str:
    """report.md from the fit's JSON dict and the plot file names."""
    s = [f"# scaleflow fit: {d['source']}", ""]
    if command:
        s += [f"Command: `{command}`", ""]
    if disagreement(d):
        s += ["## Warning: the approaches disagree", "", disagreement(d), ""]
    s += [f"Law `{d['law']}` on {d['n_points']} runs; {d['n_bootstrap']} bootstrap replicates; "
          "intervals are 95% percentile bootstrap intervals.", f"FLOPs: {flops_line(d)}.", ""]
    s += [f"- {w}" for w in warnings_of(d)]
    for sec in sections(d):
        s += ["", f"## {sec.title}", ""] + ([sec.text, ""] if sec.text else []) + [_md_table(sec.header, sec.rows)]
    s += ["", "## Plots", ""] + [f"![{Path(i).stem}]({i})" for i in images]
    return "\n".join(s) + "\n"


def html(md_text: str, out: Path) -> str:
    """Self-contained HTML of the Markdown report, its PNG images inlined as base64."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(md_text)

    def inline(m: re.Match) -> str:
        data = base64.b64encode((out / m.group(1)).read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^"/]+\.png)"', inline, body)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
             "img{max-width:100%}")
    return f'<!doctype html><html><head><meta charset="utf-8"><title>scaleflow fit</title><style>{style}</style></head><body>{body}</body></html>\n'


def write(run: FitRun, out_dir: str | Path, command: str = "") -> list[Path]:
    """fit.json (with bootstrap replicates, for `scaleflow predict`), plots, report.md and
    report.html in out_dir; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d = run.to_dict(include_samples=True)  # the report's tables never read the samples
    write_text(out / "fit.json", json.dumps(d, indent=1) + "\n")
    images = plot_all(run, out)
    md_text = markdown(d, images, command)
    write_text(out / "report.md", md_text)
    write_text(out / "report.html", html(md_text, out))
    return [out / "fit.json", out / "report.md", out / "report.html"] + [out / i for i in images] + \
        [out / i.replace(".png", ".svg") for i in images]
