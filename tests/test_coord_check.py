"""The muP coordinate check: direction of the result on small widths, outputs, bad input."""

from __future__ import annotations

import csv

import pytest
import typer
from typer.testing import CliRunner

from scaleflow.coord_check import coord_check, is_hidden, parse_widths
from scaleflow.errors import ConfigError

SMALL = ["model.seq_len=64", "trainer.batch_size=8"]  # 2 layers, widths 32..128: about a second
WIDTHS = [32, 64, 128]
STEPS = 4


@pytest.fixture(scope="module")
def result():
    return coord_check(SMALL, WIDTHS, STEPS)


def test_sp_grows_and_mup_stays_flat(result):
    sp, sp_module = result.max_hidden_growth("sp")
    mup, mup_module = result.max_hidden_growth("mup")
    assert sp > mup
    assert sp > 4.0, f"SP's largest hidden growth is only {sp:.2f}x ({sp_module})"
    for g in result.growth():
        if g["parametrization"] == "mup" and g["hidden"]:
            # grows by less than 2x, and does not vanish either
            assert 0.4 < g["growth"] < 2.0, g
    # At initialisation muP is flat too, while SP's hidden outputs already grow ~ sqrt(width).
    init = {(g["parametrization"], g["module"]): g["growth"] for g in result.growth(step=0)}
    assert all(v < 1.5 for (p, m), v in init.items() if p == "mup" and is_hidden(m))
    assert init["sp", "blocks.0.attn.qkv"] > 1.5


def test_records_every_module_width_and_step(result):
    modules = result.modules()
    assert modules[0] == "tok_emb" and modules[-1] == "logits"
    assert {"blocks.0.attn", "blocks.0.mlp", "blocks.1", "norm_f"} <= set(modules)
    assert len(result.rows) == 2 * len(WIDTHS) * (STEPS + 1) * len(modules)
    assert all(r["mean_abs"] > 0 for r in result.rows)


def test_logits_include_the_output_multiplier(result):
    # muP logits are head(x) x 1/m: at init they shrink with width (~ 1/sqrt(m)), unlike SP's.
    init = {(g["parametrization"], g["module"]): g["growth"] for g in result.growth(step=0)}
    assert init["mup", "logits"] < 0.75 < init["sp", "logits"]


def _app() -> typer.Typer:
    from rich.console import Console

    from scaleflow.cli_mup import register

    app = typer.Typer()

    @app.callback()
    def _root() -> None:  # a group, as in scaleflow's own app
        pass

    register(app, Console(width=160))
    return app


def test_cli_writes_table_and_plot(tmp_path):
    out = tmp_path / "cc"
    res = CliRunner().invoke(_app(), ["coord-check", *SMALL, "model.n_layer=1", "--widths", "32,64",
                                      "--steps", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "coord_check.png").stat().st_size > 10_000
    with open(out / "coord_check.csv") as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) == {"parametrization", "width", "step", "module", "mean_abs"}
    assert {r["parametrization"] for r in rows} == {"sp", "mup"}
    assert {int(r["step"]) for r in rows} == {0, 1, 2}
    assert "growth" in res.output and "blocks.0.mlp" in res.output


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"widths": [32, 64], "base_width": 64}, "base width 64 is larger than width 32"),
        ({"widths": [30, 64]}, "width 30 is not divisible by model.n_head=4"),
        ({"widths": [64]}, "at least two widths"),
        ({"widths": [32, 64], "steps": 0}, "--steps"),
    ],
)
def test_bad_input_is_a_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        coord_check(SMALL, **kwargs)


def test_bad_widths_text():
    assert parse_widths("128, 64,64,256") == [64, 128, 256]
    for text in ("64", "64,abc", "0,64"):
        with pytest.raises(ConfigError):
            parse_widths(text)


def test_cli_bad_input_raises_config_error(tmp_path):
    res = CliRunner().invoke(_app(), ["coord-check", "--widths", "30,64", "--out", str(tmp_path)])
    assert isinstance(res.exception, ConfigError)
    assert "\n" not in str(res.exception)
