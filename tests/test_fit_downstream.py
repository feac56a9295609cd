"""Downstream accuracy (scaleflow.fit.downstream, `--law downstream`): the two-step prediction on
synthetic studies of known laws. Design: 5 budgets 1e18..1e21 FLOPs on one fixed ladder of 9
sizes (2e7..6e9 parameters); main loss from the tests' Chinchilla law (0.3% noise), task loss
from a second one (0.5% noise), accuracy = the sigmoid of the observed task loss plus 0.01
absolute noise, so the runs span the sigmoid from chance to about 0.8."""

import numpy as np
import pytest

from conftest import TRUE_LAW_PARAMS
from scaleflow.errors import FitError
from scaleflow.fit.api import FitOptions, fit
from scaleflow.fit.downstream import fit_sigmoid
from scaleflow.fit.isoflop import simulate
from scaleflow.fit.laws import ChinchillaLaw
from test_fit_cli import scaleflow

MAIN = ChinchillaLaw(**TRUE_LAW_PARAMS)
TASK = ChinchillaLaw(E=1.9, A=400.0, B=1800.0, alpha=0.34, beta=0.36)
SIG = {"lo": 0.25, "hi": 0.9, "k": 8.0, "L0": 2.6}
AT = (5e9, 1e11)  # a model and token count beyond the data's largest budget (3e21 FLOPs vs 1e21)


def sigmoid(L):
    return SIG["lo"] + (SIG["hi"] - SIG["lo"]) / (1 + np.exp(SIG["k"] * (L - SIG["L0"])))


def study(seed: int):
    rng = np.random.default_rng(100 + seed)
    df = simulate(MAIN, np.geomspace(1e18, 1e21, 5), ladder=np.geomspace(2e7, 6e9, 9), noise=0.003, seed=seed)
    df["task_loss"] = TASK.predict(df["params"], df["tokens"]) * np.exp(0.005 * rng.standard_normal(len(df)))
    df["accuracy"] = np.clip(sigmoid(df["task_loss"]) + 0.01 * rng.standard_normal(len(df)), 0, 1)
    return df


@pytest.fixture(scope="module")
def fits() -> list[dict]:
    """Seeds 0 and 1, lo fitted; 25 bootstrap replicates; predictions at 1e22 FLOPs and at AT."""
    return [fit(study(seed), FitOptions(law="downstream", n_bootstrap=25, seed=seed, predict=(1e22,), at=(AT,)))
            .to_dict()["downstream"] for seed in (0, 1)]


def test_sigmoid_parameters_are_recovered(fits):
    for d in fits:
        s = d["sigmoid"]
        assert s["lo"] == pytest.approx(0.25, abs=0.01) and s["hi"] == pytest.approx(0.9, abs=0.06)
        assert s["k"] == pytest.approx(8.0, rel=0.12) and s["L0"] == pytest.approx(2.6, abs=0.04)
        assert s["rmse"] == pytest.approx(0.01, rel=0.3)  # the accuracy noise, no more
        assert sum(s["ci"][p][0] <= v <= s["ci"][p][1] for p, v in SIG.items()) >= 3
        assert d["task_loss_law"]["alpha"] == pytest.approx(0.34, abs=0.03)
        assert d["status"] == "ok"


def test_two_step_prediction_intervals_cover_the_truth(fits):
    for d in fits:
        budget, given = d["predictions"]
        assert budget["flops"] == 1e22 and budget["how"].startswith("compute-optimal")
        assert given["params"] == AT[0] and given["tokens"] == AT[1]
        for p in (budget, given):
            L_true = float(TASK.predict(p["params"], p["tokens"]))
            assert p["task_loss_ci"][0] <= L_true <= p["task_loss_ci"][1]
            assert p["accuracy_ci"][0] <= sigmoid(L_true) <= p["accuracy_ci"][1]
            assert p["accuracy"] == pytest.approx(sigmoid(L_true), abs=0.03)


def test_chance_fixes_the_floor():
    df = study(2)
    L, acc = df["task_loss"].to_numpy(), df["accuracy"].to_numpy()
    lo, hi, k, L0 = fit_sigmoid(L, acc, 0.25)
    assert lo == 0.25 and hi == pytest.approx(0.9, abs=0.06) and k == pytest.approx(8.0, rel=0.12)
    free = fit_sigmoid(L, acc, None)
    assert free[0] != 0.25 and free[0] == pytest.approx(0.25, abs=0.01)


def test_missing_columns_and_bad_accuracy_are_one_line_errors():
    df = study(0)
    with pytest.raises(FitError, match="needs column\\(s\\) task_loss, accuracy; the table has"):
        fit(df.drop(columns=["task_loss", "accuracy"]), FitOptions(law="downstream", n_bootstrap=0))
    with pytest.raises(FitError, match="fractions in \\[0, 1\\]"):
        fit(df.assign(accuracy=100 * df["accuracy"]), FitOptions(law="downstream", n_bootstrap=0))


def test_missing_task_columns_exit_2_through_the_cli(tmp_path):
    path = tmp_path / "runs.csv"
    study(0).drop(columns=["accuracy"]).to_csv(path, index=False)
    p = scaleflow("fit", str(path), "--law", "downstream", "--col", "task_loss=task_loss", "--json")
    assert p.returncode == 2 and p.stdout == "" and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and "needs column(s) accuracy" in p.stderr
