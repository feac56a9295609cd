"""LR transfer across width (scaleflow.fit.transfer): synthetic LR x width grids with known optima."""

import json

import numpy as np
import pandas as pd
import pytest

from scaleflow.errors import FitError
from scaleflow.fit.transfer import LrTransferFitter, parabola_vertex

LRS = 1e-3 * 2.0 ** np.arange(8)  # grid factor 2
WIDTHS = (32, 64, 128, 256)


def lr_opt_true(p: str, w: float) -> float:
    return 5e-3 * (w / 32) ** 0.05 if p == "mup" else 1.2e-2 * 32 / w  # muP: flat; SP: ~ 1 / width


def bowl(x):
    """Loss above the optimum, x = log2(lr / lr_opt): steeper on the high side (not a parabola)."""
    return 0.03 * x**2 + 0.01 * x**2 * np.maximum(x, 0)


def grid(opt=lr_opt_true, pars=("sp", "mup"), widths=WIDTHS, lrs=LRS, noise=0.0, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [{"parametrization": p, "d_model": w, "lr": lr, "n_layer": 2,
             "loss": 3.2 - 0.05 * np.log2(w / 32) + bowl(np.log2(lr / opt(p, w))) + noise * rng.standard_normal()}
            for p in pars for w in widths for lr in lrs]
    return pd.DataFrame(rows)


def test_parabola_vertex():
    x = np.array([-1.0, 0.5, 2.0])
    assert parabola_vertex(x, 2 * (x - 0.3) ** 2 + 1) == pytest.approx((0.3, 1.0))
    assert np.isnan(parabola_vertex(x, np.ones(3))[0])


def test_optima_recovered_within_a_fraction_of_a_grid_step():
    res = LrTransferFitter().fit(grid())
    assert res.status == "ok" and len(res.optima) == 8
    for o in res.optima:
        assert o.status == "ok"
        assert abs(np.log2(o.lr_opt / lr_opt_true(o.parametrization, o.width))) < 0.15  # grid step = 1 in log2
        assert o.loss_opt <= o.loss.min()


def test_drift_sp_moves_mup_stays():
    res = LrTransferFitter().fit(grid())
    sp, mup = res.drift("sp"), res.drift("mup")
    assert sp.width_range == 8 and sp.grid_factor == pytest.approx(2.0)
    assert sp.ratio == pytest.approx(1 / 8, rel=0.1) and sp.slope == pytest.approx(-1.0, abs=0.05)
    assert sp.grid_steps == pytest.approx(-3.0, abs=0.15) and sp.grid_points_moved == -3
    assert not sp.within_one_grid_step
    assert mup.ratio == pytest.approx(8**0.05, rel=0.1) and mup.slope == pytest.approx(0.05, abs=0.05)
    assert abs(mup.grid_steps) < 0.3 and mup.grid_points_moved == 0 and mup.within_one_grid_step
    assert np.isfinite(sp.slope_se) and sp.slope_se < 0.05
    d = json.loads(json.dumps(res.to_dict()))
    assert d["drift"]["mup"]["within_one_grid_step"] is True and len(d["optima"]) == 8


def test_noisy_grid_still_close():
    res = LrTransferFitter().fit(grid(noise=0.002, seed=3))
    for o in res.optima:
        assert abs(np.log2(o.lr_opt / lr_opt_true(o.parametrization, o.width))) < 0.5


def test_edge_of_grid_is_reported_not_extrapolated():
    res = LrTransferFitter().fit(grid(opt=lambda p, w: 3e-4 * 32 / w, pars=("sp",)))
    assert res.status == "doubtful"
    for o in res.optima:
        assert o.status == "edge_low" and o.lr_opt == LRS[0]
    assert res.drift("sp").status == "doubtful" and "bound" in res.drift("sp").message
    high = LrTransferFitter().fit(grid(opt=lambda p, w: 1.0, pars=("mup",)))
    assert all(o.status == "edge_high" and o.lr_opt == LRS[-1] for o in high.optima)


def test_diverged_runs_excluded_and_listed():
    df = grid(opt=lambda p, w: 3e-2 * 32 / w)
    # the widest SP model diverges from 8e-3 up: its best finished LR is the largest that did not diverge
    bad = (df["parametrization"] == "sp") & (df["d_model"] == 256) & (df["lr"] >= 8e-3)
    df["diverged"] = bad
    df.loc[bad, "loss"] = np.nan
    res = LrTransferFitter().fit(df)
    o = res.optimum("sp", 256)
    assert o.status == "below_divergence" and o.lr_opt == pytest.approx(4e-3)
    assert o.diverged_lrs == tuple(LRS[LRS >= 8e-3]) and "diverged" in o.message
    assert res.optimum("sp", 32).status == "ok"


def test_through_fit_api_diverged_rows_are_dropped_and_noted():
    from scaleflow.fit.api import FitOptions, fit

    df = grid(opt=lambda p, w: 3e-2 * 32 / w)
    df["run_id"] = [f"r{i}" for i in range(len(df))]
    df["diverged"] = (df["d_model"] == 256) & (df["lr"] >= 8e-3)
    d = fit(df, FitOptions(law="lr-transfer")).to_dict()
    assert len(d["excluded"]["diverged"]) == 2 * 5
    by = {(o["parametrization"], o["width"]): o for o in d["lr_transfer"]["optima"]}
    assert by[("sp", 256.0)]["status"] == "below_divergence"  # larger grid LRs missing at this width
    assert by[("mup", 64.0)]["status"] == "ok"


def test_repeated_runs_are_averaged():
    df = grid(pars=("mup",))
    twice = pd.concat([df.assign(loss=df["loss"] + 0.01), df.assign(loss=df["loss"] - 0.01)])
    res = LrTransferFitter().fit(twice)
    assert "averaged" in res.message
    assert res.optimum("mup", 64).lr_opt == pytest.approx(LrTransferFitter().fit(df).optimum("mup", 64).lr_opt)


def test_without_parametrization_column_one_group():
    res = LrTransferFitter().fit(grid(pars=("mup",)).drop(columns="parametrization"))
    assert [d.parametrization for d in res.drifts] == ["all"]


def test_bad_input_is_fit_error():
    df = grid(pars=("mup",))
    with pytest.raises(FitError, match="needs column"):
        LrTransferFitter().fit(df.drop(columns="d_model"))
    with pytest.raises(FitError, match="positive"):
        LrTransferFitter().fit(df.assign(lr=0.0))
    with pytest.raises(FitError, match="at least 2 finished learning rates"):
        LrTransferFitter().fit(df[df["lr"] == LRS[3]])
    with pytest.raises(FitError, match="not numeric"):
        LrTransferFitter().fit(df.assign(d_model="wide"))
    one_width = LrTransferFitter().fit(df[df["d_model"] == 64])  # optima, but no drift
    assert one_width.drifts == () and "only one width" in one_width.skipped["mup drift"]


def test_plot_and_sections(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scaleflow.report.transfer import plot_result as plot, sections

    res = LrTransferFitter().fit(grid())
    assert plot(res, tmp_path, plt) == ["lr_transfer.png"] and (tmp_path / "lr_transfer.svg").exists()
    secs = sections({"lr_transfer": res.to_dict()})
    assert len(secs) == 2 and len(secs[0].rows) == 8 and sections({}) == []
