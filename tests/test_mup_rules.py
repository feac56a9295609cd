"""muP's per-role rules (docs/mup.md table; Yang et al., Tensor Programs V, Table 3 for Adam),
checked directly on GPT.param_groups and the initialisation against hand-computed numbers.

The model: 2 layers, d_model 256, base width 64, so the width multiplier is m = 256 / 64 = 4,
init_std 0.02, optim weight decay 0.1. By hand, from the table:
  hidden matrices (QKV, attention out, MLP in and out): Adam LR lr / m = lr x 0.25,
    decay 0.1 x m = 0.4 (weight_decay_scaling=width), init std 0.02 / sqrt(4) = 0.01,
    out-projections (attn.proj, mlp.proj) also / sqrt(2 n_layer) = / 2: 0.005;
  embedding and readout matrices: LR lr, decay 0.1, init std 0.02;
  vectors (norm gains): LR lr, no decay, ones.
Under SP the same model has every LR multiplier 1, decay 0.1, hidden std 0.02, out-proj 0.01.
"""

from __future__ import annotations

import pytest
import torch

from conftest import TINY, run_cli
from scaleflow.config import ModelConfig, MupConfig, compose_run
from scaleflow.errors import ConfigError
from scaleflow.model import GPT

UNIT = {"embedding": 1.0, "hidden": 1.0, "readout": 1.0, "vector": 1.0}
HIDDEN = {"blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight", "blocks.0.mlp.fc.weight", "blocks.0.mlp.proj.weight",
          "blocks.1.attn.qkv.weight", "blocks.1.attn.proj.weight", "blocks.1.mlp.fc.weight", "blocks.1.mlp.proj.weight"}


def _model(parametrization="mup", seed=0, **mup) -> GPT:
    cfg = ModelConfig(n_layer=2, d_model=256, n_head=4, seq_len=16, parametrization=parametrization,
                      tie_embeddings=False, init_std=0.02, mup=MupConfig(base_width=64, **mup))
    torch.manual_seed(seed)
    return GPT(cfg)


def _groups(model: GPT, weight_decay=0.1, mults=UNIT) -> dict[str, dict]:
    """role -> {"lr_mult", "weight_decay", "names"} from model.param_groups."""
    names = {id(p): n for n, p in model.named_parameters()}
    groups = model.param_groups(weight_decay, dict(mults))
    assert len({g["role"] for g in groups}) == len(groups)  # one group per role
    return {g["role"]: {"lr_mult": g["lr_mult"], "weight_decay": g["weight_decay"],
                        "names": {names[id(p)] for p in g["params"]}} for g in groups}


def _rules(groups: dict[str, dict]) -> dict[str, float]:
    """{"hidden lr_mult": ..., "hidden weight_decay": ..., ...}: flat, for pytest.approx."""
    return {f"{role} {key}": g[key] for role, g in groups.items() for key in ("lr_mult", "weight_decay")}


def _table(**rows: tuple[float, float]) -> dict[str, float]:
    return _rules({role: {"lr_mult": lr, "weight_decay": wd} for role, (lr, wd) in rows.items()})


def test_mup_lr_and_weight_decay_per_role():
    groups = _groups(_model())
    assert groups["hidden"]["names"] == HIDDEN
    assert groups["embedding"]["names"] == {"tok_emb.weight"}
    assert groups["readout"]["names"] == {"head.weight"}
    assert groups["vector"]["names"] == {"blocks.0.norm1.weight", "blocks.0.norm2.weight", "blocks.1.norm1.weight",
                                         "blocks.1.norm2.weight", "norm_f.weight"}
    assert _rules(groups) == pytest.approx(_table(hidden=(0.25, 0.4), embedding=(1.0, 0.1), readout=(1.0, 0.1),
                                                  vector=(1.0, 0.0)))


def test_mup_rules_compose_with_the_per_role_multipliers_and_decay_scaling():
    mults = {"embedding": 2.0, "hidden": 3.0, "readout": 5.0, "vector": 7.0}
    # hidden: 3 / m = 0.75 and decay 0.4; the others keep their multiplier
    assert _rules(_groups(_model(), 0.1, mults)) == pytest.approx(
        _table(hidden=(0.75, 0.4), embedding=(2.0, 0.1), readout=(5.0, 0.1), vector=(7.0, 0.0)))
    plain = _groups(_model(weight_decay_scaling="none"))
    assert (plain["hidden"]["lr_mult"], plain["hidden"]["weight_decay"]) == pytest.approx((0.25, 0.1))
    assert _rules(_groups(_model("sp"))) == pytest.approx(
        _table(hidden=(1.0, 0.1), embedding=(1.0, 0.1), readout=(1.0, 0.1), vector=(1.0, 0.0)))


def _stds(model: GPT) -> dict[str, float]:
    return {n: p.detach().double().std().item() for n, p in model.named_parameters() if p.ndim == 2}


@pytest.mark.parametrize("parametrization, hidden, out_proj", [("mup", 0.01, 0.005), ("sp", 0.02, 0.01)])
def test_init_std_per_role(parametrization, hidden, out_proj):
    # Each matrix has 65k to 262k entries: the sample std is within 0.3% of the true one (1 sd).
    model = _model(parametrization)
    want = {n: (out_proj if n.endswith("proj.weight") else hidden) for n in HIDDEN}
    want.update({"tok_emb.weight": 0.02, "head.weight": 0.02})
    assert _stds(model) == pytest.approx(want, rel=0.02)
    means = [p.detach().double().mean().item() for n, p in model.named_parameters() if p.ndim == 2]
    assert max(map(abs, means)) < 1e-3
    assert all(torch.equal(p, torch.ones_like(p)) for n, p in model.named_parameters() if p.ndim == 1)


def test_zero_readout_and_zero_query_with_untied_embeddings():
    model = _model(zero_readout=True, zero_query=True)
    assert not model.head.weight.any()
    assert model.tok_emb.weight.detach().std().item() == pytest.approx(0.02, rel=0.02)
    for block in model.blocks:
        q, kv = block.attn.qkv.weight[:256], block.attn.qkv.weight[256:]
        assert not q.any() and kv.detach().std().item() == pytest.approx(0.01, rel=0.02)


MUP = ["model.parametrization=mup", "model.mup.base_width=32"]


def test_readout_settings_that_a_tied_embedding_cannot_honour_are_errors():
    with pytest.raises(ConfigError, match="zero_readout=true needs model.tie_embeddings=false"):
        compose_run(MUP + ["model.mup.zero_readout=true"])
    with pytest.raises(ConfigError, match="lr_mult_readout=2.0 needs model.tie_embeddings=false"):
        compose_run(["optim.lr_mult_readout=2"])
    with pytest.raises(ConfigError, match="zero_readout"):
        ModelConfig(parametrization="mup", mup=MupConfig(base_width=32, zero_readout=True))
    untied = compose_run(MUP + ["model.tie_embeddings=false", "model.mup.zero_readout=true", "optim.lr_mult_readout=2"])
    assert untied.model.mup.zero_readout and untied.optim.lr_mult_readout == 2


@pytest.mark.parametrize("override", ["model.mup.zero_readout=true", "optim.lr_mult_readout=0.5"])
def test_the_cli_says_so_in_one_line_with_exit_2(tmp_path, override):
    # (tiny and one step long, so that were the check missing the run would end at once)
    out = run_cli("train", f"run_dir={tmp_path / 'run'}", *TINY, "trainer.steps=1", *MUP, override)
    assert out.returncode == 2, out.stderr
    assert "tie_embeddings=false" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr + out.stdout and not (tmp_path / "run").exists()
