"""`scaleflow coord-check`: the muP coordinate check (see scaleflow/coord_check.py).

`register(app)` adds the command to the main typer app (scaleflow/cli.py calls it). Heavy
imports (torch, matplotlib) happen inside the command so that `--help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

_Overrides = Annotated[Optional[list[str]], typer.Argument(
    help="Hydra overrides, e.g. model.n_layer=2 model/mup=cerebras (model.d_model is set per width)",
    show_default=False)]


def register(app: typer.Typer, console: Console) -> None:
    """Add the `coord-check` command to `app`, printing to `console` (the CLI's)."""

    @app.command("coord-check")
    def coord_check_cmd(
        overrides: _Overrides = None,
        widths: Annotated[str, typer.Option("--widths", help="comma-separated d_model values")] = "32,64,128,256",
        steps: Annotated[int, typer.Option("--steps", help="AdamW steps on the fixed batch")] = 5,
        lr: Annotated[Optional[float], typer.Option(
            "--lr", help="constant learning rate; default: the config's optim.lr (3e-3 in scaleflow/conf/optim/adamw.yaml)",
            show_default=False)] = None,
        base_width: Annotated[Optional[int], typer.Option(
            "--base-width", help="muP base width d_base; default: the narrowest width", show_default=False)] = None,
        seeds: Annotated[int, typer.Option("--seeds", help="average mean |x| over this many inits and fixed batches")] = 1,
        out: Annotated[Path, typer.Option("--out", help="directory for coord_check.csv and coord_check.png")] = Path("."),
    ) -> None:
        """Coordinate check: train each width a few steps on one fixed batch in SP and muP, record
        every module's mean |x| per step; write coord_check.csv and coord_check.png; print each
        module's growth from the narrowest to the widest width (flat under muP)."""
        from scaleflow.coord_check import GROWTH_FLAG, coord_check, parse_widths, plot, write_csv

        width_list = parse_widths(widths)
        result = coord_check(
            overrides or [], width_list, steps, lr=lr, base_width=base_width, seeds=seeds,
            progress=lambda p, w: console.print(f"  {p:>3} width {w}", highlight=False),
        )
        csv_path = write_csv(result, out / "coord_check.csv")
        png_path = plot(result, out / "coord_check.png")
        _print_growth(console, result, GROWTH_FLAG)
        console.print(f"wrote {csv_path} and {png_path}")


def _print_growth(console: Console, result, flag: float) -> None:
    narrow, wide = result.widths[0], result.widths[-1]
    growth = {(g["parametrization"], g["module"]): g for g in result.growth()}
    console.print(f"mean |x| growth from width {narrow} to {wide} at step {result.steps} (lr {result.lr:g}, "
                  f"muP base width {result.base_width}; slope: of log mean |x| against log width); "
                  f"flagged: grows > {flag:g}x or shrinks < 1/{flag:g}x", highlight=False)
    table = Table()
    table.add_column("module", justify="left")
    for p in result.parametrizations:
        name = "muP" if p == "mup" else "SP"
        table.add_column(f"{name} growth", justify="right")
        table.add_column(f"{name} slope", justify="right")
    for module in result.modules():
        cells = [module]
        for p in result.parametrizations:
            g = growth[p, module]["growth"]
            text = f"{g:.2f}x"
            if g > flag:
                text = f"[bold red]{text} grows[/]"
            elif g < 1 / flag:
                text = f"[yellow]{text} shrinks[/]"
            cells += [text, f"{growth[p, module]['slope']:+.2f}"]
        table.add_row(*cells)
    console.print(table)
    for p in result.parametrizations:
        hidden = [g for (q, _), g in growth.items() if q == p and g["hidden"]]
        top = max(hidden, key=lambda g: g["growth"])
        low = min(hidden, key=lambda g: g["growth"])
        grown = [m for (q, m), g in growth.items() if q == p and g["growth"] > flag]
        shrunk = [m for (q, m), g in growth.items() if q == p and g["growth"] < 1 / flag]
        verdict = ", ".join(x for x in (f"{len(grown)} module(s) grow > {flag:g}x" if grown else "",
                                        f"{len(shrunk)} shrink < 1/{flag:g}x" if shrunk else "") if x)
        console.print(f"{'muP' if p == 'mup' else 'SP'}: hidden modules from {low['growth']:.2f}x ({low['module']}) "
                      f"to {top['growth']:.2f}x ({top['module']}); {verdict or 'flat: every module within ' + format(flag, 'g') + 'x'}",
                      highlight=False)
