"""The report of a fit: `write(run, out_dir)` -> fit.json, PNG + SVG plots, report.md and a
self-contained report.html (images embedded as base64).

Each law's plots and tables live in a module of this package, listed in PARTS in report order;
a result no part draws (a law added with `register_law`) still gets a table of its fields.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

from scaleflow.files import write_text
from scaleflow.fit.types import FitRun
from scaleflow.report import (chinchilla, critical_batch, downstream, hparams, loss_curve, multiplier, rollout,
                              rounds, transfer)
from scaleflow.report.format import Section, fmt, fmt_ci, md_table

#: Every part of the report, in report order: each has RESULTS (the result names it draws),
#: plot(run, out, plt) -> PNG names and sections(fit JSON dict) -> [Section].
PARTS = (chinchilla, hparams, transfer, critical_batch, multiplier, rollout, downstream, loss_curve, rounds)
_DRAWN = {name for part in PARTS for name in part.RESULTS}
_KNOWN_ORDER = tuple(name for part in PARTS for name in part.RESULTS)


def result_names(d: dict[str, Any]) -> list[str]:
    """The names of a fit JSON's results (a fit.json written before `results` was listed: the
    known ones it holds)."""
    return list(d.get("results") or [name for name in _KNOWN_ORDER if name in d])


def plot_all(run: FitRun, out: Path) -> list[str]:
    """Every plot the results support; returns the PNG file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return [name for part in PARTS for name in part.plot(run, out, plt)]


def generic_section(name: str, result: dict[str, Any]) -> Section:
    """A table of a result's numbers and words, for a law no part of the report draws."""
    ci = result.get("ci") or {}
    scalar = lambda v: isinstance(v, (int, float, str)) and not isinstance(v, bool)
    rows = [[key, value, fmt_ci(ci.get(key))] for key, value in result.items()
            if key not in ("ci", "status", "message") and scalar(value)]
    return Section(f"{name}", ["field", "value", "95% CI"], rows, f"status: {result.get('status', '-')}")


def sections(d: dict[str, Any]) -> list[Section]:
    """The tables of a fit's JSON dict, in report order."""
    out = [section for part in PARTS for section in part.sections(d)]
    out += [generic_section(name, d[name]) for name in result_names(d) if name not in _DRAWN]
    return out + chinchilla.prediction_sections(d)


def disagreement(d: dict[str, Any]) -> str | None:
    """The warning that the approaches disagree (shown before anything else), or None."""
    a = d.get("agreement")
    return None if not a or a["agree"] else a["message"]


def warnings_of(d: dict[str, Any]) -> list[str]:
    """Notes, skipped approaches and doubtful statuses of a fit's JSON dict, one line each."""
    lines = [f"note: {n}" for n in d["notes"]] + [f"skipped {k}: {v}" for k, v in d.get("skipped", {}).items()]
    for name in result_names(d):
        status, message = d[name].get("status", "ok"), d[name].get("message", "")
        if status != "ok" or message:
            lines.append(f"{name} {status}: {message}")
    return lines


def flops_line(d: dict[str, Any]) -> str:
    """Which FLOP count C every approach and prediction uses."""
    f = d.get("flops") or {}
    return (f"C = {f.get('definition', '6 N D')}; approach 3 converts with C = "
            f"{f.get('flops_per_param_token', 6.0):.4g} N D")


def markdown(d: dict[str, Any], images: list[str], command: str = "") -> str:
    """report.md from the fit's JSON dict and the plot file names: the answer (per requested budget,
    N_opt, D_opt and loss, and whether the approaches agree) first, then the tables and plots."""
    s = [f"# scaleflow fit: {d['source']}", ""] + chinchilla.answer(d)  # the answer first, before any table
    if command:
        s += [f"Command: `{command}`", ""]
    if disagreement(d):
        s += ["## Warning: the approaches disagree", "", disagreement(d), ""]
    drawn = " (whole trunks resampled)" if d.get("resample") == "trunks" else ""
    s += [f"Law `{d['law']}` on {d['n_points']} runs; {d['n_bootstrap']} bootstrap replicates{drawn}; "
          "intervals are 95% percentile bootstrap intervals.", f"FLOPs: {flops_line(d)}.", ""]
    s += [f"- {w}" for w in warnings_of(d)]
    for sec in sections(d):
        s += ["", f"## {sec.title}", ""] + ([sec.text, ""] if sec.text else []) + [md_table(sec.header, sec.rows)]
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
    if next_rounds := rounds.read_rounds(run.options.study_dir):
        d["next_rounds"] = next_rounds
    write_text(out / "fit.json", json.dumps(d, indent=1) + "\n")
    images = plot_all(run, out)
    md_text = markdown(d, images, command)
    write_text(out / "report.md", md_text)
    write_text(out / "report.html", html(md_text, out))
    return [out / "fit.json", out / "report.md", out / "report.html"] + [out / i for i in images] + \
        [out / i.replace(".png", ".svg") for i in images]


__all__ = ["PARTS", "Section", "disagreement", "flops_line", "fmt", "fmt_ci", "html", "markdown",
           "plot_all", "sections", "warnings_of", "write"]
