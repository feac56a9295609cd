"""The report's part for `loss_curve` (scaleflow.fit.loss_curve): its plot and tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scaleflow.fit.types import FitRun
from scaleflow.report.format import Section, fmt_ci, save_figure

RESULTS = ("loss_curve",)


def plot(run: FitRun, out: Path, plt) -> list[str]:
    """loss_curve.png/svg: each run's measured loss (dots) and the law's curve (solid: fitted
    runs, dashed: held-out runs, dotted: --predict-schedule), against the optimizer step."""
    res = run.results.get("loss_curve")
    if res is None:
        return []
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colors = plt.get_cmap("tab10")
    i = 0
    for curves, style, role in ((res.fitted, "-", "fit"), (res.held_out, "--", "held out")):
        for c in curves:
            color = colors(i % 10)
            ax.plot(c.step, c.loss, ".", ms=3, color=color, alpha=0.6)
            ax.plot(c.step, c.predict(res.theta, c.updates), style, lw=1.2, color=color,
                    label=f"{role}: {c.run_id} ({c.label})")
            i += 1
    for spec, c in res.predicted:
        ax.plot(range(c.warmup + 1, c.steps + 1), c.predict(res.theta)[c.warmup + 1:], ":", lw=1.5,
                color=colors(i % 10), label=f"predicted: {spec}")
        i += 1
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"{res.loss_key} (nats/token)")
    L0, A, alpha, C = res.theta
    ax.set_title(f"L = {L0:.3g} + {A:.3g} S1^-{alpha:.3g} - {C:.3g} S2 (lambda {res.lam:g})", fontsize=9)
    ax.legend(fontsize=7)
    return [save_figure(fig, out, "loss_curve")]


def sections(d: dict[str, Any]) -> list[Section]:
    r = d.get("loss_curve")
    if not r:
        return []
    ci = r.get("ci") or {}
    law = Section("Loss curve law (Tissue et al. 2024)", ["", "L0", "A", "alpha", "C", "lambda", "loss", "N", "points"],
                  [["value", r["L0"], r["A"], r["alpha"], r["C"], r["lam"], r["loss_key"], r["params"], r["n_points"]],
                   ["95% CI", *(fmt_ci(ci.get(k)) for k in ("L0", "A", "alpha", "C")), "", "", "", ""]],
                  "L(s) = L0 + A S1^-alpha - C S2; S1: sum of the LRs, S2: momentum-weighted LR decreases; "
                  f"intervals: {r.get('n_bootstrap', 0)} bootstrap replicates, {r.get('resampled', '')}")
    runs = [[role, x["run_id"], x["schedule"], x["predicted_final"], fmt_ci(x.get("predicted_final_ci")),
             x["measured_final"], x["rel_error"], x["curve_rel_rmse"]]
            for role, key in (("fit", "fit_runs"), ("held out", "holdout_runs")) for x in r[key]]
    out = [law, Section("Loss curve: final loss per run", ["role", "run", "schedule", "predicted", "95% CI",
                                                           "measured", "rel. error", "curve rel. RMSE"], runs,
                        "final: mean of the last 3 logged points (train_loss) or the last point (val_loss)")]
    if r["predictions"]:
        out.append(Section("Loss curve: predicted schedules", ["schedule", "steps", "final loss", "95% CI"],
                           [[p["schedule"], p["steps"], p["predicted_final"], fmt_ci(p.get("predicted_final_ci"))]
                            for p in r["predictions"]]))
    return out
