"""Fitted-law types (scaleflow.fit.laws): closed forms, intervals, JSON round trips."""

import json

import numpy as np
import pytest

from scaleflow.fit.laws import AllocationLaw, ChinchillaLaw, PowerLaw, SaturatingPowerLaw, jsonable, loglinear

# Epoch AI's published estimates (Besiroglu et al. 2024, arXiv:2404.10102; fixtures/chinchilla).
EPOCH = ChinchillaLaw(E=1.82, A=482.0, B=2085.0, alpha=0.348, beta=0.366)


@pytest.mark.parametrize("k", [6.0, 7.3])
def test_chinchilla_optimum_by_brute_force(k):
    """The closed-form optimum against a brute-force search of L(N, C / (k N)) over N, for the
    6ND count and for another FLOPs-per-parameter-token constant."""
    law = ChinchillaLaw(**EPOCH.params, k=k)
    C = 1e22
    N = np.geomspace(1e8, 1e12, 200001)
    loss = law.predict(N, C / (k * N))
    assert law.n_opt(C) == pytest.approx(N[np.argmin(loss)], rel=1e-3)
    assert law.d_opt(C) == pytest.approx(C / (k * N[np.argmin(loss)]), rel=1e-3)
    assert law.loss_opt(C) == pytest.approx(loss.min(), rel=1e-9)
    # Hoffmann et al.: about 20 tokens per parameter at these budgets
    assert 10 < EPOCH.d_opt(C) / EPOCH.n_opt(C) < 40


def test_inverse_questions():
    C = 3e23
    L = float(EPOCH.loss_opt(C))
    assert EPOCH.compute_for_loss(L) == pytest.approx(C, rel=1e-9)
    assert np.isnan(EPOCH.compute_for_loss(1.5))  # below E
    N, D = 7e9, 2e12
    L = float(EPOCH.predict(N, D))
    assert EPOCH.smallest_model(L, D) == pytest.approx(N, rel=1e-9)
    assert np.isnan(EPOCH.smallest_model(EPOCH.E + 1e-3, 1e9))  # the data term alone is too big


def test_intervals_from_samples_and_round_trip():
    rng = np.random.default_rng(0)
    samples = np.array([EPOCH.E, EPOCH.A, EPOCH.B, EPOCH.alpha, EPOCH.beta]) * rng.lognormal(0, 0.01, (200, 5))
    law = ChinchillaLaw(E=EPOCH.E, A=EPOCH.A, B=EPOCH.B, alpha=EPOCH.alpha, beta=EPOCH.beta, samples=samples)
    lo, hi = law.interval("n_opt", 1e22)
    assert lo < law.n_opt(1e22) < hi
    band = law.interval("loss_opt", np.array([1e21, 1e22, 1e23]))
    assert band.shape == (2, 3) and (band[0] < band[1]).all()
    assert law.ci["alpha"][0] < law.alpha < law.ci["alpha"][1]
    back = ChinchillaLaw.from_dict(json.loads(json.dumps(law.to_dict(include_samples=True))))
    assert back.params == law.params and np.allclose(back.samples, samples)
    assert "samples" not in law.to_dict()
    no_boot = ChinchillaLaw(E=1.8, A=400.0, B=400.0, alpha=0.3, beta=0.3)
    assert np.isnan(no_boot.interval("n_opt", 1e20)).all() and np.isnan(no_boot.ci["E"]).all()


def test_loglinear_and_power_law_fit():
    x = np.geomspace(1e18, 1e22, 7)
    k, e = loglinear(x, 0.1 * x**0.5)
    assert k == pytest.approx(0.1) and e == pytest.approx(0.5)
    w = np.array([[1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1.0]])  # second replicate: one point only
    y = np.where(w > 0, 0.1 * x**0.5, np.nan)
    k, e = loglinear(x, y, w)
    assert e[0] == pytest.approx(0.5) and np.isnan(e[1])
    law = PowerLaw.fit(x, 0.1 * x**0.5, boot=(x, 0.1 * x**0.5, np.ones((5, 7))))
    assert law(1e24) == pytest.approx(0.1 * 1e12) and law.samples.shape == (5, 2)


def test_saturating_and_allocation_laws():
    sat = SaturatingPowerLaw(E=1.7, A=50.0, alpha=0.1)
    assert sat.inverse(sat.predict(1e21)) == pytest.approx(1e21, rel=1e-9)
    assert np.isnan(sat.inverse(1.6))
    alloc = AllocationLaw("approach2", PowerLaw(k=0.1, exponent=0.5), PowerLaw(k=1.6, exponent=0.5), sat)
    assert alloc.n_opt(1e20) == pytest.approx(1e9) and alloc.compute_for_loss(sat.predict(1e22)) == pytest.approx(1e22)
    d = json.loads(json.dumps(alloc.to_dict(include_samples=True)))
    back = AllocationLaw.from_dict(d, "approach2")
    assert back.a == 0.5 and back.loss.E == 1.7
    assert np.isnan(AllocationLaw("approach1", alloc.n_law, alloc.d_law).loss_opt(1e20))


def test_unpinned_parameters_and_bounds_are_named():
    from scaleflow.fit.doubt import unpinned, with_problems

    rng = np.random.default_rng(0)
    tight = np.array([EPOCH.E, EPOCH.A, EPOCH.B, EPOCH.alpha, EPOCH.beta]) * rng.lognormal(0, 0.05, (100, 5))
    law = ChinchillaLaw(**EPOCH.params, samples=tight)
    hints = {p: "more data" for p in ("E", "A", "B", "alpha", "beta")}
    assert unpinned(law, hints) == [] and with_problems(law, []) is law
    loose = tight.copy()
    loose[:, 0] = np.geomspace(1e-9, 0.6, 100)  # E anywhere from 0 to 0.6: what the demo's approach 3 had
    loose[:, 3] = np.linspace(0.05, 0.9, 100)  # alpha's interval wider than alpha
    problems = unpinned(ChinchillaLaw(**EPOCH.params, samples=loose), hints)
    assert len(problems) == 2 and problems[0].startswith("E = 1.82 is not pinned") and "alpha" in problems[1]
    at_bound = ChinchillaLaw(**{**EPOCH.params, "E": 1e-9})
    assert unpinned(at_bound, {"E": "runs nearer the floor"}) == ["E = 1e-09 is at its bound 0: runs nearer the floor"]
    marked = with_problems(at_bound, ["x"])
    assert marked.status == "doubtful" and marked.message == "x"


def test_jsonable():
    assert json.dumps(jsonable({"a": np.float64(np.nan), "b": np.arange(2), "c": (np.int64(3), np.bool_(True))})) \
        == '{"a": null, "b": [0, 1], "c": [3, true]}'
