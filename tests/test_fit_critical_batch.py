"""Critical batch size (scaleflow.fit.critical_batch): the noise-scale law B* / L^(1/alpha_B) and
the steps-tokens trade-off S = S_min (1 + B_crit / B), on synthetic data with known answers."""

import json

import numpy as np
import pandas as pd
import pytest

from scaleflow.errors import FitError
from scaleflow.fit.critical_batch import CriticalBatchFitter
from scaleflow.fit.tradeoff import first_reach, fit_tradeoff

B_STAR, ALPHA_B = 2e6, 0.21  # B_crit(L) in tokens: about 1e4 at L = 3
SEQ = 64


def b_crit(L):
    return B_STAR / L ** (1 / ALPHA_B)


def s_min(L):
    """Fewest steps to reach loss L (at infinite batch): L = 2 + 3 (1 + s / 50)^-1/2."""
    return 50.0 * ((3.0 / (L - 2.0)) ** 2 - 1.0)


def sweep(batch_sizes=(16, 32, 64, 128, 256, 512), steps=12000, log_every=20, loss_noise=0.0, ns_noise=0.05,
          noise_scale=True, seed=0):
    """(runs table, history) of one model trained at each batch size (sequences of SEQ tokens),
    its loss curve following S(L) = S_min(L) (1 + B_crit(L) / B) exactly."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(2.3, 4.99, 4000)
    rows, hist = [], []
    for i, bs in enumerate(batch_sizes):
        B = bs * SEQ
        s_of_L = s_min(grid) * (1 + b_crit(grid) / B)  # decreasing in L
        step = np.arange(log_every, steps + 1, log_every)
        L = np.interp(step, s_of_L[::-1], grid[::-1])
        train = L * np.exp(loss_noise * rng.standard_normal(len(L)))
        rid = f"{i:010x}"
        rows.append({"run_id": rid, "params": 1e5, "d_model": 64, "n_layer": 2, "seq_len": SEQ, "batch_size": bs,
                     "batch_tokens": B, "loss": L[-1], "lr": 1e-3})
        for s, tl, l in zip(step, train, L):
            ns = b_crit(l) * np.exp(ns_noise * rng.standard_normal()) if noise_scale else None
            hist.append({"run_id": rid, "step": int(s), "tokens": int(s) * B, "train_loss": tl, "val_loss": None,
                         "grad_noise_scale": ns})
    return pd.DataFrame(rows), pd.DataFrame(hist)


def test_tradeoff_recovers_s_min_and_e_min():
    B = np.array([1e3, 4e3, 1.6e4, 6.4e4])
    S = 500 * (1 + 1e4 / B)
    a, b, samples = fit_tradeoff(B, S, n_bootstrap=50)
    assert a == pytest.approx(500) and b == pytest.approx(5e6) and samples.shape == (50, 2)
    E = S * B  # the hyperbola (S/S_min - 1)(E/E_min - 1) = 1
    assert np.allclose((S / a - 1) * (E / b - 1), 1.0)
    a2, b2, none = fit_tradeoff(B[:2], S[:2])  # 2 batch sizes: exact, no interval
    assert (a2, b2) == pytest.approx((500, 5e6)) and none.shape == (0, 2)


def test_first_reach_interpolates_and_censors():
    steps, loss = np.array([10.0, 20, 30, 40]), np.array([5.0, 4.0, 3.5, 3.6])
    assert first_reach(steps, loss, 3.75) == pytest.approx(25.0)
    assert np.isnan(first_reach(steps, loss, 3.0))  # never reached
    assert np.isnan(first_reach(steps, loss, 5.5))  # reached before the first log line


def test_noise_law_and_tradeoff_recovered_from_a_sweep():
    table, hist = sweep(loss_noise=0.002, log_every=50)
    res, skipped = CriticalBatchFitter(n_bootstrap=200).fit(table, hist)
    assert skipped == {}
    law = res.noise
    assert "blocks" in law.resampled and law.n_runs == 6
    for name, true in (("B_star", B_STAR), ("alpha_B", ALPHA_B)):
        lo, hi = law.ci[name]
        assert lo <= true <= hi
    assert law.alpha_B == pytest.approx(ALPHA_B, rel=0.03) and law.B_star == pytest.approx(B_STAR, rel=0.15)
    (t,) = res.tradeoffs
    assert t.loss_column == "train_loss" and len(t.targets) == 5
    for f in t.targets:
        assert len(f.batch) == 6
        assert f.B_crit == pytest.approx(b_crit(f.loss), rel=0.05), f.loss
        assert f.S_min == pytest.approx(s_min(f.loss), rel=0.05)
        assert f.b_simple == pytest.approx(b_crit(f.loss), rel=0.05)
    d = res.to_dict()
    json.dumps(d)
    assert {"B_crit", "B_crit_ci", "B_simple", "B_simple_ci", "ratio", "loss"} <= set(d["table"][0])
    assert 0.9 < d["table"][0]["ratio"] < 1.1


def test_exact_tradeoff_without_noise_scale_is_reported_alone():
    table, hist = sweep(batch_sizes=(32, 128, 512), noise_scale=False)
    res, skipped = CriticalBatchFitter(n_bootstrap=50, targets=(3.0, 3.3)).fit(table, hist)
    assert res.noise is None and "trainer.noise_scale=true" in skipped["noise_scale"]
    for f in res.tradeoffs[0].targets:
        assert f.B_crit == pytest.approx(b_crit(f.loss), rel=0.02)
        lo, hi = f.ci["B_crit"]
        assert lo <= f.B_crit <= hi and np.isnan(f.b_simple)


def test_val_loss_curve_preferred_when_logged():
    table, hist = sweep(batch_sizes=(32, 128), steps=4000)
    hist["val_loss"] = hist["train_loss"].where(hist["step"] % 200 == 0)
    res, _ = CriticalBatchFitter(n_bootstrap=0).fit(table, hist)
    assert res.tradeoffs[0].loss_column == "val_loss"


def test_one_batch_size_gives_the_noise_law_and_says_why_no_tradeoff():
    table, hist = sweep(batch_sizes=(64,))
    res, skipped = CriticalBatchFitter(n_bootstrap=20).fit(table, hist)
    assert res.noise is not None and res.tradeoffs == ()
    assert "batch-size sweep" in skipped["tradeoff"]


def test_bad_input_is_one_line_fit_error():
    table, hist = sweep(batch_sizes=(64,), noise_scale=False)
    with pytest.raises(FitError, match="trainer.noise_scale=true trainer.grad_accum>=2") as e:
        CriticalBatchFitter().fit(table, hist)
    assert "\n" not in str(e.value)
    with pytest.raises(FitError, match="needs the training history"):
        CriticalBatchFitter().fit(table, None)
    with pytest.raises(FitError, match="match none of the runs"):
        CriticalBatchFitter().fit(table.assign(run_id="other"), sweep(batch_sizes=(64,))[1])
    flat = sweep(batch_sizes=(64,))[1].assign(train_loss=3.0)
    with pytest.raises(FitError, match="range of losses"):
        CriticalBatchFitter().fit(table, flat)


def test_through_fit_api_and_cli(tmp_path):
    import typer
    from typer.testing import CliRunner

    from scaleflow.cli_fit import register
    from scaleflow.fit.api import FitOptions, fit

    table, hist = sweep(batch_sizes=(32, 128, 512), steps=6000, log_every=40)
    table.to_csv(tmp_path / "runs.csv", index=False)
    hist.to_csv(tmp_path / "history.csv", index=False)
    run = fit(str(tmp_path / "runs.csv"), FitOptions(law="critical-batch", n_bootstrap=20,
                                                     history=str(tmp_path / "history.csv")))
    d = run.to_dict()
    assert d["critical_batch"]["noise_scale"]["alpha_B"] == pytest.approx(ALPHA_B, rel=0.05) and d["skipped"] == {}
    with pytest.raises(FitError, match="needs the training history"):
        fit(str(tmp_path / "runs.csv"), FitOptions(law="critical-batch"))
    app = typer.Typer()
    register(app)
    r = CliRunner().invoke(app, ["fit", str(tmp_path / "runs.csv"), "--law", "critical-batch", "--history",
                                 str(tmp_path / "history.csv"), "--bootstrap", "10", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["critical_batch"]["tradeoff"][0]["loss_column"] == "train_loss"


def test_study_directory_history_reaches_the_fit(tmp_path):
    """A study directory (written by hand, as the trainer would): collect() hands its history on."""
    from scaleflow.fit.api import FitOptions, fit

    table, hist = sweep(batch_sizes=(32, 128, 512), steps=4000, log_every=40)
    for _, run in table.iterrows():
        d = tmp_path / run["run_id"]
        d.mkdir()
        (d / "run.json").write_text(json.dumps({"kind": "run", "label": f"B={run['batch_size']}"}))
        summary = {k: (v.item() if hasattr(v, "item") else v) for k, v in run.items() if k not in ("run_id", "loss")}
        (d / "summary.json").write_text(json.dumps({**summary, "status": "done", "val_loss": float(run["loss"])}))
        lines = hist[hist["run_id"] == run["run_id"]].drop(columns=["run_id", "val_loss"]).to_dict("records")
        (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    d = fit(str(tmp_path), FitOptions(law="critical-batch", n_bootstrap=20)).to_dict()
    t = d["critical_batch"]["tradeoff"][0]
    assert t["batch_tokens"] == [32 * SEQ, 128 * SEQ, 512 * SEQ] and d["skipped"] == {}
    assert all(x["B_crit"] == pytest.approx(b_crit(x["loss"]), rel=0.05) for x in t["targets"])


def test_plot_and_sections(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scaleflow.report.critical_batch import plot_result as plot, sections

    table, hist = sweep(batch_sizes=(32, 128, 512), steps=4000, log_every=40)
    res, _ = CriticalBatchFitter(n_bootstrap=20).fit(table, hist)
    assert plot(res, tmp_path, plt) == ["critical_batch.png"] and (tmp_path / "critical_batch.svg").exists()
    secs = sections({"critical_batch": res.to_dict()})
    assert len(secs) == 3 and len(secs[2].rows) == 5 and sections({}) == []
    only_a, _ = CriticalBatchFitter(n_bootstrap=20).fit(*sweep(batch_sizes=(64,), steps=2000))
    assert plot(only_a, tmp_path, plt) == ["critical_batch.png"] and len(sections({"critical_batch": only_a.to_dict()})) == 1
