"""Approach 2 (scaleflow.fit.isoflop): budgets, parabolas, refusals and recovery of a."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TRUE_LAW_PARAMS
from scaleflow.errors import FitError
from scaleflow.fit.isoflop import IsoFlopFitter, group_budgets, parabolas, simulate, vertices
from scaleflow.fit.laws import ChinchillaLaw

BUDGETS = np.geomspace(1e18, 1e21, 5)


def test_group_budgets_by_relative_tolerance():
    df = pd.DataFrame({"flops": [1.00e18, 1.05e18, 0.98e18, 3.0e18, 3.2e18, 1e19]})
    b = group_budgets(df, rtol=0.1)
    assert len(np.unique(b)) == 3
    assert b[0] == b[1] == b[2] and b[3] == b[4] and b[5] == pytest.approx(1e19)
    assert b[0] == pytest.approx(np.exp(np.log([1.0e18, 1.05e18, 0.98e18]).mean()))
    # an explicit budget column wins where present
    df["budget"] = [1e18, 1e18, 1e18, 3e18, np.nan, 1e19]
    b = group_budgets(df, rtol=0.1)
    assert b[0] == 1e18 and b[3] == 3e18 and b[4] == pytest.approx(3.2e18)


def test_parabola_vertex_by_hand():
    x = np.array([0.0, 1.0, 2.0, 3.0])
    y = 2.0 + 0.5 * (x - 1.2) ** 2
    c = parabolas(x, y, np.ones((1, 4)))
    assert c[0] == pytest.approx([2.0 + 0.5 * 1.44, -1.2, 0.5])
    assert vertices(c, 0, 3)[0] == pytest.approx(1.2)
    assert np.isnan(vertices(c, 1.5, 3)[0])  # outside the sampled range
    assert np.isnan(vertices(-c, 0, 3)[0])  # not convex
    w = np.array([[1.0, 1.0, 0.0, 0.0]])  # two distinct x: no parabola
    assert np.isnan(parabolas(x, y, w)).all()


@settings(max_examples=40, deadline=None, derandomize=True)
@given(alpha=st.floats(0.15, 0.8), beta=st.floats(0.15, 0.8), log_a=st.floats(3, 9), log_b=st.floats(3, 9),
       offset=st.floats(0.5, 2.0))
def test_recovers_a_noise_free(alpha, beta, log_a, log_b, offset):
    """a = beta / (alpha + beta) for any law, even with grids off-centre by a factor 2."""
    true = ChinchillaLaw(E=1.8, A=np.exp(log_a), B=np.exp(log_b), alpha=alpha, beta=beta)
    df = simulate(true, BUDGETS, sizes_per_budget=9, span=30.0, noise=0.0, offset=offset)
    law = IsoFlopFitter().fit(df).law
    assert law.a == pytest.approx(true.a, abs=1e-6)
    assert law.b == pytest.approx(true.b, abs=1e-6)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(alpha=st.floats(0.2, 0.6), beta=st.floats(0.2, 0.6), seed=st.integers(0, 1000))
def test_recovers_a_with_noise_within_its_interval(alpha, beta, seed):
    """With 0.1% noise the error of a stays inside twice the half-width of its 95% bootstrap
    interval (about 4 standard errors). 3 budgets: no loss law, so the bootstrap is cheap."""
    true = ChinchillaLaw(E=1.8, A=480.0, B=2100.0, alpha=alpha, beta=beta)
    df = simulate(true, np.geomspace(1e18, 1e21, 3), sizes_per_budget=9, noise=0.001, seed=seed)
    try:
        d = IsoFlopFitter(n_bootstrap=200, seed=seed).fit(df).to_dict()
    except FitError:
        # With both exponents large the reducible loss is ~1% of L at these sizes, and 0.1%
        # noise swamps the parabolas' curvature: refusing is the right answer there.
        assert alpha + beta > 1.0
        return
    lo, hi = d["ci"]["a"]
    assert abs(d["a"] - true.a) <= (hi - lo)
    assert lo < hi


def test_bootstrap_interval_covers_a_and_predicts():
    true = ChinchillaLaw(**TRUE_LAW_PARAMS)
    df = simulate(true, np.geomspace(1e18, 1e21, 6), noise=0.003, seed=1)
    res = IsoFlopFitter(n_bootstrap=300, seed=0).fit(df)
    d = res.to_dict()
    assert d["ci"]["a"][0] < true.a < d["ci"]["a"][1]
    assert d["ci"]["b"][0] < true.b < d["ci"]["b"][1]
    assert res.law.status == "ok" and len(res.budgets) == 6
    assert res.law.n_opt(1e22) == pytest.approx(true.n_opt(1e22), rel=0.2)
    assert res.law.loss is not None and res.law.loss_opt(1e22) == pytest.approx(true.loss_opt(1e22), rel=0.01)
    lo, hi = res.law.interval("n_opt", 1e22)
    assert lo < res.law.n_opt(1e22) < hi


def test_refuses_budget_whose_minimum_is_outside_the_grid():
    true = ChinchillaLaw(**TRUE_LAW_PARAMS)
    good = simulate(true, BUDGETS[:4], noise=0.0)
    bad = simulate(true, BUDGETS[4:], span=4.0, offset=20.0, noise=0.0)  # all sizes far above N_opt
    res = IsoFlopFitter().fit(pd.concat([good, bad], ignore_index=True))
    assert [b.status for b in res.budgets] == ["ok"] * 4 + ["refused"]
    assert np.isnan(res.budgets[-1].params_opt)
    assert res.law.status == "doubtful" and "refused" in res.law.message
    assert res.law.a == pytest.approx(true.a, abs=1e-6)  # fitted on the 4 good budgets


def test_one_budget_is_an_error():
    true = ChinchillaLaw(**TRUE_LAW_PARAMS)
    with pytest.raises(FitError, match="at least 2 FLOP budgets"):
        IsoFlopFitter().fit(simulate(true, [1e19], noise=0.0))
    bad = simulate(true, BUDGETS[:3], span=4.0, offset=20.0, noise=0.0)
    with pytest.raises(FitError, match="minimum inside"):
        IsoFlopFitter().fit(bad)
