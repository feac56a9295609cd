"""`--law loss-curve` (scaleflow.fit.loss_curve) on synthetic studies: run directories whose
histories come from the law itself with known parameters, under schedules built with
scaleflow's own lr_factor. No training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, write_run_config
from scaleflow.config.compose import load_run_config
from scaleflow.errors import FitError
from scaleflow.fit.api import FitOptions, fit
from scaleflow.fit.loss_curve import areas, law, lr_sequence, parse_schedule

TRUE = (2.0, 0.9, 0.35, 0.8)  # L0, A, alpha, C (A, C in units of the peak LR 1e-2's areas)
BASE = ["model.n_layer=1", "model.d_model=16", "model.n_head=2", "model.seq_len=32", "optim.lr=0.01",
        "schedule.warmup_steps=20", "schedule.final_lr_fraction=0.0"]
RUNS = {"c000000001": ["schedule.name=constant", "trainer.steps=600"],
        "a000000001": ["schedule.name=wsd", "trainer.steps=500", "schedule.decay_fraction=0.2"],
        "b000000001": ["schedule.name=wsd", "trainer.steps=300", "schedule.decay_fraction=0.2"],
        "e000000001": ["schedule.name=cosine", "trainer.steps=500"]}


def make_study(root: Path, runs=RUNS, keys=("train_loss", "val_loss")) -> Path:
    for run_id, overrides in runs.items():
        d = root / run_id
        write_run_config(d, BASE + overrides)
        cfg = load_run_config(d / "config.yaml")
        lrs, warmup = lr_sequence(cfg)
        S1, S2 = areas(lrs, warmup)
        lines = []
        for step in range(10, len(lrs) + 1, 10):
            line = {"step": step, "tokens": step * 256}
            if "train_loss" in keys:  # the loss of update `step`, measured after step - 1 updates
                line["train_loss"] = float(law(TRUE, S1[step - 1], S2[step - 1])) if step > 1 else 5.0
            if "val_loss" in keys:
                line["val_loss"] = float(law(TRUE, S1[step], S2[step]))
            lines.append(json.dumps(line))
        (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        final = json.loads(lines[-1]).get("val_loss", 3.0)
        (d / "summary.json").write_text(json.dumps({
            "status": "done", "params": 5000, "tokens": len(lrs) * 256, "flops": 6 * 5000 * len(lrs) * 256,
            "steps": len(lrs), "val_loss": final, "schedule": cfg.schedule.name}))
    return root


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return make_study(tmp_path_factory.mktemp("lc"))


def loss_curve(source: Path, **kw):
    return fit(str(source), FitOptions(law="loss-curve", study_dir=str(source), **kw)).results["loss_curve"]


@pytest.mark.parametrize("key", ["train_loss", "val_loss"])
def test_parameters_recovered_and_held_out_cosine_predicted(study, key):
    res = loss_curve(study, holdout_runs=("e000000001", "b000000001"), curve_loss=key)
    np.testing.assert_allclose(res.theta, TRUE, rtol=0.02)  # noiseless: within 2% each
    rows = {r["run_id"]: r for r in res.to_dict()["holdout_runs"]}
    assert abs(rows["e000000001"]["rel_error"]) < 0.002  # the held-out cosine run's final loss, within 0.2%
    assert abs(rows["b000000001"]["rel_error"]) < 0.002


def test_a_predicted_schedule_equals_the_same_schedule_held_out(study):
    res = loss_curve(study, holdout_runs=("e000000001",), predict_schedules=("cosine:steps=500",))
    d = res.to_dict()
    assert d["predictions"][0]["predicted_final"] == pytest.approx(
        float(law(res.theta, *(a[-1] for a in areas(*lr_sequence(load_run_config(study / "e000000001/config.yaml")))))))
    assert d["predictions"][0]["steps"] == 500


def test_annealing_area_of_a_wsd_decay_by_hand():
    lrs = np.array([0.5, 1.0, 1.0, 0.5, 0.0])  # warmup 2 steps; decreases 0.5 at step 3 and step 4
    S1, S2 = areas(lrs, warmup=2, lam=0.5)
    np.testing.assert_allclose(S1, [0, 0.5, 1.5, 2.5, 3.0, 3.0])
    np.testing.assert_allclose(S2, [0, 0, 0, 0, 0.5, 0.5 + 0.75])  # m_3 = 0.5, m_4 = 0.5 * 0.5 + 0.5


@pytest.mark.parametrize("spec", ["wsd", "wsd:steps=x", "warm:steps=10", "wsd:steps=100:decay_shape=square",
                                  "wsd:steps=100:foo=1"])
def test_bad_schedule_specs(study, spec):
    with pytest.raises(FitError, match="predict-schedule"):
        parse_schedule(spec, load_run_config(study / "c000000001/config.yaml"))


def test_one_run_or_histories_without_the_loss_are_errors(tmp_path):
    one = make_study(tmp_path / "one", {k: v for k, v in RUNS.items() if k == "a000000001"})
    with pytest.raises(FitError, match="at least 2 runs"):
        loss_curve(one)
    none = make_study(tmp_path / "none", keys=("val_loss",))
    with pytest.raises(FitError, match="no train_loss"):
        loss_curve(none, curve_loss="train_loss")


def test_cli_errors_are_one_line_exit_2(study, tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("params,tokens,loss\n1e6,1e8,3.0\n2e6,2e8,2.8\n")
    r = run_cli("fit", str(table), "--law", "loss-curve")
    assert r.returncode == 2 and "study directory" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("fit", str(study), "--law", "loss-curve", "--holdout", "f000000009")
    assert r.returncode == 2 and "--holdout" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def drifting(root: Path, seed: int, sigma: float = 0.01, rho: float = 0.9) -> Path:
    """make_study with each run's train_loss times exp(AR(1) noise): sd sigma, correlation rho
    from one logged point to the next (a drift over ~10 points, as data order gives)."""
    make_study(root)
    rng = np.random.default_rng(seed)
    for run in sorted(root.iterdir()):
        lines, noise = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()], 0.0
        for line in lines:
            noise = rho * noise + np.sqrt(1 - rho**2) * rng.normal(0.0, sigma)
            line["train_loss"] *= float(np.exp(noise))
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return root


def test_intervals_cover_the_true_law_when_the_noise_drifts(tmp_path):
    covered = []  # per study and parameter: whether the 95% interval holds the true value
    for seed in range(6):
        study_dir = drifting(tmp_path / str(seed), seed)
        d = loss_curve(study_dir, holdout_runs=("e000000001",), n_bootstrap=60, huber_delta=0.01).to_dict()
        covered += [d["ci"][k][0] <= true <= d["ci"][k][1] for k, true in zip(("L0", "A", "alpha", "C"), TRUE)]
        lo, hi = d["holdout_runs"][0]["predicted_final_ci"]
        assert lo <= d["holdout_runs"][0]["predicted_final"] <= hi
    # Here 19 of 24; resampling points one by one (BLOCKS = every point), 11: too narrow.
    assert sum(covered) >= 0.7 * len(covered)


def test_noiseless_intervals_are_tight_and_in_the_report(study, tmp_path):
    res = loss_curve(study, holdout_runs=("e000000001",), predict_schedules=("cosine:steps=800",), n_bootstrap=30)
    d = res.to_dict()
    for k, true in zip(("L0", "A", "alpha", "C"), TRUE):
        lo, hi = d["ci"][k]
        assert lo <= true * 1.02 and hi >= true * 0.98 and hi - lo < 0.05 * true
    assert d["predictions"][0]["predicted_final_ci"][0] <= d["predictions"][0]["predicted_final"]
    r = run_cli("fit", str(study), "--law", "loss-curve", "--bootstrap", "20", "--out", str(tmp_path / "fit"))
    assert r.returncode == 0, r.stderr
    assert "95% CI" in (tmp_path / "fit" / "report.md").read_text()
