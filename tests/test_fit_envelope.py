"""Approach 1 (scaleflow.fit.envelope): lower envelope of loss against FLOPs."""

import numpy as np
import pandas as pd
import pytest

from conftest import TRUE_LAW_PARAMS
from scaleflow.errors import FitError
from scaleflow.fit.envelope import EnvelopeFitter, lower_envelope
from scaleflow.fit.laws import ChinchillaLaw

TRUE = ChinchillaLaw(**TRUE_LAW_PARAMS)


def curves(sizes, n_points=40) -> pd.DataFrame:
    rows = []
    for N in sizes:
        D = np.geomspace(1e8, 3e12, n_points)
        rows.append(pd.DataFrame({"curve": f"n{N:.3g}", "params": N, "tokens": D, "flops": 6 * N * D,
                                  "loss": TRUE.predict(N, D)}))
    return pd.concat(rows, ignore_index=True)


def test_lower_envelope_by_hand():
    loss = np.array([[3.0, 2.5, np.nan], [3.2, 2.4, 2.2]])
    assert lower_envelope(loss)[0].tolist() == [0, 1, 1]
    assert lower_envelope(loss, np.array([[1.0, 0.0]]))[0].tolist() == [0, 0, -1]


def test_recovers_a_from_curves():
    res = EnvelopeFitter(n_bootstrap=100).fit(curves(np.geomspace(1e7, 1e10, 16)))
    assert res.law.a == pytest.approx(TRUE.a, abs=0.02)
    assert res.law.b == pytest.approx(TRUE.b, abs=0.02)
    assert res.law.loss is not None
    assert res.law.loss.alpha == pytest.approx(TRUE.alpha * TRUE.beta / (TRUE.alpha + TRUE.beta), rel=0.05)
    assert "left out" in res.law.message  # grid points where an edge model wins are censored
    d = res.to_dict()
    assert d["ci"]["a"][0] < d["a"] < d["ci"]["a"][1]


def test_needs_two_curves():
    with pytest.raises(FitError, match="at least 2 curves"):
        EnvelopeFitter().fit(curves([1e8]))
    with pytest.raises(FitError, match="fewer than 2 model sizes"):
        EnvelopeFitter().fit(curves([1e8, 1e9]))  # only edge models
