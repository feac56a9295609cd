"""`scaleflow fit`, `scaleflow predict` and `scaleflow import`: parse, call `scaleflow.fit.api`
(or `scaleflow.importers`), render with rich.

`register(app)` adds the three commands to the main typer app. Nothing heavy is imported at
module level (no numpy, pandas, scipy, matplotlib, and never torch): `--help` stays instant.
Bad input raises ScaleflowError; the main entry point turns it into one line and exit code 2.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from scaleflow.errors import FitError
from scaleflow.fit.defaults import HUBER_DELTA, N_BOOTSTRAP
from scaleflow.fit.registry import law_help

Json = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object to stdout.")]


def _floats(text: Optional[str], option: str) -> tuple[float, ...]:
    """"1e21,1e22" -> (1e21, 1e22); a bad or non-positive value is a FitError."""
    if not text:
        return ()
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise FitError(f"{option} takes comma-separated numbers, e.g. 1e21,1e22; got {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise FitError(f"{option} values must be positive numbers; got {text!r}")
    return values


def _pairs(text: Optional[str]) -> tuple[tuple[float, float], ...]:
    """"1e9:2e10,7e10:1.4e12" -> ((1e9, 2e10), (7e10, 1.4e12)): (N, D) pairs for --at."""
    out = []
    for item in (text or "").split(","):
        if item.strip():
            n, sep, d = item.partition(":")
            try:
                values = (float(n), float(d)) if sep else ()
            except ValueError:
                values = ()
            if len(values) != 2 or not all(v > 0 for v in values):
                raise FitError(f"--at takes N:D pairs, e.g. 1e9:2e10,7e10:1.4e12; got {text!r}")
            out.append(values)
    return tuple(out)


def _columns(pairs: Optional[list[str]]) -> dict[str, str]:
    out = {}
    for p in pairs or []:
        name, sep, column = p.partition("=")
        if not sep or not name.strip() or not column:
            raise FitError(f"--col takes name=Column (e.g. params=\"Model Size\"); got {p!r}")
        out[name.strip()] = column
    return out


def _render(title: str, header: list[str], rows: list[list[Any]], text: str = "") -> None:
    from rich.table import Table

    from scaleflow.report import fmt

    table = Table(title=title, title_justify="left", caption=text or None, caption_justify="left",
                  min_width=len(title))
    for h in header:
        table.add_column(h, justify="right")
    for r in rows:
        table.add_row(*(v if isinstance(v, str) else fmt(v) for v in r))
    _console().print(table)


def _console(stderr: bool = False):
    """A rich console at least 120 columns wide: pipes and logs get whole tables."""
    from rich.console import Console

    return Console(stderr=stderr, width=max(Console(stderr=stderr).width, 120))


def _print_json(d: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(d) + "\n")


From = Annotated[Optional[str], typer.Option("--from", help="Read SOURCE as results of another tool: wandb (a "
                                             "runs-table CSV export), tensorboard (a log directory, a run per "
                                             "folder) or mlflow (an mlruns file store).", show_default=False)]


# Options of one law or approach, named here so that fit's signature reads as a list.
_Resample = Annotated[str, typer.Option("--resample", help="What the bootstrap of approaches 2 and 3 draws: "
                                        "runs (each alone) or trunks (a WSD trunk's branches together: "
                                        "they share its noise).")]

_Chance = Annotated[Optional[float], typer.Option("--chance", help="--law downstream: accuracy of a random "
                                                  "guess (e.g. 0.25), the sigmoid's fixed floor.")]

_At = Annotated[Optional[str], typer.Option("--at", help="--law downstream: (N, D) pairs to predict at, "
                                            "e.g. 1e9:2e10,7e10:1.4e12.")]

_History = Annotated[Optional[Path], typer.Option("--history", help="Training history for critical-batch when "
                                                  "SOURCE is a table: CSV/parquet of metrics lines (run_id, step, "
                                                  "tokens, train_loss, val_loss, grad_noise_scale).")]

_Asymmetry = Annotated[float, typer.Option("--asymmetry", help="Approach 3: weight W of the Huber loss of runs "
                                            "the model over-estimates (curve above the run); W > 1 fits a lower "
                                            "envelope that hugs the best runs; 1: symmetric.")]

_SharedE = Annotated[bool, typer.Option("--shared-e", help="compute-multiplier: one irreducible loss E for "
                                        "both recipes.")]

_Versus = Annotated[Optional[str], typer.Option("--versus", help="compute-multiplier: a second table or study, "
                                                "the second recipe (B) against SOURCE (A).")]

_PredictSchedule = Annotated[Optional[str], typer.Option("--predict-schedule", help="loss-curve: schedules to "
                                                         "predict, comma-separated, e.g. 'wsd:steps=800:"
                                                         "decay_fraction=0.2,cosine:steps=800' (keys: steps, "
                                                         "warmup_steps, decay_fraction, decay_shape, "
                                                         "final_lr_fraction, lr; unset: as the fitted runs).")]

_Holdout = Annotated[Optional[str], typer.Option("--holdout", help="loss-curve: run ids (comma-separated) left "
                                                 "out of the fit; their final losses are predicted.")]

_CurveLoss = Annotated[str, typer.Option("--curve-loss", help="loss-curve: the history's train_loss or "
                                         "val_loss.")]

_Tracker = Annotated[Optional[str], typer.Option("--tracker", help="Log the --out files of a study's fit to "
                                                 "wandb, tensorboard or mlflow (none: don't); default: the "
                                                 "tracker of the study's runs.", show_default=False)]


def fit(
    source: Annotated[str, typer.Argument(help="CSV or parquet table, or a study directory (or, with --from, "
                                          "a W&B export, TensorBoard logs, an MLflow store).")],
    from_: From = None,
    law: Annotated[str, typer.Option("--law", help=law_help())] = "chinchilla",
    col: Annotated[Optional[list[str]], typer.Option("--col", help="Map a column: name=Column (repeatable), "
                                                     "e.g. --col params=\"Model Size\".")] = None,
    where: Annotated[Optional[str], typer.Option("--where", help="Keep rows matching a pandas query on "
                                                 "the mapped names, e.g. \"loss < 3.43\".")] = None,
    param_count: Annotated[Optional[str], typer.Option("--param-count", help="Which N: non_embedding, "
                                                       "with_head or total (uses column params_<choice>).")] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=0, help="Bootstrap replicates for intervals.")] = N_BOOTSTRAP,
    huber_delta: Annotated[float, typer.Option("--huber-delta", min=0.0, help="Huber delta on log loss.")] = HUBER_DELTA,
    predict: Annotated[Optional[str], typer.Option("--predict", help="FLOP budgets to predict, e.g. 1e21,1e22.")] = None,
    holdout_largest: Annotated[bool, typer.Option("--holdout-largest", help="Backtest: fit without the largest "
                                                  "budget, compare with what it measured.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 0,
    resample: _Resample = "runs",
    chance: _Chance = None,
    at: _At = None,
    history: _History = None,
    asymmetry: _Asymmetry = 1.0,
    shared_e: _SharedE = False,
    versus: _Versus = None,
    predict_schedule: _PredictSchedule = None,
    holdout: _Holdout = None,
    curve_loss: _CurveLoss = "train_loss",
    as_json: Json = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write fit.json, plots (PNG, SVG), report.md "
                                                "and report.html here.")] = None,
    tracker: _Tracker = None,
) -> None:
    """Fit scaling laws (Chinchilla approaches 1-3, power law, LR / batch size) to a study or a table."""
    from scaleflow.fit.api import FitOptions, fit as run_fit
    from scaleflow.report import write
    from scaleflow.trackers import fit_tracker, log_fit_report

    if not huber_delta > 0:
        raise FitError("--huber-delta must be positive")
    if not asymmetry > 0:
        raise FitError("--asymmetry must be positive")
    report_tracker = fit_tracker(source, from_, out, tracker)  # docs/trackers.md
    options = FitOptions(law=law, columns=_columns(col), where=where, param_count=param_count,
                         n_bootstrap=bootstrap, huber_delta=huber_delta, predict=_floats(predict, "--predict"),
                         holdout_largest=holdout_largest, seed=seed, resample=resample, history=str(history) if history else None,
                         source_kind=from_, asymmetry=asymmetry, shared_e=shared_e, versus=versus,
                         chance=chance, at=_pairs(at), curve_loss=curve_loss,
                         study_dir=source if not from_ and Path(source).is_dir() else None,
                         holdout_runs=tuple(h.strip() for h in (holdout or "").split(",") if h.strip()),
                         predict_schedules=tuple(p.strip() for p in (predict_schedule or "").split(",") if p.strip()))
    run = run_fit(source, options)
    d = run.to_dict()
    written = write(run, out, "scaleflow " + shlex.join(sys.argv[1:])) if out is not None else []
    if report_tracker is not None and written:
        log_fit_report(report_tracker, Path(source), out, written)
    if as_json:
        _print_json(d)
        return
    _render_fit(d, f"[bold]{source}[/]: {d['n_points']} runs, law {law}, {bootstrap} bootstrap replicates"
               + (" of whole trunks" if resample == "trunks" else ""))
    if written:
        _console().print(f"wrote {len(written)} files to {out}")


def _render_fit(d: dict, headline: str) -> None:
    """A fit's tables on stdout, its disagreement and warnings on stderr."""
    from scaleflow.report import disagreement, flops_line, sections, warnings_of

    if disagreement(d):
        _console(stderr=True).print(f"[bold red]warning: {disagreement(d)}[/]", markup=True, highlight=False)
    _console().print(f"{headline}; FLOPs: {flops_line(d)}")
    for s in sections(d):
        _render(s.title, s.header, s.rows, s.text)
    err = _console(stderr=True)
    for w in warnings_of(d):
        err.print(f"[yellow]{w}[/]", markup=True, highlight=False)


def predict(
    fit_json: Annotated[Path, typer.Argument(help="fit.json written by `scaleflow fit --out DIR`.")],
    flops: Annotated[Optional[str], typer.Option("--flops", help="Budgets (FLOPs): best N, D and loss, "
                                                 "e.g. 1e22,1e23.")] = None,
    loss: Annotated[Optional[float], typer.Option("--loss", help="Target loss (nats/token): compute to reach it "
                                                  "(or, with --tokens, the smallest model).")] = None,
    tokens: Annotated[Optional[float], typer.Option("--tokens", help="Token budget for the smallest model "
                                                    "reaching --loss (inference-aware).")] = None,
    as_json: Json = False,
) -> None:
    """Answer from a saved fit: best loss for a budget, compute to reach a loss, smallest model for a loss."""
    from scaleflow.fit.api import answer, load_saved
    from scaleflow.report import fmt_ci

    budgets = _floats(flops, "--flops")
    if loss is None and (tokens is not None or not budgets):
        raise FitError("give --flops BUDGETS, --loss L, or --loss L with --tokens T")
    if (loss is not None and not loss > 0) or (tokens is not None and not tokens > 0):
        raise FitError("--loss and --tokens must be positive")
    d = answer(load_saved(fit_json), budgets, loss, tokens)
    if as_json:
        _print_json(d)
        return
    if "optimal" in d:
        _render("Compute-optimal predictions", ["C (FLOPs)", "approach", "N_opt", "95% CI", "D_opt", "D/N", "loss",
                                                "95% CI"],
                [[o["flops"], o["approach"], o["params"], fmt_ci(o["params_ci"]), o["tokens"], o["tokens_per_param"],
                  o["loss"], fmt_ci(o["loss_ci"])] for o in d["optimal"]])
    if "compute_for_loss" in d:
        _render(f"Compute to reach loss {loss}", ["approach", "C (FLOPs)", "95% CI", "N_opt", "D_opt"],
                [[r["approach"], r["flops"], fmt_ci(r["flops_ci"]), r["params"], r["tokens"]] for r in d["compute_for_loss"]])
    if "smallest_model" in d:
        _render(f"Smallest model reaching loss {loss} on {tokens:.3g} tokens", ["approach", "N", "95% CI", "C (FLOPs)"],
                [[r["approach"], r["params"], fmt_ci(r["params_ci"]), r["flops"]] for r in d["smallest_model"]])


def import_results(
    kind: Annotated[str, typer.Argument(help="wandb, tensorboard or mlflow.", show_default=False)],
    source: Annotated[str, typer.Argument(help="A W&B runs-table CSV export, a TensorBoard log directory or "
                                          "an MLflow store (mlruns/ or one experiment's folder).")],
    out: Annotated[Path, typer.Option("--out", help="The table to write: .csv or .parquet.", show_default=False)],
) -> None:
    """Write another tool's runs as a table (one row per finished run) to inspect or edit before `fit`."""
    from rich.markup import escape

    from scaleflow.importers import import_to

    table, notes = import_to(kind, source, out)
    err = _console(stderr=True)
    for note in notes:
        err.print(f"[yellow]note: {escape(note)}[/]", markup=True, highlight=False)
    names = [str(c) for c in table.columns]
    _console().print(f"wrote {len(table)} runs x {len(names)} columns to {out}: {', '.join(names[:30])}"
                     + (f", ... ({len(names) - 30} more)" if len(names) > 30 else ""), markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add the `fit`, `predict` and `import` commands to the main app."""
    app.command("fit")(fit)
    app.command("predict")(predict)
    app.command("import")(import_results)
