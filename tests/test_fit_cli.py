"""`scaleflow fit` and `scaleflow predict` (scaleflow.cli_fit) through typer and a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from conftest import CHINCHILLA_CSV, TRUE_LAW_PARAMS
from scaleflow.cli_fit import register
from scaleflow.errors import FitError
from scaleflow.fit.isoflop import simulate
from scaleflow.fit.laws import ChinchillaLaw

ROOT = Path(__file__).resolve().parents[1]
CHINCHILLA_ARGS = [str(CHINCHILLA_CSV), "--col", "params=Model Size", "--col", "flops=Training FLOP", "--where", "loss < 3.43"]
# The real entry point (scaleflow.cli.main maps ScaleflowError to one line and exit 2), with the
# fit commands registered whether or not scaleflow.cli already does it.
# At exit the process fails with code 3 if anything imported torch.
MAIN = ("import atexit, os, sys\n"
        "atexit.register(lambda: os._exit(3) if 'torch' in sys.modules else None)\n"
        "import scaleflow.cli as c\nfrom scaleflow.cli_fit import register\n"
        "if not any((x.name or getattr(x.callback, '__name__', '')) == 'fit' for x in c.app.registered_commands):\n"
        "    register(c.app)\nc.main()")


def app() -> typer.Typer:
    a = typer.Typer()
    register(a)
    return a


def scaleflow(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", MAIN, *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def study_csv(tmp_path_factory) -> Path:
    true = ChinchillaLaw(**TRUE_LAW_PARAMS)
    path = tmp_path_factory.mktemp("cli") / "runs.csv"
    simulate(true, np.geomspace(1e18, 1e20, 4), sizes_per_budget=7, noise=0.002).to_csv(path, index=False)
    return path


def test_json_is_one_object_with_the_contract_keys():
    r = CliRunner().invoke(app(), ["fit", *CHINCHILLA_ARGS, "--bootstrap", "20", "--predict", "1e21,1e22", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)  # exactly one JSON object, nothing else on stdout
    assert d["n_points"] == 240
    assert set(d["approach3"]) >= {"E", "A", "B", "alpha", "beta", "a", "b", "huber_loss", "ci"}
    assert all(len(v) == 2 for v in d["approach3"]["ci"].values())
    assert {o["flops"] for o in d["optimal"]} == {1e21, 1e22}


def test_out_dir_and_predict(tmp_path, study_csv):
    out = tmp_path / "fit"
    r = CliRunner().invoke(app(), ["fit", str(study_csv), "--bootstrap", "30", "--out", str(out), "--holdout-largest"])
    assert r.exit_code == 0, r.output
    assert "Approach 3" in r.stdout and "Backtest" in r.stdout
    for name in ("fit.json", "report.md", "report.html", "isoflop.png", "isoflop.svg", "optimal.png",
                 "parametric.svg", "residuals.png"):
        assert (out / name).stat().st_size > 0, name
    r = CliRunner().invoke(app(), ["predict", str(out / "fit.json"), "--flops", "1e22", "--loss", "2.2", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert {"optimal", "compute_for_loss"} <= set(d)
    r = CliRunner().invoke(app(), ["predict", str(out / "fit.json"), "--loss", "2.3", "--tokens", "1e12"])
    assert r.exit_code == 0 and "Smallest model" in r.stdout


@pytest.mark.parametrize("args", [["--predict", "1e21,abc"], ["--col", "params"], ["--huber-delta", "0"],
                                  ["--resample", "seeds"], ["--resample", "trunks"]])  # the table names no trunks
def test_bad_options_raise_fit_error(study_csv, args):
    r = CliRunner().invoke(app(), ["fit", str(study_csv), "--bootstrap", "0", *args])
    assert isinstance(r.exception, FitError), r.output


def test_bad_input_exits_2_with_one_line_and_no_torch(tmp_path, study_csv):
    bad = tmp_path / "bad.csv"
    bad.write_text("params,tokens\n1e8,1e9\n2e8,2e9\n")
    p = scaleflow("fit", str(bad), "--json")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().count("\n") == 0 and "loss" in p.stderr and "Traceback" not in p.stderr
    p = scaleflow("predict", str(tmp_path / "missing.json"), "--flops", "1e21")
    assert p.returncode == 2 and p.stderr.startswith("error:")
    p = scaleflow("fit", str(study_csv), "--law", "approach3", "--bootstrap", "0", "--json")
    assert p.returncode == 0, p.stderr  # the process asserts at exit that torch was never imported
    assert json.loads(p.stdout)["approach3"]["status"] == "ok"


def test_help_does_not_import_heavy_modules():
    code = ("import sys, scaleflow.cli_fit\n"
            "assert not {'torch', 'pandas', 'scipy', 'matplotlib'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
