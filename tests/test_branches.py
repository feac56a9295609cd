"""WSD decay branches: exactness, compute accounting, re-sweeps, --from and bad input."""

import pytest

from conftest import metrics_without_timing, run_cli
from scaleflow.branches import accounting, plan
from scaleflow.sweep import decay_branches
from scaleflow.config import compose_study, load_run_config
from scaleflow.errors import ConfigError, StoreError
from scaleflow.files import read_json
from scaleflow.checkpoints import checkpoint_path
from scaleflow.train import train

STUDY = """
defaults:
  - config
  - study: decay_branches
  - override schedule: wsd
  - _self_
study:
  name: branches
  shapes:
    - {n_layer: 1, d_model: 16, n_head: 2}
  branch_tokens: [25600, 51200]   # 100 and 200 steps of 256 tokens
model: {seq_len: 32}
trainer: {batch_size: 8, eval_every: 20, eval_sequences: 16, log_every: 10, checkpoint_every: 50}
schedule: {warmup_steps: 10, decay_fraction: 0.2}
launcher: {max_parallel: 2}
"""


@pytest.fixture
def study_file(tmp_path):
    path = tmp_path / "branches.yaml"
    path.write_text(STUDY)
    return path


def test_a_branch_equals_a_fresh_wsd_run_bit_for_bit(study_file, tmp_path):
    study_dir = tmp_path / "study"
    cfg = compose_study(str(study_file), [f"study_dir={study_dir}"])
    report = decay_branches(cfg)
    assert not report.outcome.failed
    longest = max((s for s in report.specs if s.kind == "branch"), key=lambda s: s.steps)
    assert longest.fork_step == 160
    fresh_dir = tmp_path / "fresh"
    fresh_cfg = load_run_config(study_dir / longest.run_id / "config.yaml")
    train(fresh_cfg, fresh_dir)
    fresh = metrics_without_timing(fresh_dir)
    branch = metrics_without_timing(study_dir / longest.run_id)
    steps = {line["step"] for line in fresh}
    assert [line for line in branch if line["step"] in steps] == fresh
    evals = [line["val_loss"] for line in fresh if "val_loss" in line]
    assert len(evals) >= 10
    assert read_json(study_dir / longest.run_id / "summary.json")["val_loss"] == evals[-1]


def test_branched_flops_follow_the_formula(study_file):
    # Three budgets on a linear grid: T_max (1 - f) + f sum(T_i), against sum(T_i).
    cfg = compose_study(str(study_file), ["study.branch_tokens=[]", "study.branch_grid=linear:51200:153600:3",
                                          "schedule.decay_fraction=0.2"])
    specs = plan(cfg)
    acc = accounting(specs)
    budgets = [51200, 102400, 153600]
    fpt = specs[0].flops_per_token
    assert acc.branched_flops == pytest.approx(fpt * (0.8 * max(budgets) + 0.2 * sum(budgets)), rel=0.01)
    assert acc.independent_flops == pytest.approx(fpt * sum(budgets), rel=0.01)


def test_resweep_skips_and_from_adds_budgets_without_retraining(study_file, tmp_path):
    study_dir = tmp_path / "study"
    cfg = compose_study(str(study_file), [f"study_dir={study_dir}"])
    first = decay_branches(cfg)
    trunk = next(s for s in first.specs if s.kind == "trunk")
    trunk_dir = study_dir / trunk.run_id
    trunk_metrics = (trunk_dir / "metrics.jsonl").read_text()

    again = decay_branches(cfg)
    assert again.launched == 0 and again.skipped_done == 3

    # A new, shorter budget forks at step 120: no checkpoint there, so a job re-creates it from
    # the trunk's checkpoint at 80 (through the launcher, as any job), the branch waits for that
    # job, and the trunk itself does not train again.
    new = compose_study(str(study_file), [f"study_dir={study_dir}", "study.branch_tokens=[38400]"])
    added = decay_branches(new, from_dir=trunk_dir)
    assert added.recreated == 1 and added.launched == 2 and added.outcome.finished == 2 and not added.outcome.failed
    assert (trunk_dir / "metrics.jsonl").read_text() == trunk_metrics
    assert checkpoint_path(trunk_dir, 120).exists()


def test_a_fork_from_a_different_config_is_refused(study_file, tmp_path):
    study_dir = tmp_path / "study"
    decay_branches(compose_study(str(study_file), [f"study_dir={study_dir}", "study.branch_tokens=[25600]"]))
    trunk_dir = next(d for d in study_dir.iterdir() if (read_json(d / "run.json") or {}).get("kind") == "trunk")
    before = sorted(p.name for p in study_dir.iterdir())
    other = compose_study(str(study_file), [f"study_dir={study_dir}", "optim.lr=1e-2"])
    with pytest.raises(StoreError, match="another config"):
        decay_branches(other, from_dir=trunk_dir)
    assert sorted(p.name for p in study_dir.iterdir()) == before


def test_flop_budgets_put_every_models_branches_on_the_isoflop_curves(study_file):
    # Three models, four budgets: each model branches at D = C / (FLOPs per token) for every
    # budget it serves (>= min_steps steps, <= max_tokens_per_param), one trunk per model.
    shapes = "[{n_layer: 1, d_model: 8, n_head: 1},{n_layer: 1, d_model: 16, n_head: 2},{n_layer: 2, d_model: 32, n_head: 2}]"
    budgets = [2e9, 4e9, 8e9, 1.6e10]
    specs = plan(compose_study(str(study_file), ["study.branch_tokens=[]", f"study.branch_flops={budgets}",
                                                 f"study.shapes={shapes}", "study.min_steps=50",
                                                 "study.max_tokens_per_param=300"]))
    trunks = [s for s in specs if s.kind == "trunk"]
    branches = [s for s in specs if s.kind == "branch"]
    assert len(trunks) == 3 and {b.parent for b in branches} == {t.run_id for t in trunks}
    assert {b.budget for b in branches} == set(budgets)
    for b in branches:
        assert b.flops <= b.budget < b.flops + b.tokens_per_step * b.flops_per_token  # whole batches below C
        assert b.steps >= 50 and b.tokens / b.params <= 300
    served = {(b.params, b.budget) for b in branches}
    small, large = min(b.params for b in branches), max(b.params for b in branches)
    assert (small, 1.6e10) not in served  # too many tokens per parameter for the smallest model
    assert (large, 2e9) not in served  # too few steps for the largest
    assert (small, 2e9) in served and (large, 1.6e10) in served
    with pytest.raises(ConfigError, match="no model of the ladder serves any of study.branch_flops"):
        plan(compose_study(str(study_file), ["study.branch_tokens=[]", "study.branch_flops=[1e5]"]))
    with pytest.raises(ConfigError, match="give the branch budgets one way"):
        plan(compose_study(str(study_file), ["study.branch_flops=[1e9]"]))


@pytest.mark.parametrize(
    "override,message",
    [
        ("schedule.decay_fraction=1.5", "decay_fraction"),
        ("schedule.decay_fraction=0", "decay_fraction"),
        ("study.branch_tokens=[2560]", "shorter than its warmup"),
        ("study.decay_variants=[{decay_fraction: 1.5}]", "decay_fraction must lie in"),
        ("study.decay_variants=[{decay_shape: step}]", "decay_shape='step' is not one of"),
        ("study.decay_variants=[{decay_fraction: abc}]", "decay_variants entry"),
        ("study.decay_variants=[{warmup_steps: 5}]", "unknown decay variant key"),
        ("schedule.warmup_steps=-1", "absolute warmup"),
    ],
)
def test_bad_input(study_file, override, message):
    with pytest.raises(ConfigError, match=message):
        plan(compose_study(str(study_file), [override]))


def test_a_decay_variant_its_workers_would_refuse_is_refused_at_plan_time(study_file, tmp_path, monkeypatch):
    """An exponential decay to a final LR fraction of 0 (an LR of 0 for the whole decay) is
    refused by every branch's worker when it starts, after the trunk trained; the plan (so a
    --dry-run) refuses it first, with the worker's own words."""
    from scaleflow import plan as planner
    from scaleflow.store import register
    from scaleflow.worker import execute_run

    overrides = [f"study_dir={tmp_path / 's'}", "schedule.final_lr_fraction=0", "study.decay_variants=[{decay_shape: exponential}]"]
    cfg = compose_study(str(study_file), overrides)  # the study's own schedule (1-sqrt) is valid
    with pytest.raises(ConfigError, match="exponential needs schedule.final_lr_fraction > 0") as refused:
        plan(cfg)
    assert str(refused.value).startswith("planned run ")

    out = run_cli("decay-branches", str(study_file), "--dry-run", *overrides)
    assert out.returncode == 2, out.stdout
    assert "exponential needs schedule.final_lr_fraction > 0" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "s").exists()

    # What the check spares: without it the plan has the exponential branches, and each one's
    # worker refuses it with the same words when it starts.
    monkeypatch.setattr(planner, "check_runnable", lambda spec: None)
    specs = plan(cfg)
    bad = [s for s in specs if "exponential" in s.label]
    assert len(bad) == 2
    run_dir = register(tmp_path / "s", bad[:1], "branches", "decay_branches")[0]
    with pytest.raises(ConfigError) as at_start:
        execute_run(run_dir)
    assert str(refused.value).endswith(str(at_start.value))


def test_branches_of_a_trunk_another_process_trains_wait_for_a_later_sweep(study_file, tmp_path):
    """While another process holds the trunk (its lock), the sweep starts neither the trunk nor
    the branches whose fork checkpoints do not exist yet: nothing fails."""
    from scaleflow.lock import run_lock
    from scaleflow.sweep import plan_study

    cfg = compose_study(str(study_file), [f"study_dir={tmp_path / 's'}"])
    trunk = next(s for s in plan_study(cfg, "decay_branches") if s.kind == "trunk")
    with run_lock(tmp_path / "s" / trunk.run_id):
        report = decay_branches(cfg)
    assert report.launched == 0 and report.outcome is None
