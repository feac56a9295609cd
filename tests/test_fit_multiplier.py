"""Compute multiplier of recipe B over recipe A (scaleflow.fit.multiplier) and approach 3's
asymmetric Huber loss (ParametricFitter(asymmetry=W)).

Synthetic studies from known laws on a realistic design: one fixed ladder of model sizes at
every budget (so the compute-optimal size sits off-centre and moves across the ladder), 4
budgets, multiplicative noise. The truth is computed here without scaleflow's closed forms:
compute-optimal losses by a dense grid over N, multipliers and crossovers by root finding.
"""

import json

import numpy as np
import pandas as pd
import pytest
import typer
from scipy.optimize import brentq
from typer.testing import CliRunner

import test_fit_cli as cli_helpers
from scaleflow.cli_fit import register
from scaleflow.errors import FitError
from scaleflow.fit.isoflop import simulate
from scaleflow.fit.laws import ChinchillaLaw
from scaleflow.fit.multiplier import MultiplierFitter
from scaleflow.fit.parametric import ParametricFitter, huber_objective

BASE = dict(E=1.8, A=480.0, B=2100.0, alpha=0.35, beta=0.37)
LADDER = np.geomspace(2e7, 2e9, 7)  # 20M..2B parameters at every budget
BUDGETS = np.geomspace(1e18, 6.4e19, 4)  # optima from ~1e8 to ~7e8: off-centre on the ladder
TRUE_K = 1.5  # B reaches at C what A reaches at 1.5 C


def numeric_loss_opt(p, C):
    """min over N of E + A/N^alpha + B/(C/6N)^beta, on a dense log grid refined once."""
    N = np.geomspace(1e5, 1e14, 20001)
    L = p["E"] + p["A"] * N ** -p["alpha"] + p["B"] * (C / (6 * N)) ** -p["beta"]
    i = int(np.argmin(L))
    N = np.geomspace(N[max(i - 1, 0)], N[min(i + 1, len(N) - 1)], 2001)
    return float((p["E"] + p["A"] * N ** -p["alpha"] + p["B"] * (C / (6 * N)) ** -p["beta"]).min())


def numeric_multiplier(pa, pb, C):
    target = numeric_loss_opt(pb, C)
    return np.exp(brentq(lambda lm: numeric_loss_opt(pa, C * np.exp(lm)) - target, -20, 20, xtol=1e-10))


def two_recipes(pa, pb, seed, noise=0.005):
    a = simulate(ChinchillaLaw(**pa), BUDGETS, ladder=LADDER, noise=noise, seed=seed)
    b = simulate(ChinchillaLaw(**pb), BUDGETS, ladder=LADDER, noise=noise, seed=seed + 1000)
    return pd.concat([a.assign(recipe="A"), b.assign(recipe="B")], ignore_index=True)


def k_times_better(k):
    """B's law: A's with A and B scaled by k^-gamma, so L*_B(C) = L*_A(k C) exactly (same E, same G)."""
    gamma = BASE["alpha"] * BASE["beta"] / (BASE["alpha"] + BASE["beta"])
    s = k ** -gamma
    return {**BASE, "A": BASE["A"] * s, "B": BASE["B"] * s}


def test_construction_gives_the_stated_multiplier():
    pb = k_times_better(TRUE_K)
    for C in (1e18, 1e21):
        assert numeric_multiplier(BASE, pb, C) == pytest.approx(TRUE_K, rel=1e-4)


@pytest.mark.parametrize("shared_e", [False, True])
def test_multiplier_recovered_with_covering_interval(shared_e):
    """3 seeds, 0.5% noise: the multiplier within 12% of 1.5 at every budget (3% with a shared E:
    a separate E per recipe leaves the multiplier at the largest budget least pinned); its 95%
    interval covers 1.5 at every budget in at least 2 of the 3 seeds (the budgets of one seed
    are not independent)."""
    tol = 0.03 if shared_e else 0.12
    covered = 0
    for seed in range(3):
        res = MultiplierFitter(n_bootstrap=40, seed=seed, shared_e=shared_e).fit(two_recipes(BASE, k_times_better(TRUE_K), seed))
        assert res.status == "ok", res.message
        m, (lo, hi) = res.multiplier(BUDGETS), res.multiplier_interval(BUDGETS)
        assert np.all(np.abs(m / TRUE_K - 1) < tol), m
        assert np.all(lo < m) and np.all(m < hi)
        covered += bool(np.all((lo <= TRUE_K) & (TRUE_K <= hi)))
        if shared_e:
            assert np.ptp(m) < 1e-9 * m[0]  # one E: the same multiplier at every budget
        assert res.params["alpha"] == pytest.approx(BASE["alpha"], rel=0.1)
        assert res.params["beta"] == pytest.approx(BASE["beta"], rel=0.1)
    assert covered >= 2


def test_closed_form_matches_root_finding():
    """The fitter's multiplier on given parameters equals the numerical definition, also where
    the two recipes have different E (the multiplier then varies with C)."""
    from scaleflow.fit.multiplier import multiplier

    pb = {**k_times_better(3.0), "E": 1.9}
    p = {f"{q}_{r}": d[q] for r, d in (("A", BASE), ("B", pb)) for q in ("E", "A", "B")}
    p.update(alpha=BASE["alpha"], beta=BASE["beta"])
    for C in (1e18, 1e20):
        assert float(multiplier(p, C)) == pytest.approx(numeric_multiplier(BASE, pb, C), rel=1e-5)


CROSSING_B = dict(E=1.9, A=300.0, B=1300.0, alpha=0.35, beta=0.37)  # better at small C, worse asymptotically


def test_crossover_found_where_the_curves_cross():
    true = brentq(lambda lc: numeric_loss_opt(BASE, 10**lc) - numeric_loss_opt(CROSSING_B, 10**lc), 18, 28)
    res = MultiplierFitter(n_bootstrap=40, seed=0).fit(two_recipes(BASE, CROSSING_B, 0))
    d = res.to_dict()
    assert d["crossover"] != "none"
    assert abs(np.log10(d["crossover"]) - true) < 0.5  # within a factor 3 of the true ~1e22 FLOPs
    assert d["crossover_ci"][0] <= 10**true <= d["crossover_ci"][1]
    assert float(res.multiplier(d["crossover"])) == pytest.approx(1.0, rel=1e-6)


def test_no_crossover_when_one_recipe_is_better_everywhere():
    better = {**k_times_better(2.0), "E": 1.7}  # lower E and lower coefficients
    res = MultiplierFitter(n_bootstrap=20, seed=0).fit(two_recipes(BASE, better, 1))
    d = res.to_dict()
    assert d["crossover"] == "none" and d["crossover_fraction"] < 0.1
    assert all(x["multiplier"] > 1.5 for x in d["multiplier"])


def test_bad_input():
    df = two_recipes(BASE, k_times_better(TRUE_K), 0)
    with pytest.raises(FitError, match="needs two recipes, got 1: A"):
        MultiplierFitter().fit(df[df["recipe"] == "A"])
    with pytest.raises(FitError, match="needs two recipes, got 3"):
        MultiplierFitter().fit(df.assign(recipe=np.arange(len(df)) % 3))
    with pytest.raises(FitError, match="recipe"):
        MultiplierFitter().fit(df.drop(columns="recipe"))
    with pytest.raises(FitError, match="needs column.*loss"):
        MultiplierFitter().fit(df.drop(columns="loss"))
    with pytest.raises(FitError, match="at least 4 runs of each recipe"):
        MultiplierFitter().fit(pd.concat([df[df["recipe"] == "A"], df[df["recipe"] == "B"].head(3)]))


def app() -> typer.Typer:
    a = typer.Typer()
    register(a)
    return a


def test_cli_recipe_column_versus_and_report(tmp_path):
    df = two_recipes(BASE, k_times_better(TRUE_K), 2).rename(columns={"recipe": "Arch"})
    both, a, b = tmp_path / "both.csv", tmp_path / "a.csv", tmp_path / "b.csv"
    df.to_csv(both, index=False)
    df[df["Arch"] == "A"].drop(columns="Arch").to_csv(a, index=False)
    df[df["Arch"] == "B"].drop(columns="Arch").to_csv(b, index=False)
    out = tmp_path / "out"
    r = CliRunner().invoke(app(), ["fit", str(both), "--law", "compute-multiplier", "--col", "recipe=Arch",
                                   "--bootstrap", "10", "--predict", "1e21", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "Compute multiplier of B over A" in r.stdout
    for name in ("compute_multiplier.png", "compute_multiplier.svg", "report.md", "report.html"):
        assert (out / name).stat().st_size > 0, name
    d = json.loads((out / "fit.json").read_text())["compute_multiplier"]
    assert [x["flops"] for x in d["multiplier"]] == [1e21]
    r = CliRunner().invoke(app(), ["fit", str(a), "--law", "compute-multiplier", "--versus", str(b),
                                   "--bootstrap", "0", "--json"])
    assert r.exit_code == 0, r.output
    v = json.loads(r.stdout)["compute_multiplier"]
    assert (v["recipe_A"], v["recipe_B"]) == ("source", str(b))
    assert [x["flops"] for x in v["multiplier"]] == pytest.approx(BUDGETS, rel=1e-9)  # the data's budgets
    assert all(x["multiplier"] == pytest.approx(TRUE_K, rel=0.12) for x in v["multiplier"])


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    one = tmp_path / "one.csv"
    simulate(ChinchillaLaw(**BASE), BUDGETS, ladder=LADDER, noise=0.005).assign(Arch="A").to_csv(one, index=False)
    p = cli_helpers.scaleflow("fit", str(one), "--law", "compute-multiplier", "--col", "recipe=Arch")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().count("\n") == 0 and "compute-multiplier needs two recipes, got 1: A" in p.stderr
    r = CliRunner().invoke(app(), ["fit", str(one), "--law", "compute-multiplier", "--bootstrap", "0"])
    assert isinstance(r.exception, FitError) and "recipe" in str(r.exception)
    r = CliRunner().invoke(app(), ["fit", str(one), "--asymmetry", "0", "--bootstrap", "0"])
    assert isinstance(r.exception, FitError) and "--asymmetry" in str(r.exception)


# ----------------------------------------------------------------------------- asymmetry

def test_asymmetry_sign_convention():
    """W multiplies the loss of points the model lies ABOVE (log L_pred > log L_obs)."""
    from scipy.special import huber

    X = np.log(np.array([[1e8, 1e10], [3e8, 2e10], [1e9, 5e9]]))
    theta = np.array([np.log(1.8), np.log(480.0), np.log(2100.0), 0.35, 0.37])
    pred = np.log(1.8 + 480.0 * np.exp(-0.35 * X[:, 0]) + 2100.0 * np.exp(-0.37 * X[:, 1]))
    logy = pred + np.array([-0.004, 0.002, -0.0005])  # the model lies above points 0 and 2
    h = huber(1e-3, pred - logy)
    assert huber_objective(theta, X, logy, 1e-3, None, 3.0)[0] == pytest.approx(3 * h[0] + h[1] + 3 * h[2], rel=1e-12)


def test_asymmetry_one_is_todays_fit_bit_for_bit():
    df = simulate(ChinchillaLaw(**BASE), BUDGETS, ladder=LADDER, noise=0.005, seed=3)
    today, w1 = ParametricFitter(n_bootstrap=10).fit(df), ParametricFitter(n_bootstrap=10, asymmetry=1.0).fit(df)
    assert w1.params == today.params and w1.huber_loss == today.huber_loss
    assert np.array_equal(w1.samples, today.samples)
    w2 = ParametricFitter(n_bootstrap=0, asymmetry=1.0 + 1e-6).fit(df)
    assert w2.huber_loss != today.huber_loss  # the option reaches the objective


def test_asymmetry_resists_badly_tuned_runs():
    """A clean law, then a share of runs badly tuned (loss x 1.02..1.08; more often among the
    largest models, as when LRs are not re-tuned at scale). W = 3 recovers E, alpha and beta
    within 8% in every seed (the symmetric fit: up to 42% off), and W = 2 and W = 3 both do
    better than the symmetric fit, which the bad runs drag."""
    for seed in range(4):
        df = simulate(ChinchillaLaw(**BASE), BUDGETS, ladder=np.geomspace(2e7, 3e9, 8), noise=0.002, seed=seed)
        rng = np.random.default_rng(100 + seed)
        bad = rng.random(len(df)) < np.where(df["params"] > 5e8, 0.6, 0.25)
        df.loc[bad, "loss"] *= 1 + rng.uniform(0.02, 0.08, bad.sum())
        errors = {}
        for W in (1.0, 2.0, 3.0):
            law = ParametricFitter(asymmetry=W).fit(df)
            errors[W] = max(abs(getattr(law, p) / BASE[p] - 1) for p in ("E", "alpha", "beta"))
        assert errors[3.0] < 0.08, errors
        assert errors[2.0] < errors[1.0] and errors[3.0] < errors[1.0], errors
