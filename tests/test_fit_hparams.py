"""LR / batch-size laws (scaleflow.fit.hparams), DeepSeek-style."""

import numpy as np
import pandas as pd
import pytest

from scaleflow.errors import FitError
from scaleflow.fit.hparams import LrBsFitter


def grid(budgets, noise=0.0005, seed=0, lr_span=(0.25, 4.0)) -> pd.DataFrame:
    """Loss bowls around DeepSeek's eta_opt = 0.3118 C^-0.125, B_opt = 0.292 C^0.3271 (tokens):
    the known law the data are generated with (DeepSeek LLM 2024, arXiv:2401.02954, section 3.1)."""
    rng = np.random.default_rng(seed)
    rows = []
    for C in budgets:
        lo, bo = 0.3118 * C**-0.125, 0.292 * C**0.3271
        for lr in lo * np.geomspace(*lr_span, 9):
            for bs in bo * np.geomspace(0.25, 4, 7):
                loss = 3 * (C / 1e17) ** -0.05 * (1 + 0.01 * np.log(lr / lo) ** 2 + 0.006 * np.log(bs / bo) ** 2)
                rows.append({"flops": C, "lr": lr, "batch_tokens": bs, "loss": loss * np.exp(noise * rng.standard_normal())})
    return pd.DataFrame(rows)


def test_recovers_deepseek_exponents():
    res = LrBsFitter(n_bootstrap=300).fit(grid(np.geomspace(1e17, 2e19, 5)))
    assert res.status == "ok" and len(res.budgets) == 5
    for law, true in ((res.lr_law, -0.125), (res.batch_law, 0.3271)):
        lo, hi = law.ci["exponent"]
        assert lo <= true <= hi and law.exponent == pytest.approx(true, abs=0.06)
    b = res.budgets[0]
    assert b.near.sum() >= 1 and b.loss[b.near].max() <= b.loss.min() * 1.0025
    lr, bs = res.predict(1e20)
    assert lr == pytest.approx(0.3118 * 1e20**-0.125, rel=0.5)


def test_edge_of_grid_is_doubtful():
    res = LrBsFitter().fit(grid([1e17, 1e18], lr_span=(1.0, 8.0), noise=0.0))  # best lr at the low edge
    assert res.status == "doubtful" and "edge of the learning rate grid" in res.message


def test_needs_two_budgets():
    with pytest.raises(FitError, match="at least 2 FLOP budgets"):
        LrBsFitter().fit(grid([1e18]))
