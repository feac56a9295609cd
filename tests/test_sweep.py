"""Studies: planning, the local launcher, re-sweeping, status and collect, end to end."""

import json
import subprocess
import sys

import pytest

from conftest import run_cli
from scaleflow.config import compose_study
from scaleflow.errors import ConfigError, StoreError
from scaleflow.plan import isoflop
from scaleflow.collect import collect
from scaleflow.store import run_dirs, study_states
from scaleflow.sweep import sweep

STUDY = """
defaults:
  - config
  - study: isoflop
  - _self_
study:
  name: micro
  budgets: [2e9, 4e9]
  shapes:
    - {n_layer: 1, d_model: 8, n_head: 1}
    - {n_layer: 1, d_model: 16, n_head: 2}
  min_steps: 10
model: {seq_len: 32}
trainer: {batch_size: 8, eval_every: 1000000, eval_sequences: 16, log_every: 5, checkpoint_every: 20}
launcher: {max_parallel: 2}
"""


@pytest.fixture
def study_file(tmp_path):
    path = tmp_path / "micro.yaml"
    path.write_text(STUDY)
    return path


def test_isoflop_plan_rounds_to_whole_batches_and_records_actual_flops(study_file, tmp_path):
    cfg = compose_study(str(study_file), [f"study_dir={tmp_path / 's'}"])
    specs = isoflop(cfg)
    assert len(specs) == 4
    for spec in specs:
        assert spec.steps == int(spec.budget / spec.flops_per_token // (8 * 32))
        assert spec.flops <= spec.budget < spec.flops + spec.tokens_per_step * spec.flops_per_token
    assert len({s.run_id for s in specs}) == 4


def test_min_steps_drops_models_and_an_impossible_budget_is_an_error(study_file):
    cfg = compose_study(str(study_file), ["study.min_steps=400"])
    assert all(s.counts.params_with_head < 5000 for s in isoflop(cfg))
    with pytest.raises(ConfigError, match="too small for every model"):
        isoflop(compose_study(str(study_file), ["study.budgets=[1e6]"]))


@pytest.mark.parametrize(
    "override,message",
    [("study.budgets=[-1e9]", "positive"), ("study.shapes=[]", "ladder is empty"), ("study.budgets=[]", "no budgets")],
)
def test_bad_studies(study_file, override, message):
    with pytest.raises(ConfigError, match=message):
        isoflop(compose_study(str(study_file), [override]))


def test_sweep_runs_skips_and_grows(study_file, tmp_path):
    study_dir = tmp_path / "study"
    cfg = compose_study(str(study_file), [f"study_dir={study_dir}"])
    first = sweep(cfg, "isoflop")
    assert first.launched == 4 and not first.outcome.failed
    assert [s.state for s in study_states(study_dir)] == ["done"] * 4
    mtimes = {p: p.stat().st_mtime_ns for p in study_dir.glob("*/summary.json")}

    again = sweep(cfg, "isoflop")  # nothing new: nothing trains, nothing is overwritten
    assert again.launched == 0 and again.skipped_done == 4
    assert {p: p.stat().st_mtime_ns for p in study_dir.glob("*/summary.json")} == mtimes

    grown = sweep(compose_study(str(study_file), [f"study_dir={study_dir}", "study.budgets=[1e9,2e9,4e9]"]), "isoflop")
    assert grown.launched == 2 and grown.skipped_done == 4

    table = collect(study_dir).runs
    assert len(table) == 6 and table["loss"].notna().all()
    assert set(table["budget"]) == {1e9, 2e9, 4e9}


def test_force_retrains_but_keeps_the_old_results(study_file, tmp_path):
    study_dir = tmp_path / "study"
    cfg = compose_study(str(study_file), [f"study_dir={study_dir}", "study.budgets=[2e9]"])
    sweep(cfg, "isoflop")
    forced = sweep(cfg, "isoflop", force=True)
    assert forced.launched == 2
    for run in run_dirs(study_dir):
        assert (run / "previous" / "0" / "summary.json").exists() and (run / "summary.json").exists()


def test_an_unfinished_run_resumes_from_its_checkpoint(study_file, tmp_path):
    study_dir = tmp_path / "study"
    cfg = compose_study(str(study_file), [f"study_dir={study_dir}", "study.budgets=[4e9]",
                                          "study.shapes=[{n_layer: 1, d_model: 8, n_head: 1}]"])
    spec = isoflop(cfg)[0]
    from scaleflow.store import register
    run_dir = register(study_dir, [spec], "micro", "isoflop")[0]
    assert subprocess.run([sys.executable, "-m", "scaleflow.worker", str(run_dir), "--until", "40"]).returncode == 0
    assert not (run_dir / "summary.json").exists()
    assert study_states(study_dir)[0].state == "stopped"
    report = sweep(cfg, "isoflop")
    assert report.launched == 1
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines][:3] == [0, 1, 5] and lines[-1]["step"] == spec.steps


def test_cli_dry_run_and_status(study_file, tmp_path):
    out = run_cli("sweep", "isoflop", str(study_file), "--dry-run", f"study_dir={tmp_path / 's'}")
    assert out.returncode == 0, out.stderr
    assert "4 runs" in out.stdout and not (tmp_path / "s").exists()
    out = run_cli("status", str(tmp_path / "nope"))
    assert out.returncode == 2 and "not a study directory" in out.stderr


def test_cli_bad_input_is_one_line(study_file):
    for args, message in [
        (["sweep", "isoflop", "no_such_study"], "unknown study"),
        (["sweep", "isoflop", str(study_file), "study.budgets=[0]"], "positive"),
        (["sweep", "isoflop", str(study_file), "study.bugdets=[1e9]"], "bugdets"),
        (["sweep", "lr-bs", str(study_file)], "not lr_bs"),
    ]:
        out = run_cli(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_study_names_cannot_escape_the_runs_directory(study_file):
    cfg = compose_study(str(study_file), ["study.name=../../etc"])
    from scaleflow.store import study_dir_for
    with pytest.raises(StoreError, match="plain name"):
        study_dir_for(cfg)


def test_no_reachable_cluster_is_a_one_line_error(study_file, tmp_path):
    import os

    env = {**os.environ, "PATH": "/nonexistent"}
    study_file.write_text(STUDY.replace("launcher: {max_parallel: 2}\n", ""))  # a local launcher's key
    out = run_cli("sweep", "isoflop", str(study_file), f"study_dir={tmp_path / 's'}", "launcher=slurm", env=env)
    assert out.returncode == 2 and "no SLURM client" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


# Configs that compose (the study's own config is valid) but plan runs that a worker would
# refuse when it starts: each planner must refuse them itself, naming the run.
WORKER_REFUSES = {
    # the larger model's 180-step WSD run at 2e9 FLOPs decays from step 144, before its
    # 150-step warmup ends (the other three runs are long enough)
    "isoflop": (["schedule=wsd", "schedule.warmup_steps=150"], "shorter than its warmup"),
    # a grid batch size that grad_accum does not divide
    "lr_bs": (["study=lr_bs", "study.budgets=[4e9]", "study.shapes=[{n_layer: 1, d_model: 8, n_head: 1}]",
               "study.lrs=[1e-3]", "study.batch_sizes=[8,12]", "trainer.grad_accum=8"], "multiple of trainer.grad_accum"),
    # every width's run is 20 steps: its WSD decay starts at step 16, before a 17-step warmup ends
    # (a study file of its own: the isoflop study's budgets and shapes are not mup_transfer keys)
    "mup_transfer": (["study.widths=[16,32]", "study.lrs=[1e-3]", "trainer.steps=20",
                      "schedule=wsd", "schedule.warmup_steps=17"], "shorter than its warmup"),
}
MUP_STUDY = STUDY.replace("study: isoflop", "study: mup_transfer").replace(
    STUDY[STUDY.index("  budgets"):STUDY.index("  min_steps")], "")


def test_a_study_key_of_another_kind_is_an_error(study_file):
    with pytest.raises(ConfigError, match="lrs"):
        compose_study(str(study_file), ["study.lrs=[1e-3]"])
    mup_file = study_file.with_name("mup.yaml")
    mup_file.write_text(MUP_STUDY.replace("  min_steps", "  budgets: [1e9]\n  min_steps"))
    with pytest.raises(ConfigError, match="budgets"):
        compose_study(str(mup_file))
    # a study file that names its kind as a key instead of in its defaults list is typed the same
    by_key = study_file.with_name("by_key.yaml")
    by_key.write_text(STUDY.replace("  - study: isoflop\n", "").replace("  name: micro", "  name: micro\n  kind: isoflop"))
    assert compose_study(str(by_key)).study.max_tokens_per_param is None
    by_key.write_text(by_key.read_text().replace("  min_steps", "  lrs: [1e-3]\n  min_steps"))
    with pytest.raises(ConfigError, match="study.lrs is not a setting of isoflop studies"):
        compose_study(str(by_key))


@pytest.mark.parametrize("kind", sorted(WORKER_REFUSES))
def test_a_plan_refuses_a_run_its_worker_would_refuse(study_file, tmp_path, monkeypatch, kind):
    from scaleflow import plan
    from scaleflow.store import register
    from scaleflow.sweep import plan_study
    from scaleflow.worker import execute_run

    overrides, message = WORKER_REFUSES[kind]
    if kind == "mup_transfer":
        study_file.write_text(MUP_STUDY)
    cfg = compose_study(str(study_file), [f"study_dir={tmp_path / 's'}", *overrides])  # the study itself is valid
    with pytest.raises(ConfigError, match=message) as refused:
        plan_study(cfg, kind)
    assert str(refused.value).startswith("planned run ")
    # Without the plan-time check the same run is planned, and its worker refuses it with the
    # same words once it starts: the plan applies the worker's own checks, not a copy.
    monkeypatch.setattr(plan, "check_runnable", lambda spec: None)
    specs = plan_study(cfg, kind)
    bad = next(s for s in specs if s.run_id in str(refused.value))
    run_dir = register(tmp_path / "s", [bad], "micro", kind)[0]
    with pytest.raises(ConfigError) as at_start:
        execute_run(run_dir)
    assert str(refused.value).endswith(str(at_start.value))


def test_cli_dry_run_refuses_what_a_worker_would_refuse(study_file, tmp_path):
    out = run_cli("sweep", "isoflop", str(study_file), "--dry-run", f"study_dir={tmp_path / 's'}",
                  *WORKER_REFUSES["isoflop"][0])
    assert out.returncode == 2, out.stdout
    assert "shorter than its warmup" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_the_plan_time_length_check_gives_the_trainers_verdicts():
    """The planner (plan.check_length, no torch) and the trainer (plan.plan_run) accept and
    refuse the same runs, with the same warmup: the trainer must keep using the plan's check."""
    from omegaconf import OmegaConf

    from scaleflow.config import Config
    from scaleflow.plan import check_length
    from scaleflow.plan import plan_run

    cfg = OmegaConf.structured(Config)
    cfg.model.seq_len, cfg.trainer.batch_size = 32, 8
    refused = 0
    for name in ("wsd", "cosine", "constant"):
        for fraction in (0.1, 0.5, 0.9):
            for warmup_steps, warmup_tokens in ((-1, 0.0), (0, 0.0), (4, 0.0), (17, 0.0), (-1, 1000.0)):
                for steps in (1, 2, 3, 5, 20, 21, 40):
                    cfg.schedule.name, cfg.schedule.decay_fraction = name, fraction
                    cfg.schedule.warmup_steps, cfg.schedule.warmup_tokens = warmup_steps, warmup_tokens
                    cfg.trainer.steps = steps
                    try:
                        trainer = plan_run(cfg).warmup
                    except ConfigError as exc:
                        trainer = str(exc)
                    try:
                        planned = check_length(cfg.schedule, steps, 8 * 32)
                    except ConfigError as exc:
                        planned = str(exc)
                    assert planned == trainer, (name, fraction, warmup_steps, warmup_tokens, steps)
                    refused += isinstance(trainer, str)
    assert 0 < refused < 3 * 3 * 5 * 7


def test_a_key_of_another_launcher_is_a_one_line_error(study_file, tmp_path):
    """Each launcher has its own schema: a SLURM key under launcher=local (and the reverse) is
    refused when the config is composed, never silently ignored."""
    local = run_cli("sweep", "isoflop", str(study_file), f"study_dir={tmp_path / 's'}", "launcher.partition=gpu",
                    "--dry-run")
    assert local.returncode == 2 and "Key 'partition' not in 'LocalLauncherConfig'" in local.stderr
    slurm = run_cli("sweep", "isoflop", str(study_file), f"study_dir={tmp_path / 's'}", "launcher=slurm", "--dry-run")
    assert slurm.returncode == 2 and "Key 'max_parallel' not in 'SlurmLauncherConfig'" in slurm.stderr  # the study's
    assert len(slurm.stderr.strip().splitlines()) == 1


def test_a_script_without_a_main_guard_runs_its_study_once(study_file, tmp_path):
    """A user's script that calls sweep() at module level, with no `if __name__ == "__main__"`
    guard: its jobs are forked, and none of them runs the script again."""
    ran = tmp_path / "ran"
    script = tmp_path / "my_study.py"
    script.write_text(
        "from scaleflow.config import compose_study\nfrom scaleflow.sweep import sweep\n"
        f"with open({str(ran)!r}, 'a') as f:\n    f.write('once ')\n"
        f"report = sweep(compose_study({str(study_file)!r}, ['study_dir={tmp_path / 's'}', 'study.budgets=[2e9]']), "
        "'isoflop')\nassert report.launched == 2 and not report.outcome.failed, report.outcome\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert ran.read_text() == "once "


def test_an_lr_bs_grid_for_every_shape_at_every_budget(study_file):
    """study.every_shape plans Step Law's (N, D) grid; without it two shapes for three budgets
    is an error that names the setting."""
    from scaleflow.plan import lr_bs

    base = ["study=lr_bs", "study.budgets=[4e9,8e9,1.6e10]", "study.lrs=[1e-3,2e-3]", "study.batch_sizes=[4]",
            "study.shapes=[{n_layer: 1, d_model: 8, n_head: 1},{n_layer: 1, d_model: 16, n_head: 1}]"]
    with pytest.raises(ConfigError, match="every_shape"):
        lr_bs(compose_study(str(study_file), base))
    specs = lr_bs(compose_study(str(study_file), base + ["study.every_shape=true"]))
    cells = {(s.budget, s.params) for s in specs}
    assert len(cells) == 6 and len(specs) == 12 and len({s.params for s in specs}) == 2
