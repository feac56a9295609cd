"""The fit of a study the trainer produced, through the same commands as `make demo`; the
checks that span approaches (agreement, one FLOP count); bad tables never raise a traceback."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import TINY, TRUE_LAW_PARAMS, run_cli
from scaleflow.errors import FitError
from scaleflow.fit.api import FitOptions, fit
from scaleflow.fit.envelope import EnvelopeFitter
from scaleflow.fit.isoflop import simulate
from scaleflow.fit.laws import ChinchillaLaw

TRUE = ChinchillaLaw(**TRUE_LAW_PARAMS)
DEMO_STUDY = Path(__file__).parent.parent / "scaleflow" / "sweeps" / "isoflop_branches_cpu.yaml"
SHAPES = "[{n_layer: 1, d_model: 8, n_head: 1}, {n_layer: 1, d_model: 16, n_head: 2}, " \
         "{n_layer: 1, d_model: 24, n_head: 2}, {n_layer: 2, d_model: 32, n_head: 2}]"


def test_a_trained_study_is_collected_and_fitted_as_make_demo_does(tmp_path):
    """`scaleflow decay-branches` then `scaleflow fit STUDY --out DIR` (the demo's two commands,
    on its study) with 2 budgets x 4 tiny models: every branch enters the fit as a point of
    its budget, the trunks stay out, every approach is fitted or skipped with its reason, the
    report is written and `scaleflow predict` reads it back."""
    study, out, corpus = tmp_path / "study", tmp_path / "fit", tmp_path / "corpus.txt"
    import inspect
    import json as json_module

    corpus.write_text(inspect.getsource(json_module.decoder) * 20)  # a small corpus: quick to load
    overrides = [o for o in TINY if not o.startswith(("model.n_layer", "model.d_model", "model.n_head"))]
    overrides += ["data=text", f"data.paths=[{corpus}]"]
    sweep = run_cli("decay-branches", str(DEMO_STUDY), f"study_dir={study}", "study.branch_flops=[1e9,2e9]",
                    f"study.shapes={SHAPES}", "study.min_steps=15", "schedule.warmup_steps=5",
                    "trainer.checkpoint_every=1000", "launcher.max_parallel=2", *overrides)
    assert sweep.returncode == 0, sweep.stderr
    kinds = [json.loads(p.read_text())["kind"] for p in study.glob("*/run.json") if (p.parent / "summary.json").exists()]
    assert sorted(kinds) == ["branch"] * 8 + ["trunk"] * 4

    r = run_cli("fit", str(study), "--out", str(out), "--bootstrap", "20", "--predict", "1e10", "--json",
                "--huber-delta", "0.03")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["n_points"] == 8 and d["flops"]["definition"].startswith("flops column (trainer.flop_count=")
    assert d["excluded"]["trunks"] == 4 and d["huber_delta"] == 0.03
    # approach 2 sees the branches as the points of their 2 budgets (fitted, or refused for a
    # budget without an interior minimum: tiny runs)
    a2 = d.get("approach2")
    assert (sorted(b["flops"] for b in a2["budgets"]) == [1e9, 2e9]) if a2 else "of 2 budgets" in d["skipped"]["approach2"]
    for name in ("approach1", "approach2", "approach3"):
        assert (name in d) != (name in d["skipped"]), name  # fitted, or skipped with a reason
        if name in d:
            assert d[name]["status"] in ("ok", "doubtful")
    assert d["approach3"]["n_points"] == 8
    saved = json.loads((out / "fit.json").read_text())
    assert saved["n_points"] == 8 and (out / "report.md").read_text().startswith("# scaleflow fit")
    p = run_cli("predict", str(out / "fit.json"), "--flops", "1e10", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["optimal"][0]["flops"] == 1e10


def test_disagreeing_approaches_are_said_first_with_likely_causes():
    """When one approach's exponent lies outside another's interval, the fit says so before
    anything else, names the approaches, and lists the causes it can see (here: 3 budgets over
    a factor 4, and an irreducible loss at its bound)."""
    from scaleflow.fit.agreement import compare
    from scaleflow.fit.isoflop import IsoFlopResult
    from scaleflow.fit.laws import AllocationLaw, PowerLaw
    from scaleflow.report import markdown

    rng = np.random.default_rng(0)
    spread = rng.normal(0, 0.02, (200, 5)) * [0, 0, 0, 1, 1]
    a3 = ChinchillaLaw(E=1e-9, A=480.0, B=2100.0, alpha=0.45, beta=0.30, message="E = 1e-09 is at its bound 0",
                       samples=np.array([1e-9, 480.0, 2100.0, 0.45, 0.30]) + spread)  # a = 0.40 [0.36, 0.44]
    n_law = PowerLaw(k=0.1, exponent=0.62, samples=np.column_stack([np.full(200, 0.1), rng.normal(0.62, 0.03, 200)]))
    a2 = IsoFlopResult(AllocationLaw("approach2", n_law, n_law), (), (0.3, 0.3))
    table = simulate(TRUE, [1e18, 2e18, 4e18], sizes_per_budget=5, noise=0.0)
    verdict = compare({"approach3": a3, "approach2": a2}, table)
    assert not verdict.agree and "DISAGREE" in verdict.message
    assert "approach3's a lies outside approach2's interval" in verdict.message
    assert [c.split(":")[0] for c in verdict.causes] == ["too few budgets", "unpinned E"]
    close = IsoFlopResult(AllocationLaw("approach2", PowerLaw(k=0.1, exponent=0.40, samples=n_law.samples - 0.22),
                                        n_law), (), (0.3, 0.3))
    assert compare({"approach3": a3, "approach2": close}, table).agree
    d = {"source": "s", "law": "chinchilla", "n_points": 15, "n_bootstrap": 200, "notes": [],
         "agreement": verdict.to_dict(), "approach3": a3.to_dict()}
    md = markdown(d, [])
    assert md.index("the approaches disagree") < md.index("## Approach 3")


def test_agreement_on_a_sound_design():
    df = simulate(TRUE, np.geomspace(1e18, 1e21, 6), sizes_per_budget=9, noise=0.002, seed=0)
    a = fit(df, FitOptions(n_bootstrap=60)).to_dict()["agreement"]
    assert a["agree"] and set(a["a"]) == {"approach3", "approach2"}


def test_one_flop_count_for_every_approach():
    """With FLOPs counted as 8 N D (say, attention included), every approach predicts at that C:
    approach 3's optimum equals a numerical search of its own L(N, C / 8N)."""
    df = simulate(TRUE, np.geomspace(1e18, 1e20, 4), sizes_per_budget=8, noise=0.0)
    df = df.assign(flops=8.0 * df["params"] * df["tokens"], budget=None)
    run = fit(df, FitOptions(n_bootstrap=0, predict=(1e21,)))
    d = run.to_dict()
    assert d["flops"]["flops_per_param_token"] == pytest.approx(8.0)
    law = run.results["approach3"]
    N = np.geomspace(1e8, 1e11, 100001)
    best = N[np.argmin(law.predict(N, 1e21 / (8.0 * N)))]
    by = {o["approach"]: o for o in d["optimal"]}
    assert by["approach3"]["params"] == pytest.approx(best, rel=1e-3)
    assert by["approach2"]["params"] == pytest.approx(best, rel=0.05)  # the same C, so the same answer


def test_envelope_censors_by_model_size_with_several_curves_per_size():
    """Two settings per model size (the second better): grid points where the smallest or
    largest size wins are left out whichever of its curves wins."""
    rows = []
    sizes = np.geomspace(1e7, 1e10, 12)
    for setting, extra in (("worse", 0.002), ("better", 0.0)):
        for N in sizes:
            D = np.geomspace(1e8, 3e12, 30)
            rows.append(pd.DataFrame({"curve": f"{N:.3g}|{setting}", "params": N, "tokens": D, "flops": 6 * N * D,
                                      "loss": TRUE.predict(N, D) + extra}))
    res = EnvelopeFitter().fit(pd.concat(rows, ignore_index=True))
    assert res.params.min() > sizes.min() and res.params.max() < sizes.max()


def corrupt(table: pd.DataFrame, kind: str, row: int) -> pd.DataFrame:
    t = table.copy()
    if kind == "nan":
        t.loc[row, "loss"] = np.nan
    elif kind == "zero":
        t.loc[row, "params"] = 0.0
    elif kind == "negative":
        t.loc[row, "tokens"] = -1.0
    elif kind == "string":
        t["flops"] = t["flops"].astype(object)
        t.loc[row, "flops"] = "lots"
    elif kind == "duplicates":
        t = pd.concat([t, t.iloc[: row + 1]], ignore_index=True)
    elif kind == "one budget":
        t = t[t["budget"] == t["budget"].iloc[row]]
    return t


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["nan", "zero", "negative", "string", "duplicates", "one budget"]),
       row=st.integers(0, 20), where=st.sampled_from([None, "loss > 100", "params > 0"]))
@example(kind="duplicates", row=2, where=None)
def test_bad_tables_give_a_fit_error_or_a_stated_exclusion(kind, row, where):
    table = simulate(TRUE, np.geomspace(1e18, 1e20, 3), sizes_per_budget=7, noise=0.002)
    try:
        d = fit(corrupt(table, kind, row), FitOptions(n_bootstrap=0, where=where)).to_dict()
    except FitError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    json.dumps(d)
    if kind == "duplicates":
        assert d["excluded"]["duplicates"] == row + 1 and any("duplicate" in n for n in d["notes"])
