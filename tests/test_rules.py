"""Hyperparameters that follow each run (scaleflow/rules.py, hparams=NAME): each rule's values
at known points, and the IsoFLOP planner giving every run its own LR, batch and weight decay."""

import json

import pytest

from conftest import run_cli
from scaleflow.config import compose_study
from scaleflow.errors import ConfigError
from scaleflow.plan import isoflop
from scaleflow.rules import deepseek, olmo
from scaleflow.sweep import plan_rows


def test_published_rules_at_their_reference_points():
    lr, batch = deepseek(1e20, 1e9)  # DeepSeek LLM at C = 1e20: eta 9.9e-4, B 1.0M tokens
    assert lr == pytest.approx(9.86e-4, rel=0.01) and batch == pytest.approx(1.0e6, rel=0.05)
    lr, batch = olmo(0.0, 108e6)  # the OLMo ladder's reference model
    assert lr == pytest.approx(0.0047) and batch == pytest.approx(160 * 2048)
    assert olmo(0.0, 8 * 108e6)[0] == pytest.approx(0.0047 / 2)  # N^(-1/3)


def test_a_power_law_of_n_sets_each_models_lr():
    specs = isoflop(compose_study("isoflop_cpu", ["hparams=power", "hparams.lr_ref=0.01", "hparams.n_ref=3e4",
                                                  "hparams.exponent=-0.75"]))
    assert {s.rule for s in specs} == {"power"} and len({s.params for s in specs}) >= 5
    for s in specs:
        assert s.config["optim"]["lr"] == pytest.approx(0.01 * (s.params / 3e4) ** -0.75)
        assert s.config["trainer"]["batch_size"] == 16  # the study's batch
    with pytest.raises(ConfigError, match="positive hparams.lr_ref"):
        isoflop(compose_study("isoflop_cpu", ["hparams=power", "hparams.lr_ref=0"]))


def test_the_isoflop_plan_takes_each_runs_lr_batch_and_weight_decay_from_the_rule():
    specs = isoflop(compose_study("isoflop_cpu", ["hparams=deepseek", "hparams.weight_decay_timescale=0.25"]))
    fixed = isoflop(compose_study("isoflop_cpu"))
    assert {s.rule for s in specs} == {"deepseek"} and {s.rule for s in fixed} == {"fixed"}
    for s in specs:
        o, t = s.config["optim"], s.config["trainer"]
        lr, tokens = deepseek(s.budget, s.params)
        assert o["lr"] == pytest.approx(lr)
        assert t["batch_size"] == max(1, round(tokens / 64))  # sequences of model.seq_len = 64 bytes
        assert o["lr"] * o["weight_decay"] * 0.25 * s.steps == pytest.approx(1.0)  # the AdamW timescale
    by_budget = {}
    for s in specs:
        by_budget.setdefault(s.budget, set()).add(s.config["optim"]["lr"])
    assert len(by_budget) == 3 and all(len(v) == 1 for v in by_budget.values())  # the LR follows C
    assert len({v.pop() for v in by_budget.values()}) == 3
    rows = plan_rows(specs, 2e10)
    assert rows[0]["rule"] == "deepseek" and rows[0]["wd"] == specs[0].config["optim"]["weight_decay"]
    # the fixed rule plans the runs a study had before rules existed: the same run ids
    assert [s.run_id for s in fixed][:2] == ["341a1acc0d", "5b8b789dff"]


def test_an_lr_bs_fit_feeds_the_isoflop_study(tmp_path):
    fit = {"lr_bs": {"lr": {"k": 2.0, "exponent": -0.2}, "batch": {"k": 1e-3, "exponent": 0.25},
                     "batch_unit": "batch_size"}}
    path = tmp_path / "fit.json"
    path.write_text(json.dumps(fit))
    specs = isoflop(compose_study("isoflop_cpu", ["hparams=lr_bs_fit", f"hparams.path={path}"]))
    for s in specs:
        assert s.config["optim"]["lr"] == pytest.approx(2.0 * s.budget**-0.2)
        assert s.config["trainer"]["batch_size"] == round(1e-3 * s.budget**0.25)  # sequences
    with pytest.raises(ConfigError, match="is not a saved lr-bs fit"):
        isoflop(compose_study("isoflop_cpu", ["hparams=lr_bs_fit", f"hparams.path={tmp_path / 'nope.json'}"]))


def test_mup_transfer_makes_every_run_mup_at_the_base_lr():
    specs = isoflop(compose_study("isoflop_cpu", ["hparams=mup", "hparams.base_width=12", "hparams.lr=0.01"]))
    assert all(s.config["model"]["parametrization"] == "mup" and s.config["model"]["mup"]["base_width"] == 12
               and s.config["optim"]["lr"] == 0.01 for s in specs)
    with pytest.raises(ConfigError, match="base_width"):  # wider than the narrowest model: refused at plan time
        isoflop(compose_study("isoflop_cpu", ["hparams=mup", "hparams.base_width=64"]))


def test_the_dry_run_shows_the_rule_and_a_key_of_another_rule_is_an_error():
    out = run_cli("sweep", "isoflop", "isoflop_cpu", "--dry-run", "hparams=olmo")
    assert out.returncode == 0 and "olmo" in out.stdout and "wd" in out.stdout
    bad = run_cli("sweep", "isoflop", "isoflop_cpu", "--dry-run", "hparams=olmo", "hparams.path=x.json")
    assert bad.returncode == 2 and "path" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_a_rule_in_a_study_that_sets_its_own_lr_is_an_error():
    from scaleflow.sweep import plan_study

    with pytest.raises(ConfigError, match="a lr_bs study sets them itself"):
        plan_study(compose_study("lr_bs_cpu", ["hparams=deepseek"]), "lr_bs")


def test_a_trunk_and_its_branches_share_the_rules_values_for_the_longest_branch():
    from scaleflow.branches import plan
    from scaleflow.rules import olmo

    fixed = plan(compose_study("decay_branches_cpu"))
    specs = plan(compose_study("decay_branches_cpu", ["hparams=deepseek", "hparams.batch=false",
                                                      "hparams.weight_decay_timescale=0.5"]))
    assert [s.kind for s in specs] == [s.kind for s in fixed] and {s.rule for s in specs} == {"deepseek"}
    trunks = [s for s in specs if s.kind == "trunk"]
    assert len({t.config["optim"]["lr"] for t in trunks}) == len(trunks)  # each model its own LR
    for trunk in trunks:
        family = [s for s in specs if s.parent == trunk.run_id]
        longest = max(family, key=lambda s: s.tokens)
        lr = trunk.config["optim"]["lr"]
        assert lr == pytest.approx(deepseek(longest.flops, longest.params)[0], rel=1e-3)  # budget before rounding
        assert lr * trunk.config["optim"]["weight_decay"] * 0.5 * longest.steps == pytest.approx(1.0)
        assert all(s.config["optim"] == trunk.config["optim"] for s in family)  # one stable phase
    by_n = plan(compose_study("decay_branches_cpu", ["hparams=olmo", "hparams.batch=false"]))
    assert all(s.config["optim"]["lr"] == pytest.approx(olmo(0, s.params)[0]) for s in by_n)


def test_an_lr_bs_nd_fit_sets_the_lr_by_model_size_and_tokens(tmp_path):
    fit = {"lr_bs_nd": {"lr": {"c": 800.0, "a": -1.1, "b": 0.05}, "batch": {"c": 256.0, "a": 0.0, "b": 0.0},
                        "batch_unit": "batch_tokens"}}
    path = tmp_path / "fit.json"
    path.write_text(json.dumps(fit))
    specs = isoflop(compose_study("isoflop_cpu", ["hparams=lr_bs_fit", f"hparams.path={path}", "hparams.form=nd"]))
    for s in specs:
        D = s.budget / (s.flops / s.tokens)  # the budget's tokens, before rounding to whole batches
        assert s.config["optim"]["lr"] == pytest.approx(800.0 * s.params**-1.1 * D**0.05, rel=1e-6)
        assert s.config["trainer"]["batch_size"] == 4  # 256 tokens in sequences of 64
    lrs = {s.params: s.config["optim"]["lr"] for s in specs if s.budget == specs[0].budget}
    assert lrs[min(lrs)] > 10 * lrs[max(lrs)]  # the LR follows the model at one budget
    with pytest.raises(ConfigError, match="is not a saved lr-bs fit"):  # an nd fit read as a C-only one
        isoflop(compose_study("isoflop_cpu", ["hparams=lr_bs_fit", f"hparams.path={path}"]))
