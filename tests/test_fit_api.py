"""The fit dispatch (scaleflow.fit.api): sources, column mapping, validation, laws, predictions."""

import numpy as np
import pandas as pd
import pytest

from conftest import CHINCHILLA_CSV, TRUE_LAW_PARAMS
from scaleflow.errors import FitError
from scaleflow.fit import api
from scaleflow.fit.api import FitOptions, answer, fit, load_saved, prepare, register_law
from scaleflow.fit.isoflop import simulate
from scaleflow.fit.laws import ChinchillaLaw

CHINCHILLA = {"columns": {"params": "Model Size", "flops": "Training FLOP"}, "where": "loss < 3.43"}
TRUE = ChinchillaLaw(**TRUE_LAW_PARAMS)


def study_table(seed: int = 0) -> pd.DataFrame:
    return simulate(TRUE, np.geomspace(1e18, 1e20, 4), sizes_per_budget=7, noise=0.002, seed=seed)


def test_chinchilla_csv_with_mapping_and_where():
    run = fit(CHINCHILLA_CSV, FitOptions(**CHINCHILLA, n_bootstrap=0, predict=(1e21, 1e22)))
    d = run.to_dict()
    assert d["n_points"] == 240 and d["excluded"]["filtered"] == 5
    assert any("tokens = flops / (6 params)" in n for n in d["notes"])
    a3 = d["approach3"]
    # the grid-start L-BFGS-B optimum of fixtures/chinchilla/README.md (a plain scipy loop)
    assert a3["E"] == pytest.approx(1.8172, abs=2e-4) and a3["alpha"] == pytest.approx(0.3473, abs=2e-4)
    assert set(a3["ci"]) >= {"E", "A", "B", "alpha", "beta"}
    assert d["flops"]["flops_per_param_token"] == pytest.approx(6.0)  # tokens were derived as flops / 6N
    rows = [o for o in d["optimal"] if o["approach"] == "approach3"]
    assert [o["flops"] for o in rows] == [1e21, 1e22]
    for o in rows:  # against a numerical search of Epoch AI's published law (A and B are loose: 10%)
        N = np.geomspace(1e8, 1e12, 100001)
        epoch = ChinchillaLaw(E=1.817, A=482.0, B=2085.4, alpha=0.3478, beta=0.3658).predict(N, o["flops"] / (6 * N))
        assert o["params"] == pytest.approx(N[np.argmin(epoch)], rel=0.1)
        assert o["loss"] == pytest.approx(epoch.min(), rel=0.002)


def test_isoflop_table_runs_the_approaches_it_supports_and_backtests():
    run = fit(study_table(), FitOptions(n_bootstrap=50, holdout_largest=True))
    d = run.to_dict()
    assert {"approach3", "approach2"} <= set(d)
    assert "approach1" in d["skipped"]  # every model size trained once: no curves for an envelope
    assert d["approach2"]["a"] == pytest.approx(TRUE.a, abs=0.05)
    assert d["approach2"]["ci"]["a"][0] < d["approach2"]["a"] < d["approach2"]["ci"]["a"][1]
    assert len({o["flops"] for o in d["optimal"]}) == 4  # default: the data's budgets
    h = d["holdout"]
    assert h["flops"] == pytest.approx(1e20) and h["n_test"] == 7
    assert h["measured"]["how"].startswith("minimum of the held-out")
    by = {p["approach"]: p for p in h["predicted"]}
    assert 0.7 < by["approach3"]["params_ratio"] < 1.4 and abs(by["approach3"]["loss_error"]) < 0.01


def test_diverged_rows_are_excluded_and_reported():
    t = study_table().assign(run_id=lambda x: [f"r{i}" for i in range(len(x))], diverged=False)
    t.loc[3, ["diverged", "loss"]] = [True, np.nan]
    d = fit(t, FitOptions(law="approach3", n_bootstrap=0)).to_dict()
    assert d["n_points"] == len(t) - 1 and d["excluded"]["diverged"] == ["r3"]
    assert any("diverged" in n for n in d["notes"])


def test_param_count_picks_the_column():
    t = study_table().assign(params_total=lambda x: x["params"] * 1.3)
    data = prepare(t, FitOptions(param_count="total"))
    assert np.allclose(data.table["params"], t["params"] * 1.3)
    with pytest.raises(FitError, match="params_with_head"):
        prepare(t, FitOptions(param_count="with_head"))
    with pytest.raises(FitError, match="one of"):
        prepare(t, FitOptions(param_count="some"))


def collected():
    """A study as the collector returns it: runs (trunk + decay branches, plain runs) and curves."""
    runs, curves = [], []
    for i, N in enumerate(np.geomspace(2e7, 2e9, 5)):
        runs.append({"run_id": f"t{i}", "kind": "trunk", "parent": None, "params": N, "params_total": N,
                     "flops": 6 * N * 4e10, "tokens": 4e10, "loss": 9.0, "diverged": False, "budget": np.nan})
        for j, D in enumerate(np.geomspace(1e8, 4e10, 8)):
            runs.append({"run_id": f"t{i}b{j}", "kind": "branch", "parent": f"t{i}", "params": N, "params_total": N,
                         "flops": 6 * N * D, "tokens": D, "loss": float(TRUE.predict(N, D)), "diverged": False,
                         "budget": np.nan})
    for i, N in enumerate(np.geomspace(2e7, 2e9, 5)):
        D = 1e18 / (6 * N)
        runs.append({"run_id": f"r{i}", "kind": "run", "parent": None, "params": N, "params_total": N, "flops": 1e18,
                     "tokens": D, "loss": float(TRUE.predict(N, D)), "diverged": i == 4, "budget": 1e18})
        for s, d in enumerate(np.linspace(D / 10, D, 10)):
            curves.append({"run_id": f"r{i}", "kind": "run", "parent": None, "step": s + 1, "tokens": d,
                           "flops": 6 * N * d, "val_loss": float(TRUE.predict(N, d)) + 0.05, "params": N,
                           "params_non_embedding": N, "params_with_head": N, "params_total": N})
    return pd.DataFrame(runs), pd.DataFrame(curves)


def test_study_sources_follow_the_collector_contract(monkeypatch, tmp_path):
    runs, curves = collected()
    data = prepare(runs, FitOptions())
    assert data.excluded["trunks"] == 5 and data.excluded["diverged"] == ["r4"]
    assert set(data.table["kind"]) == {"branch", "run"}
    c = data.curves
    # approach 1 sees annealed points only: each trunk's branch ends (one curve per trunk) and
    # the final point of each plain run; never stable-phase trunk losses or mid-run points
    assert len(c) == 5 * 8 + 4 and c["curve"].nunique() == 5 + 4
    assert (c["loss"] < 9).all()
    finals = runs.set_index("run_id").loc[["r0", "r1", "r2", "r3"], "loss"]
    assert sorted(c.loc[c["flops"] == 1e18, "loss"]) == sorted(finals)

    class Collected:  # what scaleflow.collect.collect returns
        def __init__(self):
            self.runs, self.curves, self.skipped, self.warnings = runs, curves, 2, ["skipped 2 unfinished run(s)"]

    import scaleflow.collect

    monkeypatch.setattr(scaleflow.collect, "collect", lambda path: Collected())
    d = fit(tmp_path, FitOptions(law="approach1", n_bootstrap=20)).to_dict()
    assert "approach1" in d and "skipped 2 unfinished run(s)" in d["notes"]


def test_power_and_lr_bs_laws():
    t = study_table()
    d = fit(t, FitOptions(law="power", columns={"x": "params"}, n_bootstrap=0)).to_dict()
    assert d["power"]["x_name"] == "x" and d["optimal"] == []
    rows = [{"flops": C, "lr": lr, "batch_size": bs, "loss": 3 * (C / 1e17) ** -0.05 * (1 + 0.01 * np.log(lr / 1e-3) ** 2
                                                                                           + 0.01 * np.log(bs / 64) ** 2)}
            for C in (1e17, 1e18) for lr in (3e-4, 1e-3, 3e-3) for bs in (32, 64, 128)]
    d = fit(pd.DataFrame(rows), FitOptions(law="lr-bs", n_bootstrap=0)).to_dict()
    assert d["lr_bs"]["batch_unit"] == "batch_size" and len(d["lr_bs"]["budgets"]) == 2


def test_a_registered_law_runs_and_gets_a_table_in_the_report(tmp_path):
    from scaleflow.report import markdown, sections, warnings_of

    class Result:
        def to_dict(self, include_samples=False):
            return {"value": 1.5, "status": "doubtful", "message": "made up", "ci": {"value": [1.0, 2.0]}}

    register_law("my-law", lambda data, o: {"my_result": Result()}, "a law of the user's own")
    try:
        d = fit(study_table(), FitOptions(law="my-law")).to_dict()
    finally:
        api.LAWS.pop("my-law")
    assert d["my_result"]["value"] == 1.5 and d["results"] == ["my_result"]
    table = next(s for s in sections(d) if s.title == "my_result")
    assert table.rows == [["value", 1.5, "[1, 2]"]]
    assert "my_result doubtful: made up" in warnings_of(d) and "| value | 1.5 | [1, 2] |" in markdown(d, [])


def test_law_help_lists_every_law():
    from scaleflow.fit.registry import LAWS, law_help

    assert all(f"{name}: " in law_help() for name in LAWS)
    assert {"chinchilla", "approach1", "approach2", "approach3", "power", "lr-bs", "lr-transfer",
            "critical-batch"} <= set(LAWS)


@pytest.mark.parametrize("table, options, message", [
    (lambda t: t.drop(columns=["loss"]), FitOptions(law="approach3"), "needs column"),
    (lambda t: t.assign(loss=-t["loss"]), FitOptions(), "non-positive"),
    (lambda t: t.assign(params=np.where(t.index == 0, np.nan, t["params"])), FitOptions(), "non-positive or missing"),
    (lambda t: t.head(4), FitOptions(law="approach3"), "at least 6 points"),
    (lambda t: t[t["budget"] == t["budget"].min()], FitOptions(law="approach2"), "at least 2 FLOP budgets"),
    (lambda t: t, FitOptions(law="nope"), "unknown law"),
    (lambda t: t, FitOptions(columns={"params": "Model Size"}), "no column 'Model Size'"),
    (lambda t: t, FitOptions(where="loss >"), "--where"),
    (lambda t: t, FitOptions(where="loss < 0"), "no runs left"),
    (lambda t: t.drop(columns=["tokens", "flops", "budget"]), FitOptions(), "tokens"),
])
def test_bad_input_is_a_fit_error(table, options, message):
    with pytest.raises(FitError, match=message):
        fit(table(study_table()), options)


def test_bad_sources(tmp_path):
    with pytest.raises(FitError, match="no such file"):
        fit(tmp_path / "missing.csv")
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(FitError, match="expected a .csv or .parquet"):
        fit(tmp_path / "x.txt")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(FitError, match="cannot read"):
        fit(tmp_path / "bad.parquet")


def test_parquet_source_and_saved_fit_answers(tmp_path):
    path = tmp_path / "runs.parquet"
    study_table().to_parquet(path)
    run = fit(path, FitOptions(n_bootstrap=30))
    saved = tmp_path / "fit.json"
    import json

    saved.write_text(json.dumps(run.to_dict(include_samples=True)))
    laws = load_saved(saved)
    assert set(laws) >= {"approach3", "approach2"}
    a = answer(laws, [1e21], loss=2.3)
    assert {o["approach"] for o in a["optimal"]} >= {"approach3", "approach2"}
    row = next(r for r in a["compute_for_loss"] if r["approach"] == "approach3")
    assert laws["approach3"].loss_opt(row["flops"]) == pytest.approx(2.3)
    s = answer(laws, loss=2.3, tokens=1e12)["smallest_model"][0]
    assert laws["approach3"].predict(s["params"], 1e12) == pytest.approx(2.3)
    with pytest.raises(FitError, match="not reachable"):
        answer(laws, loss=1.0)
