"""The rollout backtest (scaleflow.fit.rollout, `--law rollout`) on synthetic IsoFLOP studies of
a known law: 5 budgets 1e18..1e20 FLOPs on one fixed ladder of 9 sizes (2e7..2e9 parameters),
so the optimum moves from near the ladder's low end to near its high end."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import TRUE_LAW_PARAMS
from scaleflow.errors import FitError
from scaleflow.fit.api import FitOptions, fit
from scaleflow.fit.isoflop import simulate
from scaleflow.fit.laws import ChinchillaLaw
from scaleflow.fit.prepare import prepare
from scaleflow.fit.registry import APPROACHES
from scaleflow.fit.rollout import backtest_step, measured_optima
from test_fit_cli import app, scaleflow

TRUE = ChinchillaLaw(**TRUE_LAW_PARAMS)
BUDGETS = np.geomspace(1e18, 1e20, 5)
LADDER = np.geomspace(2e7, 2e9, 9)


def study(noise: float, seed: int):
    return simulate(TRUE, BUDGETS, ladder=LADDER, noise=noise, seed=seed)


def approach3_steps(noise: float, seed: int, n_bootstrap: int = 16) -> list[dict]:
    """Steps 3 and 4 of the rollout with approach 3 alone (the rollout's machinery, less time)."""
    o = FitOptions(n_bootstrap=n_bootstrap, seed=seed)
    data = prepare(study(noise, seed), o)
    measured = measured_optima(data.table, o.budget_rtol)
    only3 = lambda d, opts: {"approach3": APPROACHES["approach3"](d, opts)}  # noqa: E731
    return [backtest_step(data, o, k, only3, measured)["predicted"][0] for k in (3, 4)]


@pytest.fixture(scope="module")
def noisy() -> dict[float, list[dict]]:
    """Approach 3's predictions at steps 3, 4 for seeds 0-2 at 0.3% and 1.2% loss noise."""
    return {noise: [p for seed in range(3) for p in approach3_steps(noise, seed)] for noise in (0.003, 0.012)}


def test_rollout_through_the_cli_and_its_last_step_is_the_holdout(tmp_path):
    path = tmp_path / "runs.csv"
    study(0.003, 1).to_csv(path, index=False)
    r = CliRunner().invoke(app(), ["fit", str(path), "--law", "rollout", "--bootstrap", "8", "--seed", "1",
                                   "--holdout-largest", "--json", "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    ro = d["rollout"]
    assert [s["step"] for s in ro["steps"]] == [2, 3, 4] and len(ro["budgets"]) == 5
    assert {"approach3", "approach2"} <= {p["approach"] for p in ro["steps"][-1]["predicted"]}
    assert set(ro["summary"]) >= {"approach3", "approach2"}
    # --holdout-largest fits the `chinchilla` law's approaches without the largest budget, by its own
    # path through the registry: the same numbers as the rollout's last step, intervals included
    hold = d["holdout"]
    assert hold["flops"] == pytest.approx(1e20) and hold["measured"]["how"].startswith("minimum")
    assert hold == ro["steps"][-1]
    assert all(p["params_pi"][0] < p["params"] < p["params_pi"][1] for p in hold["predicted"])
    assert (tmp_path / "out" / "rollout.png").stat().st_size > 0
    assert "Rollout backtest" in (tmp_path / "out" / "report.md").read_text()


def test_clean_predictions_are_the_law():
    for p in approach3_steps(0.0, 0, n_bootstrap=0):
        # noiseless: the next budget's optimum as the true law puts it (its IsoFLOP minimum)
        true_n, true_loss = (float(f(p["flops"])) for f in (TRUE.n_opt, TRUE.loss_opt))
        assert abs(p["params_error"]) < 1e-3 and abs(p["loss_error"]) < 1e-4
        assert p["params"] == pytest.approx(true_n, rel=1e-3) and p["loss"] == pytest.approx(true_loss, rel=1e-4)


def test_noisy_predictions_are_close_and_inside_their_prediction_intervals(noisy):
    rows = noisy[0.003]
    # 0.3% loss noise: N_opt of the next budget within 10%, its loss within 1%
    assert max(abs(p["params_error"]) for p in rows) < 0.10
    assert max(abs(p["loss_error"]) for p in rows) < 0.01
    inside = [p[f"{q}_inside"] for p in rows for q in ("params", "loss")]
    assert sum(inside) >= 0.75 * len(inside), inside  # nominal 95%: at least 9 of 12


def test_prediction_intervals_widen_with_noise(noisy):
    def width(noise, q):
        return np.median([np.log(p[f"{q}_pi"][1] / p[f"{q}_pi"][0]) for p in noisy[noise]])

    for q in ("params", "loss"):
        assert width(0.012, q) > 2.0 * width(0.003, q), q
        # the observation noise is in: wider than the bootstrap's confidence interval alone
        assert width(0.012, q) > np.median([np.log(p[f"{q}_ci"][1] / p[f"{q}_ci"][0]) for p in noisy[0.012]])


def test_too_few_budgets_is_a_one_line_error():
    two = simulate(TRUE, BUDGETS[:2], ladder=LADDER, noise=0.003)
    with pytest.raises(FitError, match="^a rollout needs at least 3 budgets, got 2$"):
        fit(two, FitOptions(law="rollout", n_bootstrap=0))


def test_one_budget_exits_2_through_the_cli(tmp_path):
    path = tmp_path / "one.csv"
    simulate(TRUE, BUDGETS[:1], ladder=LADDER).to_csv(path, index=False)
    p = scaleflow("fit", str(path), "--law", "rollout", "--json")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip() == "error: a rollout needs at least 3 budgets, got 1"
