"""What every part of the report shares: number formats, Markdown tables, saving a figure,
and the Section (one table: Markdown here, a rich table in the CLI)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Section:
    """One table of the report, rendered as Markdown here and as a rich table by the CLI."""

    title: str
    header: list[str]
    rows: list[list[Any]]
    text: str = ""


def fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)


def fmt_ci(pair: Any) -> str:
    return "-" if not pair or pair[0] is None else f"[{fmt(pair[0])}, {fmt(pair[1])}]"


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) if not isinstance(v, str) else v for v in r) + " |" for r in rows]
    return "\n".join(lines)


def save_figure(fig, out: Path, name: str) -> str:
    for ext in ("png", "svg"):
        fig.savefig(out / f"{name}.{ext}", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f"{name}.png"
