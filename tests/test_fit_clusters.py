"""The cluster bootstrap (`scaleflow fit --resample trunks`): WSD branches of one trunk share
its noise (initialisation, data order), so resampling them as independent runs understates
the intervals. Judged by coverage of a known law on simulated branched studies."""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from scaleflow.fit.isoflop import IsoFlopFitter
from scaleflow.fit.laws import resample_weights
from scaleflow.fit.parametric import ParametricFitter
from test_fit_cli import app

E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28  # Hoffmann et al. (2022)
A_TRUE = BETA / (ALPHA + BETA)  # N_opt ~ C^a


def branched_study(seed: int, trunk_noise: float = 0.01, run_noise: float = 0.0005) -> pd.DataFrame:
    """10 model sizes, each one trunk branched at every budget of 10 (1e18..3e20 FLOPs) with 2 to
    400 tokens per parameter. Each trunk's branches share one log-loss offset (trunk_noise),
    and each branch has its own (run_noise)."""
    rng = np.random.default_rng(seed)
    sizes = np.geomspace(2e7, 2e9, 10)
    offsets = rng.normal(0.0, trunk_noise, len(sizes))
    rows = []
    for i, N in enumerate(sizes):
        for C in np.geomspace(1e18, 3e20, 10):
            D = C / (6.0 * N)
            if 2 <= D / N <= 400:
                loss = (E + A / N**ALPHA + B / D**BETA) * np.exp(offsets[i] + rng.normal(0.0, run_noise))
                rows.append({"run_id": f"b{i}-{C:.0e}", "parent": f"trunk{i}", "params": N, "tokens": D,
                             "flops": C, "budget": C, "loss": loss})
    return pd.DataFrame(rows)


def test_a_cluster_draw_gives_every_run_of_a_group_its_group_count():
    groups = np.array(["x", "y", "x", "z", "y", "x"])
    w = resample_weights(np.random.default_rng(0), len(groups), 500, groups)
    for g in "xyz":
        members = w[:, groups == g]
        assert (members == members[:, :1]).all()
    per_group = w[:, [0, 1, 3]]  # one column of each group
    assert (per_group.sum(axis=1) == 3).all()  # as many draws as groups
    assert (per_group == 0).any() and (per_group >= 2).any()  # a real resample, not the identity


def _a_interval(approach: str, df: pd.DataFrame, cluster) -> tuple[float, float]:
    if approach == "approach3":
        return tuple(ParametricFitter(n_bootstrap=60, cluster=cluster).fit(df).ci["a"])
    return tuple(IsoFlopFitter(n_bootstrap=60, cluster=cluster).fit(df).law.n_law.ci["exponent"])


@pytest.mark.parametrize("approach", ["approach3", "approach2"])
def test_resampling_trunks_covers_the_true_exponent_where_resampling_runs_does_not(approach):
    studies = [branched_study(seed) for seed in range(20)]
    covered, width = {}, {}
    for cluster in (None, "trunk"):
        intervals = [_a_interval(approach, df.assign(trunk=df["parent"]), cluster) for df in studies]
        covered[cluster] = np.mean([lo <= A_TRUE <= hi for lo, hi in intervals])
        width[cluster] = np.median([hi - lo for lo, hi in intervals])
    assert covered["trunk"] >= 0.9, covered  # nominal 95%
    assert covered[None] <= covered["trunk"] - 0.1, covered  # runs as independent: too narrow
    assert width["trunk"] > 1.4 * width[None], width


def test_the_cli_resamples_trunks_on_request_and_says_when_it_does_not(tmp_path):
    path = tmp_path / "branches.csv"
    branched_study(0).to_csv(path, index=False)
    base = ["fit", str(path), "--law", "approach3", "--bootstrap", "40", "--json"]
    runs = json.loads(CliRunner().invoke(app(), base).stdout)
    assert any("shared trunks" in n and "--resample trunks" in n for n in runs["notes"])
    result = CliRunner().invoke(app(), [*base, "--resample", "trunks"])
    assert result.exit_code == 0, result.output
    trunks = json.loads(result.stdout)
    assert trunks["resample"] == "trunks" and not any("shared trunks" in n for n in trunks["notes"])
    assert trunks["approach3"]["a"] == runs["approach3"]["a"]  # the fit itself is the same
    width = {k: d["approach3"]["ci"]["a"][1] - d["approach3"]["ci"]["a"][0] for k, d in (("runs", runs), ("trunks", trunks))}
    assert width["trunks"] > width["runs"], width
