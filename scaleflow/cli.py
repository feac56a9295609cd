"""The `scaleflow` command line: thin commands that parse, call one library function, render.

Heavy imports (torch, pandas) happen inside the commands so that `--help` is instant and
`scaleflow fit` never loads torch. A ScaleflowError becomes one line on stderr and exit 2.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from scaleflow.errors import ScaleflowError
from scaleflow.exit_codes import EXIT_CTRL_C, EXIT_FAILED, EXIT_USAGE

app = typer.Typer(
    help="Plan, run and fit language-model scaling-law studies.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
sweep_app = typer.Typer(help="Run a study: an IsoFLOP grid or an LR x batch-size grid.", no_args_is_help=True)
app.add_typer(sweep_app, name="sweep")
# Wide enough for plan tables when output goes to a file or a pipe.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)



@app.callback()
def _global_options(
    config_path: Annotated[Optional[list[Path]], typer.Option(
        "--config-path", help="A folder of your own studies (STUDY.yaml) and config groups (model/, data/, ...), "
        "searched before the built-in ones; repeatable. The same as $SCALEFLOW_CONFIG_PATH (':'-separated).",
        show_default=False)] = None,
) -> None:
    from scaleflow.config import CONFIG_PATH_ENV

    if config_path:
        earlier = [p for p in os.environ.get(CONFIG_PATH_ENV, "").split(os.pathsep) if p]
        os.environ[CONFIG_PATH_ENV] = os.pathsep.join([*(str(p) for p in config_path), *earlier])


Overrides = Annotated[Optional[list[str]], typer.Argument(help="Hydra overrides, e.g. model.d_model=64 seed=1", show_default=False)]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the plan and its cost; launch nothing.")]
Force = Annotated[bool, typer.Option("--force", help="Retrain finished runs too.")]


def _table(title: str, rows: list[tuple], columns: list[str]) -> Table:
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, justify="right" if c not in ("run", "state", "kind", "shape") else "left")
    for row in rows:
        table.add_row(*(str(v) for v in row))
    return table


@app.command()
def train(overrides: Overrides = None) -> None:
    """Train one run: scaleflow train run_dir=DIR model.n_layer=1 model.d_model=32 model.n_head=2"""
    from scaleflow.config import compose_run, run_id
    from scaleflow.worker import train_external, train_interruptible

    cfg = compose_run(overrides or [])
    run_dir = Path(cfg.run_dir or f"runs/train/{run_id(cfg)}")
    console.print(f"training run [bold]{run_id(cfg)}[/] into {run_dir}")
    if cfg.command.template is not None:  # an external trainer: one run, as a study's job runs it
        summary = train_external(cfg, run_dir)
    elif cfg.trainer.world_size > 1:
        summary = _train_data_parallel(cfg, run_dir)
    else:
        summary = train_interruptible(cfg, run_dir)
    if summary["status"] == "interrupted":
        at = f" at step {summary['step']}" if summary.get("step") is not None else ""
        err_console.print(f"interrupted{at}; resume with resume=true run_dir={run_dir}")
        raise typer.Exit(EXIT_CTRL_C)
    if summary["status"] == "failed":
        err_console.print(f"error: the run failed: {summary['error']}", markup=False, highlight=False)
        raise typer.Exit(EXIT_FAILED)
    rows = [(k, f"{v:.4g}" if isinstance(v, float) else v) for k, v in summary.items()]
    console.print(_table(f"run {summary['run_id']}: {summary['status']}", rows, ["field", "value"]))
    if summary["status"] != "done":
        raise typer.Exit(EXIT_FAILED)


def _train_data_parallel(cfg, run_dir: Path) -> dict:
    """trainer.world_size > 1: the worker under torchrun, one process per rank.

    `resume` means what it means on one process: without resume=true the worker (which in a
    sweep always resumes) is told to start from step 0. torchrun runs in its own session, so
    that a terminal's Ctrl-C reaches only this process, which passes a stop signal on as one
    SIGTERM: torchrun relays it to every rank, and the ranks checkpoint at the same step.
    """
    from omegaconf import OmegaConf

    from scaleflow.config import run_id
    from scaleflow.files import read_json, write_text
    from scaleflow.launch import Job
    from scaleflow.worker import RelayFlag, stop_on_signals

    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    command = Job(run_dir, world_size=cfg.trainer.world_size).command() + ([] if cfg.resume else ["--fresh"])
    with stop_on_signals(RelayFlag()) as relay:
        code = relay.start(command).wait()
    if relay():
        from scaleflow.checkpoints import list_checkpoints  # imports torch: only when needed

        steps = [step for step, _ in list_checkpoints(run_dir)]
        return {"status": "interrupted", "run_id": run_id(cfg), "step": steps[-1] if steps else 0}
    summary = read_json(run_dir / "summary.json")
    if code != 0 or summary is None:
        raise ScaleflowError(f"the {cfg.trainer.world_size}-process run failed (exit {code}); see the output above")
    return summary


def _study_and_overrides(args: Optional[list[str]], default: str) -> tuple[str, list[str]]:
    """STUDY is optional: the first argument unless it is an override (contains '=')."""
    args = list(args or [])
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return default, args


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:.3g}"
    return str(value)


def _print_plan(specs, throughput: float, title: str) -> None:
    from scaleflow.sweep import plan_rows, repeat_warning

    rows = plan_rows(specs, throughput)
    columns = ["run", "kind", "N", "D", "D/N", "steps", "batch", "lr", "wd", "rule", "FLOPs", "est_s", "epochs"]
    console.print(_table(title, [tuple("-" if r[c] is None else _fmt(r[c]) for c in columns) for r in rows], columns))
    flops = sum(r["FLOPs"] for r in rows)
    console.print(f"[bold]{len(rows)} runs, {flops:.3g} FLOPs, about {flops / throughput / 60:.1f} min "
                  f"at {throughput:.3g} FLOP/s (study.throughput), one run at a time[/]")
    if warning := repeat_warning(rows):
        err_console.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)


def _print_commands(specs, study_dir: Path) -> None:
    """An external trainer's exact command per run (plain lines: they are meant to be copied)."""
    import shlex

    from scaleflow.plan import planned_command

    if not specs or specs[0].config["command"]["template"] is None:
        return
    console.print("commands (first attempt; cwd " + str(specs[0].config["command"]["cwd"]) + "):")
    for spec in specs:
        console.print(f"{spec.run_id}: {shlex.join(planned_command(spec, study_dir.resolve() / spec.run_id))}",
                      markup=False, highlight=False, soft_wrap=True)


def _run_sweep(kind: str, args: Optional[list[str]], default: str, dry_run: bool, force: bool) -> None:
    from scaleflow.config import compose_study
    from scaleflow.store import study_dir_for
    from scaleflow.sweep import plan_study, sweep

    study, overrides = _study_and_overrides(args, default)
    cfg = compose_study(study, overrides)
    if dry_run:
        specs = plan_study(cfg, kind)
        _print_plan(specs, cfg.study.throughput, f"{cfg.study.name}: plan (dry run, nothing launched)")
        console.print(f"study directory: {study_dir_for(cfg)}")
        _print_commands(specs, study_dir_for(cfg))
        return
    report = sweep(cfg, kind, force=force, console=console)
    _print_outcome(report)


def _print_outcome(report) -> None:
    out = report.outcome
    console.print(f"study {report.study_dir}: {len(report.specs)} runs, {report.skipped_done} already finished, "
                  f"{report.launched} launched")
    if out is None:
        return
    if out.submitted:
        console.print(f"submitted SLURM job(s) {', '.join(out.submitted)}; follow with: scaleflow status {report.study_dir}")
    if out.busy:
        console.print(f"{len(out.busy)} run(s) were being trained by another process and were left to it")
    if out.interrupted:
        err_console.print("interrupted: every run checkpointed; run the same command again to resume")
        raise typer.Exit(EXIT_CTRL_C)
    if out.failed:
        err_console.print(f"{len(out.failed)} job(s) failed: {', '.join(out.failed[:5])}; see worker.log in their run directories")
        raise typer.Exit(EXIT_FAILED)


StudyArgs = Annotated[Optional[list[str]], typer.Argument(help="[STUDY] then Hydra overrides; STUDY is a YAML path, or a name from --config-path folders or the built-in studies (scaleflow/sweeps/)", show_default=False)]


@sweep_app.command("isoflop")
def sweep_isoflop(args: StudyArgs = None, dry_run: DryRun = False, force: Force = False) -> None:
    """IsoFLOP grid: each budget, a ladder of model sizes with tokens = C / (FLOPs per token)."""
    _run_sweep("isoflop", args, "isoflop_cpu", dry_run, force)


@sweep_app.command("lr-bs")
def sweep_lr_bs(args: StudyArgs = None, dry_run: DryRun = False, force: Force = False) -> None:
    """Learning-rate x batch-size grid at several budgets (DeepSeek LLM style)."""
    _run_sweep("lr_bs", args, "lr_bs_cpu", dry_run, force)


@sweep_app.command("mup-transfer")
def sweep_mup_transfer(args: StudyArgs = None, dry_run: DryRun = False, force: Force = False) -> None:
    """LR x width grids in SP and muP: does the best LR transfer across width?"""
    _run_sweep("mup_transfer", args, "mup_transfer_cpu", dry_run, force)


@app.command()
def status(study_dir: Annotated[Path, typer.Argument(help="a study directory, e.g. runs/isoflop_cpu")]) -> None:
    """Every run's state, progress, last loss and job id; exit 1 if any run failed."""
    from scaleflow.launch.slurm import queue_states
    from scaleflow.store import study_states

    states = study_states(study_dir, queue_states())
    rows = [(s.run_dir.name, s.kind, s.label, s.state, f"{s.step}/{s.steps}",
             _fmt(s.last_loss) if s.last_loss is not None else "-", s.job_id or "-") for s in states]
    console.print(_table(f"{study_dir}", rows, ["run", "kind", "label", "state", "progress", "last loss", "job"]))
    counts = {name: sum(s.state == name for s in states) for name in dict.fromkeys(s.state for s in states)}
    console.print(", ".join(f"{n} {name}" for name, n in counts.items()) or "no runs")
    for s in states:
        if s.reason:
            console.print(f"{s.run_dir.name} failed: {s.reason}", markup=False, highlight=False, soft_wrap=True)
    _print_branch_accounting(study_dir)
    if counts.get("failed"):
        raise typer.Exit(EXIT_FAILED)


def _print_branch_accounting(study_dir: Path) -> None:
    from scaleflow.branches import study_accounting

    acc = study_accounting(study_dir)
    if acc is not None:
        console.print(f"decay branches: {acc.branched_flops:.3g} FLOPs branched vs {acc.independent_flops:.3g} "
                      f"as independent runs (ratio {acc.ratio:.2f})")


@app.command("decay-branches")
def decay_branches_cmd(
    args: StudyArgs = None,
    dry_run: DryRun = False,
    force: Force = False,
    from_dir: Annotated[Optional[Path], typer.Option("--from", help="fork new branches off this existing trunk run directory")] = None,
) -> None:
    """WSD decay branches: one stable-phase trunk per model, a decay branch per budget."""
    from scaleflow.branches import accounting
    from scaleflow.config import compose_study
    from scaleflow.sweep import decay_branches, plan_study

    study, overrides = _study_and_overrides(args, "decay_branches_cpu")
    cfg = compose_study(study, overrides)
    if dry_run:
        specs = plan_study(cfg, "decay_branches", from_dir)
        _print_plan(specs, cfg.study.throughput, f"{cfg.study.name}: trunks and branches (dry run, nothing launched)")
        acc = accounting(specs)
        console.print(f"branched plan: {acc.branched_flops:.3g} FLOPs; the same budgets as independent runs: "
                      f"{acc.independent_flops:.3g} FLOPs; ratio {acc.ratio:.3f}")
        return
    report = decay_branches(cfg, from_dir=from_dir, force=force, console=console)
    if report.recreated:
        console.print(f"{report.recreated} missing fork checkpoint(s): each re-created from an earlier trunk "
                      "checkpoint by a job of its own, before the branches that fork there")
    _print_outcome(report)
    acc = report.accounting
    console.print(f"branched plan: {acc.branched_flops:.3g} FLOPs vs {acc.independent_flops:.3g} independent (ratio {acc.ratio:.3f})")


@app.command()
def collect(study_dir: Annotated[Path, typer.Argument(help="a study directory")]) -> None:
    """Gather finished runs into runs.parquet / runs.csv (and curves.parquet) in the study directory."""
    from scaleflow.collect import collect as collect_runs, write_collected

    collected = collect_runs(study_dir)
    paths = write_collected(study_dir, collected)
    for warning in collected.warnings:
        err_console.print(f"warning: {warning}")
    console.print(f"{len(collected.runs)} runs collected into {', '.join(str(p) for p in paths)}")


def _register_commands() -> None:
    """Commands that live in their own modules (they import nothing heavy at load time)."""
    from scaleflow.cli_data import register as register_data
    from scaleflow.cli_design import register as register_design
    from scaleflow.cli_fit import register as register_fit
    from scaleflow.cli_mup import register as register_mup

    register_fit(app)
    register_mup(app, console)
    register_data(app, console)
    register_design(app, console)


_register_commands()


def main() -> None:
    """Entry point: one-line errors, exit 2 for bad input, 130 for Ctrl-C."""
    # The interpreter's last collections walk every object torch and its compiler stack made
    # (~0.35 s of a CPU training run's exit here); frozen, they are skipped. Registered first,
    # it runs after any exit handler a tracker registers later.
    atexit.register(gc.freeze)
    try:
        app()
    except ScaleflowError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(EXIT_CTRL_C)
    except Exception as exc:  # a bug: still one line unless the user asks for the traceback
        if os.environ.get("SCALEFLOW_DEBUG"):
            raise
        err_console.print(
            f"internal error: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''} (SCALEFLOW_DEBUG=1 shows the traceback)",
            markup=False, highlight=False, soft_wrap=True,
        )
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()
