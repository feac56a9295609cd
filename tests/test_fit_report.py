"""Plots and report (scaleflow.report) on every kind of result."""

import numpy as np
import pandas as pd

from conftest import TRUE_LAW_PARAMS
from scaleflow.fit.api import FitOptions, fit
from scaleflow.fit.isoflop import simulate
from scaleflow.fit.laws import ChinchillaLaw
from scaleflow.report import markdown, sections, write

TRUE = ChinchillaLaw(**TRUE_LAW_PARAMS)


def test_chinchilla_report(tmp_path):
    t = simulate(TRUE, np.geomspace(1e18, 1e20, 4), sizes_per_budget=7, noise=0.002)
    t = pd.concat([t, t.assign(tokens=t["tokens"] * 2, flops=t["flops"] * 2, budget=np.nan,
                               loss=TRUE.predict(t["params"], t["tokens"] * 2))], ignore_index=True)
    run = fit(t, FitOptions(n_bootstrap=20, predict=(1e21,)))
    paths = write(run, tmp_path, "scaleflow fit runs.csv")
    names = {p.name for p in paths}
    assert {"fit.json", "report.md", "report.html", "isoflop.png", "isoflop.svg", "envelope.png", "optimal.svg",
            "parametric.png", "residuals.svg"} <= names
    md = (tmp_path / "report.md").read_text()
    assert "`scaleflow fit runs.csv`" in md and "| E |" in md and "![optimal](optimal.png)" in md
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == md.count("![") and 'src="isoflop.png"' not in html
    assert (tmp_path / "isoflop.svg").read_text().lstrip().startswith("<?xml")


def test_power_and_lr_bs_plots(tmp_path):
    x = np.geomspace(1e17, 1e21, 12)
    run = fit(pd.DataFrame({"flops": x, "loss": 1.9 + 40 * x**-0.07}), FitOptions(law="power", n_bootstrap=10))
    assert {p.name for p in write(run, tmp_path / "p")} >= {"power.png", "power.svg"}
    rows = [{"flops": C, "lr": lr, "batch_tokens": bs,
             "loss": 3 * (1 + 0.01 * np.log(lr / 1e-3) ** 2 + 0.01 * np.log(bs / 1e5) ** 2) * (C / 1e17) ** -0.05}
            for C in (1e17, 1e18, 1e19) for lr in (3e-4, 1e-3, 3e-3) for bs in (5e4, 1e5, 2e5)]
    run = fit(pd.DataFrame(rows), FitOptions(law="lr-bs", n_bootstrap=10))
    assert {p.name for p in write(run, tmp_path / "h")} >= {"lr_bs_maps.png", "lr_bs_laws.svg"}
    titles = [s.title for s in sections(run.to_dict())]
    assert "Learning rate and batch size" in titles
    assert "eta_opt" in markdown(run.to_dict(), [])
