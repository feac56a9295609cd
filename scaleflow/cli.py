"""The `scaleflow` command line: thin commands that parse, call one library function, render.

Heavy imports (torch, pandas) happen inside the commands so that `--help` is instant and
`scaleflow fit` never loads torch. A ScaleflowError becomes one line on stderr and exit 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from scaleflow.errors import ScaleflowError

app = typer.Typer(
    help="Plan, run and fit language-model scaling-law studies.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
sweep_app = typer.Typer(help="Run a study: an IsoFLOP grid or an LR x batch-size grid.", no_args_is_help=True)
app.add_typer(sweep_app, name="sweep")
console = Console()
err_console = Console(stderr=True)

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
    from scaleflow.worker import train_interruptible

    cfg = compose_run(overrides or [])
    run_dir = Path(cfg.run_dir or f"runs/train/{run_id(cfg)}")
    console.print(f"training run [bold]{run_id(cfg)}[/] into {run_dir}")
    summary = train_interruptible(cfg, run_dir)
    if summary["status"] == "interrupted":
        err_console.print(f"interrupted at step {summary['step']}; resume with resume=true run_dir={run_dir}")
        raise typer.Exit(130)
    rows = [(k, f"{v:.4g}" if isinstance(v, float) else v) for k, v in summary.items()]
    console.print(_table(f"run {summary['run_id']}: {summary['status']}", rows, ["field", "value"]))
    if summary["status"] != "done":
        raise typer.Exit(1)


def main() -> None:
    """Entry point: one-line errors, exit 2 for bad input, 130 for Ctrl-C."""
    try:
        app()
    except ScaleflowError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # a bug: still one line unless the user asks for the traceback
        if os.environ.get("SCALEFLOW_DEBUG"):
            raise
        err_console.print(
            f"internal error: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''} (SCALEFLOW_DEBUG=1 shows the traceback)",
            markup=False, highlight=False, soft_wrap=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
