"""The muP presets (scaleflow/conf/model/mup/*.yaml) as Hydra overrides: model/mup=cerebras | minicpm."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf

from scaleflow.config import compose_run, run_id
from scaleflow.errors import ConfigError
from scaleflow.model import GPT

WIDE = ["model.d_model=512", "model.n_head=8"]


def test_cerebras_preset():
    cfg = compose_run(["model/mup=cerebras", *WIDE])
    m = cfg.model
    assert m.parametrization == "mup"
    assert m.init_std == pytest.approx(0.08)
    assert m.mup.base_width == 256
    assert m.mup.input_mult == pytest.approx(10.0)
    assert m.mup.output_mult == pytest.approx(1.0)
    assert m.mup.scale_depth == 0.0
    assert cfg.optim.lr == pytest.approx(6e-3)
    model = GPT(OmegaConf.to_object(m))
    assert model.width_mult == pytest.approx(2.0)
    assert model.input_mult == pytest.approx(10.0)
    assert model.output_mult == pytest.approx(0.5)  # logits x alpha_out / m


def test_minicpm_preset():
    cfg = compose_run(["model/mup=minicpm", *WIDE])
    m = cfg.model
    assert m.parametrization == "mup"
    assert m.init_std == pytest.approx(0.1)
    assert m.mup.base_width == 256
    assert m.mup.input_mult == pytest.approx(12.0)
    assert m.mup.scale_depth == pytest.approx(1.4)
    assert cfg.optim.lr == pytest.approx(0.01)
    model = GPT(OmegaConf.to_object(m))
    assert model.blocks[0].residual_scale == pytest.approx(1.4 / math.sqrt(m.n_layer))


def test_command_line_overrides_win_over_a_preset():
    cfg = compose_run(["model/mup=cerebras", *WIDE, "optim.lr=1e-3", "model.mup.input_mult=5"])
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.model.mup.input_mult == pytest.approx(5.0)


def test_default_is_no_preset():
    cfg = compose_run([])
    assert cfg.model.parametrization == "sp"
    assert cfg.optim.lr == pytest.approx(3e-3)
    assert run_id(cfg) == run_id(compose_run(["model/mup=none"]))


def test_preset_errors_are_one_line():
    with pytest.raises(ConfigError, match="base_width=256 is larger than model.d_model=64"):
        compose_run(["model/mup=cerebras"])  # the tiny model is narrower than the base width
    with pytest.raises(ConfigError, match="model/mup='nope' is not one of cerebras, minicpm, none"):
        compose_run(["model/mup=nope"])
