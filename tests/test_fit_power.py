"""Saturating power law L = E + A x^-alpha (scaleflow.fit.power)."""

import numpy as np
import pandas as pd
import pytest

from scaleflow.errors import FitError
from scaleflow.fit.power import PowerFitter


def test_recovers_parameters_with_intervals():
    """Data from the known law L = 1.9 + 40 x^-0.07 with 0.2% noise: the intervals cover it."""
    rng = np.random.default_rng(3)
    x = np.geomspace(1e17, 1e21, 25)
    loss = (1.9 + 40.0 * x**-0.07) * np.exp(0.002 * rng.standard_normal(25))
    law = PowerFitter(x="flops", n_bootstrap=200, seed=0).fit(pd.DataFrame({"flops": x, "loss": loss}))
    assert law.status == "ok" and law.x_name == "flops"
    for p, true in (("E", 1.9), ("A", 40.0), ("alpha", 0.07)):
        lo, hi = law.ci[p]
        assert lo <= true <= hi, (p, lo, true, hi)
    assert law.alpha == pytest.approx(0.07, rel=0.25)
    assert law.predict(1e23) == pytest.approx(1.9 + 40.0 * 1e23**-0.07, rel=0.02)


def test_needs_four_points():
    with pytest.raises(FitError, match="at least 4 points"):
        PowerFitter(x="params").fit(pd.DataFrame({"params": [1e6, 1e7, 1e8], "loss": [4.0, 3.5, 3.2]}))
