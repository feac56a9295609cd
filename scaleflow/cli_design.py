"""`scaleflow simulate` and `scaleflow next`: parse, call `scaleflow.design`, render with rich.

`register(app, console)` adds both commands to the main typer app. Nothing heavy is imported at
module level, so `--help` stays instant; bad input raises ScaleflowError (one line, exit 2).
"""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from scaleflow.errors import FitError

_Study = Annotated[list[str], typer.Argument(
    help="STUDY (a study name such as isoflop_cpu, or a YAML file) then Hydra overrides", show_default=False)]
_Target = Annotated[str, typer.Option("--target", help="the budget to answer for, in FLOPs (e.g. 1e13)")]
_Json = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object to stdout.")]
_Quantity = Annotated[str, typer.Option(
    "--quantity", help="the answer whose interval to shrink: n_opt, d_opt, loss or a")]


def _number(text: str, option: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise FitError(f"{option} takes a positive number of FLOPs, e.g. 1e13; got {text!r}")
    return value


def _compose(args: list[str]):
    from scaleflow.config import compose_study

    if not args or "=" in args[0]:
        raise FitError("name the study first, e.g. scaleflow next isoflop_cpu --target 1e13 --compute 4e12")
    cfg = compose_study(args[0], args[1:])
    return cfg, cfg.study.kind


def _fmt(v) -> str:
    from scaleflow.report import fmt

    return fmt(v)


def register(app: typer.Typer, console: Console) -> None:
    """Add `simulate` and `next` to `app`, printing to `console` (the CLI's)."""
    global _out
    _out = console
    app.command()(simulate)
    app.command("next")(next_cmd)


_out = Console()  # the CLI's console once registered


def simulate(
    study: _Study,
    target: _Target,
    truth: Annotated[str, typer.Option(
        "--truth", help="the assumed law: a saved fit.json with approach 3, or E=..,A=..,B=..,alpha=..,beta=..")],
    noise: Annotated[Optional[float], typer.Option(
        "--noise", help="sd of log loss per run (0.01: about 1%); default: the saved fit's residuals",
        show_default=False)] = None,
    n_sim: Annotated[int, typer.Option("--n-sim", help="draws of the study, each fitted")] = 100,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    as_json: _Json = False,
) -> None:
    """Fit the study's planned runs many times, drawn from an assumed law, before training them:
    the expected 95% interval and bias of a, N_opt, D_opt and loss at --target, per approach."""
    from scaleflow.design import simulate_study

    cfg, kind = _compose(study)
    if noise is not None and noise < 0:
        raise FitError(f"--noise must be 0 or more; got {noise}")
    sim = simulate_study(cfg, kind, truth, _number(target, "--target"), noise, n_sim, seed)
    if as_json:
        print(json.dumps(sim.to_dict()))
        return
    table = Table(title=f"{cfg.study.name}: {sim.n_runs} runs, {sim.compute:.3g} FLOPs, simulated {sim.n_sim} times "
                        f"(noise {sim.noise:.3g} in log loss); answers at {sim.target:.3g} FLOPs",
                  title_justify="left")
    for h in ("approach", "quantity", "truth", "mean", "bias", "95% interval", "width"):
        table.add_column(h, justify="right")
    for a, rows in sim.approaches.items():
        for q in ("a", "n_opt", "d_opt", "loss_opt"):
            r = rows[q]
            bias = "-" if r["bias"] is None else (f"{r['bias']:+.3f}" if q == "a" else f"{r['bias']:+.1%}")
            w = "-" if r["width"] is None else (f"{r['width']:.3f}" if q == "a" else f"x{r['factor']:.3g}")
            table.add_row(a, q, _fmt(sim.truth[q]), _fmt(r["mean"]), bias,
                          f"[{_fmt(r['interval'][0])}, {_fmt(r['interval'][1])}]", w)
        if rows["failed"]:
            table.add_row(a, "failed fits", "", str(rows["failed"]), "", "", "")
    _out.print(table)
    _out.print("width: hi - lo for a, hi / lo for the others; bias: of the mean (relative but for a)")

def next_cmd(
    study: _Study,
    target: _Target,
    compute: Annotated[str, typer.Option("--compute", help="extra training FLOPs to spend (in all, with --until-width)")],
    quantity: _Quantity = "n_opt",
    launch: Annotated[bool, typer.Option("--launch", help="train the proposed runs with the study's launcher")] = False,
    until_width: Annotated[Optional[float], typer.Option(
        "--until-width", help="repeat fit -> propose -> train until the interval is this wide (hi/lo; hi-lo for a)",
        show_default=False)] = None,
    round_compute: Annotated[Optional[str], typer.Option(
        "--round-compute", help="FLOPs per round of --until-width (default: a third of --compute)",
        show_default=False)] = None,
    n_bootstrap: Annotated[int, typer.Option("--bootstrap", help="replicates of the approach-3 fit")] = 200,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    as_json: _Json = False,
) -> None:
    """Propose the runs that fit in --compute FLOPs and shrink the 95% interval of N_opt (or
    --quantity) at --target the most; --launch trains them, --until-width loops."""
    from scaleflow.design import next_runs, run_loop

    cfg, kind = _compose(study)
    target_flops, flops = _number(target, "--target"), _number(compute, "--compute")
    if until_width is not None and not until_width > 0:
        raise FitError(f"--until-width must be positive; got {until_width}")
    if not launch and until_width is None:
        nxt = next_runs(cfg, kind, target_flops, flops, quantity, n_bootstrap, seed)
        if as_json:
            print(json.dumps(nxt.to_dict()))
            return
        _print_proposal(nxt, quantity)
        return
    per_round = _number(round_compute, "--round-compute") if round_compute else None
    show = None if as_json else _print_round
    rounds = run_loop(cfg, kind, target_flops, flops, until_width, quantity, per_round, n_bootstrap, seed,
                      console=None if as_json else _out, on_round=show)
    if as_json:
        print(json.dumps({"rounds": rounds}))
        return
    last = rounds[-1]
    _out.print(f"interval of {quantity} at {target_flops:.3g} FLOPs: [{_fmt(last['interval'][0])}, "
                  f"{_fmt(last['interval'][1])}] (width {last['width']:.3g}), measured after "
                  f"{sum(r['compute'] for r in rounds):.3g} FLOPs in {sum(bool(r['runs']) for r in rounds)} round(s)")


def _print_proposal(nxt, quantity: str) -> None:
    p = nxt.proposal
    table = Table(title=f"proposed runs: {len(p.runs)}, {p.cost:.3g} FLOPs", title_justify="left")
    for h in ("run", "label", "N (params)", "D (tokens)", "FLOPs", "lr", "batch", "share of variance removed"):
        table.add_column(h, justify="right")
    for r in p.runs.itertuples():
        table.add_row(r.run_id, r.label, _fmt(float(r.params)), _fmt(float(r.tokens)), _fmt(float(r.cost)),
                      _fmt(float(r.lr)), str(r.batch_size), f"{r.gain:.1%}")
    _out.print(table)
    _out.print(f"{quantity} at {p.target:.3g} FLOPs, from {nxt.n_finished} runs: 95% interval "
                  f"[{_fmt(p.interval_now[0])}, {_fmt(p.interval_now[1])}] now, about [{_fmt(p.interval_expected[0])}, "
                  f"{_fmt(p.interval_expected[1])}] expected after these runs (noise {p.noise:.3g} in log loss); "
                  "--launch trains them")


def _print_round(r: dict) -> None:
    _out.print(f"round {r['round']}: {len(r['runs'])} runs, {r['compute']:.3g} FLOPs; interval before "
                  f"[{_fmt(r['interval'][0])}, {_fmt(r['interval'][1])}], expected after "
                  f"[{_fmt(r['expected_interval'][0])}, {_fmt(r['expected_interval'][1])}]"
                  + (f"; failed: {', '.join(r['failed'])}" if r.get("failed") else ""))
