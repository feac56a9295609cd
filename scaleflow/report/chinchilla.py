"""The report's part for the Chinchilla approaches: IsoFLOP curves with their fitted shapes and
minima, the approach-1 envelope, N_opt and D_opt against C with the bootstrap band (dashed
where extrapolated), the parametric fit with its residuals; their tables; the predictions and
the backtest. Axes: parameters, tokens, FLOPs, loss in nats/token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scaleflow.fit.types import FitRun, allocation
from scaleflow.report.format import Section, fmt, fmt_ci, save_figure

RESULTS = ("approach3", "approach2", "approach1")


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
    return save_figure(fig, out, "isoflop")


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
    return save_figure(fig, out, "optimal")


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
    names = [save_figure(fig, out, "parametric")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    r = np.log(L) - np.log(pred)
    for ax, x, label in zip(axes, (N, D), ("parameters N", "tokens D")):
        ax.scatter(x, r, s=10)
        ax.axhline(0, color="k", lw=0.8)
        ax.set(xscale="log", xlabel=label)
    axes[0].set_ylabel("log L measured - log L predicted")
    fig.suptitle("approach 3 residuals")
    names.append(save_figure(fig, out, "residuals"))
    return names


def _plot_envelope(res, curves, out: Path, plt) -> str:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for _, c in curves.groupby("curve"):
        c = c.sort_values("flops")
        ax.plot(c["flops"], c["loss"], color="0.7", lw=0.8)
    ax.scatter(res.flops, res.loss, c=np.log10(res.params), s=14, cmap="viridis", zorder=3)
    ax.set(xscale="log", xlabel="C (FLOPs)", ylabel="loss (nats/token)", title="approach 1: lower envelope")
    return save_figure(fig, out, "envelope")


def plot(run: FitRun, out: Path, plt) -> list[str]:
    """isoflop, envelope, optimal, parametric and residuals plots, those the results support."""
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
    return names


def _law_rows(x: dict[str, Any]) -> list[list[Any]]:
    return [["a (N_opt ~ C^a)", x["a"], fmt_ci(x["ci"]["a"])], ["b (D_opt ~ C^b)", x["b"], fmt_ci(x["ci"]["b"])],
            ["k_N", x["k_n"], fmt_ci(x["ci"]["k_n"])], ["k_D", x["k_d"], fmt_ci(x["ci"]["k_d"])]]


def sections(d: dict[str, Any]) -> list[Section]:
    """The approaches' tables of a fit's JSON dict."""
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
    return out


def prediction_sections(d: dict[str, Any]) -> list[Section]:
    """The compute-optimal predictions and the backtest, last in the report."""
    out = []
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


def _num(v: Any, digits: int = 3) -> str:
    """A short number for the answer: 2.79e9, 5.97e10, 2.304; '-' for none."""
    if v is None or not np.isfinite(v):
        return "-"
    mantissa, _, exp = f"{v:.{digits}g}".partition("e")
    return f"{mantissa}e{int(exp)}" if exp else mantissa


def _ci(pair: Any, digits: int = 3) -> str:
    return "" if not pair or pair[0] is None else f" [{_num(pair[0], digits)}, {_num(pair[1], digits)}]"


def verdict(d: dict[str, Any]) -> str:
    """One line: do the approaches agree on a (fit.agreement's verdict, its exponents and
    intervals), and which of them are doubtful (their statuses)."""
    names = [n for n in RESULTS if n in d]
    a = d.get("agreement")
    if a is None:
        text = (f"only {names[0]} ran: no second approach to check it against" if len(names) == 1
                else "this fit holds no comparison of the approaches")
    else:
        three = lambda v: "-" if v is None else f"{v:.3f}"
        listing = ", ".join(f"{k} {three(v['value'])}" + (f" [{three(v['ci'][0])}, {three(v['ci'][1])}]"
                                                          if v["ci"] and v["ci"][0] is not None else "")
                            for k, v in a["a"].items())
        text = (f"the approaches agree on a (N_opt ~ C^a): {listing}" if a["agree"] else
                f"the approaches DISAGREE on a (N_opt ~ C^a): {listing}; trust none of them alone (causes below)")
    doubtful = [n for n in names if d[n].get("status", "ok") != "ok"]
    if doubtful:
        text += f"; {', '.join(doubtful)} {'is' if len(doubtful) == 1 else 'are'} doubtful (see the warnings below)"
    return text + "."


def answer(d: dict[str, Any]) -> list[str]:
    """The report's first section (Markdown lines): for each budget of `--predict` (else the data's
    budgets, as the fit predicted them), each approach's N_opt, D_opt and loss with their 95%
    intervals, then the verdict line; [] for a fit without a compute-optimal law (approaches 1-3)."""
    names = [n for n in RESULTS if n in d]
    if not names:
        return []
    s = ["## Answer: the compute-optimal model", ""]
    optimal = d.get("optimal") or []
    if optimal:
        s += ["N_opt parameters, D_opt tokens and the loss (nats/token) they reach, per budget C (those of "
              "`--predict`, else the data's own) and approach; brackets: 95% bootstrap intervals.", ""]
        for C in dict.fromkeys(o["flops"] for o in optimal):
            s.append(f"- **C = {_num(C)} FLOPs**")
            for o in (o for o in optimal if o["flops"] == C):
                status = (d.get(o["approach"]) or {}).get("status", "ok")
                s.append(f"  - {o['approach']}{'' if status == 'ok' else f' ({status})'}: "
                         f"**N = {_num(o['params'])}**{_ci(o['params_ci'])}, "
                         f"**D = {_num(o['tokens'])}**{_ci(o['tokens_ci'])} "
                         f"({_num(o['tokens_per_param'])} tokens per parameter), "
                         f"**loss {_num(o['loss'], 4)}**{_ci(o['loss_ci'], 4)}")
    else:
        s.append("No budget to predict at: `scaleflow fit ... --predict 1e21,1e22` (or `scaleflow predict fit.json "
                 "--flops 1e21`) gives N_opt, D_opt and loss at those budgets.")
    return s + ["", f"**Verdict:** {verdict(d)}", ""]
