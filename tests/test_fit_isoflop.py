"""Approach 2 (scaleflow.fit.isoflop): budgets, per-budget curves, refusals and recovery of a.

Every expected value comes from the known law the data were generated with (`simulate`)."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TRUE_LAW_PARAMS
from scaleflow.errors import FitError
from scaleflow.fit.isoflop import Curve, IsoFlopFitter, _solve, curve_loss, group_budgets, minimum, simulate
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


def test_minimum_of_a_fitted_curve_matches_a_numerical_search():
    """u* = ln(alpha A / (beta B)) / (alpha + beta), checked by a bounded scalar search."""
    from scipy.optimize import minimize_scalar

    c = Curve(np.log(np.geomspace(1e6, 1e8, 7)), np.ones(7))
    log_exps, coef = np.log([0.3, 0.5]), np.array([1.7, 2.0, 0.5])
    x, loss = minimum(c, log_exps, coef)
    numeric = minimize_scalar(lambda v: curve_loss(c, log_exps, coef, np.array([v]))[0],
                              bounds=(c.x.min(), c.x.max()), method="bounded", options={"xatol": 1e-10})
    assert x == pytest.approx(numeric.x, abs=1e-6) and loss == pytest.approx(numeric.fun, rel=1e-12)
    assert np.isnan(minimum(c, log_exps, np.array([1.7, 2.0, -0.5]))[0])  # no interior minimum
    assert np.isnan(minimum(c, log_exps, np.array([1.7, 2.0, 50.0]))[0])  # minimum below the sampled sizes


@settings(max_examples=25, deadline=None, derandomize=True)
@given(alpha=st.floats(0.15, 0.8), beta=st.floats(0.15, 0.8), log_a=st.floats(3, 9), log_b=st.floats(3, 9),
       offset=st.floats(0.5, 2.0))
def test_recovers_a_noise_free(alpha, beta, log_a, log_b, offset):
    """a = beta / (alpha + beta) for any law, even with grids off-centre by a factor 2."""
    true = ChinchillaLaw(E=1.8, A=np.exp(log_a), B=np.exp(log_b), alpha=alpha, beta=beta)
    df = simulate(true, BUDGETS, sizes_per_budget=9, span=30.0, noise=0.0, offset=offset)
    law = IsoFlopFitter().fit(df).law
    assert law.a == pytest.approx(true.a, abs=1e-4)  # the shape grid's resolution, far below any noise
    assert law.b == pytest.approx(true.b, abs=1e-4)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(alpha=st.floats(0.2, 0.6), beta=st.floats(0.2, 0.6), seed=st.integers(0, 1000))
def test_recovers_a_with_noise_within_its_interval(alpha, beta, seed):
    """With 0.1% noise the error of a stays inside twice the half-width of its 95% bootstrap
    interval (about 4 standard errors). 3 budgets: no loss law, so the bootstrap is cheap."""
    true = ChinchillaLaw(E=1.8, A=480.0, B=2100.0, alpha=alpha, beta=beta)
    df = simulate(true, np.geomspace(1e18, 1e21, 3), sizes_per_budget=9, noise=0.001, seed=seed)
    try:
        d = IsoFlopFitter(n_bootstrap=100, seed=seed).fit(df).to_dict()
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
    res = IsoFlopFitter(n_bootstrap=150, seed=0).fit(df)
    d = res.to_dict()
    assert d["ci"]["a"][0] < true.a < d["ci"]["a"][1]
    assert d["ci"]["b"][0] < true.b < d["ci"]["b"][1]
    assert res.law.status == "ok" and len(res.budgets) == 6
    assert res.law.n_opt(1e22) == pytest.approx(true.n_opt(1e22), rel=0.2)
    assert res.law.loss is not None and res.law.loss_opt(1e22) == pytest.approx(true.loss_opt(1e22), rel=0.01)
    lo, hi = res.law.interval("n_opt", 1e22)
    assert lo < res.law.n_opt(1e22) < hi


def test_each_bootstrap_replicate_reaches_the_least_loss_of_a_dense_shape_grid():
    # The replicates' shape search (a compass search from the fit's shape) against brute force:
    # a 160 x 160 grid over the whole shape range, every replicate priced at every point.
    from scaleflow.fit.isoflop import SHAPE_RANGE, _solve, fit_shapes
    from scaleflow.fit.laws import resample_weights

    df = simulate(ChinchillaLaw(**TRUE_LAW_PARAMS), np.geomspace(1e18, 1e21, 5), noise=0.01, seed=3)
    curves = [Curve(np.log(g["params"].to_numpy(float)), g["loss"].to_numpy(float)) for _, g in df.groupby("budget")]
    start, _ = fit_shapes(curves, [np.ones((1, len(c.x))) for c in curves])
    rng = np.random.default_rng(0)
    weights = [resample_weights(rng, len(c.x), 8) for c in curves]
    found, _ = fit_shapes(curves, weights, start[0])
    axis = np.linspace(*np.log(SHAPE_RANGE), 160)
    dense = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    brute = sum(_solve(c, w, dense)[1] for c, w in zip(curves, weights)).min(axis=1)
    reached = sum(_solve(c, w, found[:, None, :])[1][:, 0] for c, w in zip(curves, weights))
    assert np.all(reached <= brute * (1 + 1e-6))


def test_refuses_budget_whose_minimum_is_outside_the_grid():
    true = ChinchillaLaw(**TRUE_LAW_PARAMS)
    good = simulate(true, BUDGETS[:4], noise=0.0)
    bad = simulate(true, BUDGETS[4:], span=4.0, offset=20.0, noise=0.0)  # all sizes far above N_opt
    res = IsoFlopFitter().fit(pd.concat([good, bad], ignore_index=True))
    assert [b.status for b in res.budgets] == ["ok"] * 4 + ["refused"]
    assert np.isnan(res.budgets[-1].params_opt)
    assert res.law.status == "doubtful" and "refused" in res.law.message
    assert res.law.a == pytest.approx(true.a, abs=1e-4)  # fitted on the 4 good budgets


# Fixed ladders, as real studies use: the same model sizes at every budget, so the optimum
# sits at a different place in the ladder at each budget (off-centre, and alpha != beta).
DEMO_LADDER = np.geomspace(4.8e3, 4.8e3 * 74, 8)  # 8 sizes over 74x, as isoflop_cpu (the former demo)
DEMO_BUDGETS = [1e11, 2e11, 4e11]  # 3 budgets a factor 2 apart, as isoflop_cpu
WIDE_LADDER = np.geomspace(1e7, 3e9, 10)  # 300x, as published IsoFLOP sets (100x or more)
WIDE_BUDGETS = np.geomspace(3e17, 3e19, 5)
EXPONENTS = [(0.25, 0.45), (0.30, 0.40), (0.35, 0.37), (0.45, 0.25), (0.60, 0.30)]
NOISY_EXPONENTS = [(0.25, 0.45), (0.35, 0.37), (0.60, 0.30)]


def law_with_optimum(alpha, beta, C, n_opt, E=1.8, B=2000.0) -> ChinchillaLaw:
    """The law with exponents alpha, beta whose compute-optimal size at C FLOPs is n_opt."""
    G = n_opt / (C / 6.0) ** (beta / (alpha + beta))
    return ChinchillaLaw(E=E, A=G ** (alpha + beta) * beta * B / alpha, B=B, alpha=alpha, beta=beta)


def ladder_studies(exponents=EXPONENTS):
    """(true law, study) pairs on both ladders, the optimum of the middle budget a third of the
    way up the ladder in log size (so the optima drift off-centre across the budgets)."""
    for ladder, budgets in ((DEMO_LADDER, DEMO_BUDGETS), (WIDE_LADDER, WIDE_BUDGETS)):
        n_opt = np.exp(np.log(ladder[0]) + np.log(ladder[-1] / ladder[0]) / 3)
        for alpha, beta in exponents:
            yield law_with_optimum(alpha, beta, budgets[len(budgets) // 2], n_opt), ladder, budgets


@pytest.mark.parametrize("fitter", ["approach2", "approach3"])
def test_fixed_off_centre_ladders_noise_free(fitter):
    """|a - a_true| <= 0.01 on fixed ladders (a single parabola per budget gave 0.517 for 0.643)."""
    from scaleflow.fit.parametric import ParametricFitter

    for true, ladder, budgets in ladder_studies():
        df = simulate(true, budgets, noise=0.0, ladder=ladder)
        a = IsoFlopFitter().fit(df).law.a if fitter == "approach2" else ParametricFitter().fit(df).a
        assert abs(a - true.a) <= 0.01, (true.alpha, true.beta, len(ladder), a, true.a)


@pytest.mark.parametrize("fitter", ["approach2", "approach3"])
def test_fixed_off_centre_ladders_with_noise_are_unbiased(fitter):
    """0.2% loss noise: the mean error of a over 6 seeds is at most 0.02 on every design."""
    from scaleflow.fit.parametric import ParametricFitter

    for true, ladder, budgets in ladder_studies(NOISY_EXPONENTS):
        errors = []
        for seed in range(6):
            df = simulate(true, budgets, noise=0.002, ladder=ladder, seed=seed)
            a = IsoFlopFitter().fit(df).law.a if fitter == "approach2" else ParametricFitter().fit(df).a
            errors.append(a - true.a)
        assert abs(np.mean(errors)) <= 0.02, (true.alpha, true.beta, len(ladder), np.mean(errors))


def test_one_budget_is_an_error():
    true = ChinchillaLaw(**TRUE_LAW_PARAMS)
    with pytest.raises(FitError, match="at least 2 FLOP budgets"):
        IsoFlopFitter().fit(simulate(true, [1e19], noise=0.0))
    bad = simulate(true, BUDGETS[:3], span=4.0, offset=20.0, noise=0.0)
    with pytest.raises(FitError, match="minimum inside"):
        IsoFlopFitter().fit(bad)


def test_each_budget_solve_matches_least_squares_even_when_resampling_leaves_two_sizes():
    """The closed-form solve of a budget's curve at a shape gives lstsq's weighted SSE; a
    bootstrap replicate whose runs cover 1 or 2 sizes (fewer than the 3 coefficients) must
    still be fitted exactly (SSE ~ 0), not blow up as Cramer's rule does."""
    c = Curve(np.log([1e6, 3e6, 1e7, 3e7, 1e8]), np.array([3.1, 2.9, 2.85, 2.95, 3.2]))
    weights = np.array([[1.0, 1, 1, 1, 1], [2, 0, 0, 0, 3], [0, 3, 1, 0, 0], [0, 0, 5, 0, 0]])
    shapes = np.log([[0.3, 0.3], [1.0, 2.0], [2.5, 0.05], [0.02, 2.9]])  # ln(alpha, beta)
    _, sse = _solve(c, weights, shapes)
    for r, w in enumerate(weights):
        sw = np.sqrt(w) / c.y  # relative errors
        for g, (alpha, beta) in enumerate(np.exp(shapes)):
            F = np.column_stack([np.ones(len(c.x)), np.exp(-alpha * c.u), np.exp(beta * c.u)]) * sw[:, None]
            exact = np.sum((F @ np.linalg.lstsq(F, c.y * sw, rcond=None)[0] - c.y * sw) ** 2)
            assert sse[r, g] == pytest.approx(exact, rel=1e-6, abs=1e-9 * w.sum()), (r, g)
