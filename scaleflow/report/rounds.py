"""The report's part for the rounds of `scaleflow next` (the study's next_log.jsonl): the 95%
interval at the target budget against the compute spent, expected and measured; their table.

Shown when the fitted source is a study directory with that log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scaleflow.files import read_jsonl
from scaleflow.fit.types import FitRun
from scaleflow.report.format import Section, save_figure

RESULTS = ()
#: The log `scaleflow next` appends one round to (in the study directory).
NEXT_LOG = "next_log.jsonl"


def read_rounds(study_dir: str | Path | None) -> list[dict[str, Any]]:
    """The rounds logged in a study directory (none without a directory or a log)."""
    return list(read_jsonl(Path(study_dir) / NEXT_LOG)) if study_dir else []


def plot(run: FitRun, out: Path, plt) -> list[str]:
    rounds = read_rounds(run.options.study_dir)
    if not rounds:
        return []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    spent = [r.get("compute_spent", 0.0) - r["compute"] for r in rounds]  # compute before each round's runs
    lo, hi = [r["interval"][0] for r in rounds], [r["interval"][1] for r in rounds]
    ax.fill_between(spent, lo, hi, color="C0", alpha=0.25, step="post", label="95% interval (measured)")
    with_runs = [r for r in rounds if r["runs"]]
    for r in with_runs:
        ax.vlines(r["compute_spent"], *r["expected_interval"], color="C1", lw=3, alpha=0.7)
    ax.plot([], [], color="C1", lw=3, label="expected after the round")
    q = rounds[-1]["quantity"]
    ax.set(yscale="log" if q != "a" else "linear", xlabel="extra compute spent (FLOPs)",
           ylabel=f"{q} at {rounds[-1]['target']:.3g} FLOPs", title="scaleflow next: rounds")
    ax.legend()
    return [save_figure(fig, out, "next_rounds")]


def sections(d: dict[str, Any]) -> list[Section]:
    rounds = d.get("next_rounds") or []
    if not rounds:
        return []
    q = rounds[-1]["quantity"]
    rows = [[r["round"], len(r["runs"]), r["compute"], r.get("compute_spent", 0.0), r["n_finished"],
             f"[{r['interval'][0]:.4g}, {r['interval'][1]:.4g}]", r["width"],
             f"[{r['expected_interval'][0]:.4g}, {r['expected_interval'][1]:.4g}]" if r["runs"] else "-"]
            for r in rounds]
    return [Section(f"Rounds of scaleflow next: {q} at {rounds[-1]['target']:.3g} FLOPs",
                    ["round", "runs", "FLOPs", "spent", "runs fitted", "95% interval", "width", "expected after"],
                    rows, "width: hi/lo (hi - lo for a); the last row is the interval after the last round")]
