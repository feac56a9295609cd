"""Planners: turn a study config into run specs. Pure and fast: no I/O, no torch.

- `isoflop(cfg)`: for each FLOP budget C, each model of the ladder with
  D = C / (FLOPs per token) tokens, rounded down to whole batches; models whose run would be
  shorter than `study.min_steps` steps are left out of that budget.
- `lr_bs(cfg)`: for each budget, a grid of peak LR x batch size (sequences) for the budget's
  model (one shape for every budget, or one per budget).
- `decay_branches` lives in scaleflow/branches.py.

Every planned run is checked as its worker will check it (`check_runnable`), so a plan, and
so a --dry-run, refuses what a worker would refuse only once it starts.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from scaleflow import schedules
from scaleflow.config import ModelConfig, MupConfig, run_id, typed_values, validate
from scaleflow.counting import Counts, count
from scaleflow.errors import ConfigError

_MODEL_KEYS = {f.name for f in fields(ModelConfig)}
_MUP_KEYS = {f.name for f in fields(MupConfig)}


@dataclass
class RunSpec:
    """One run of a study: its resolved config and its place in the study."""

    config: dict  # the full resolved config (plain containers)
    run_id: str
    counts: Counts
    steps: int
    tokens_per_step: int
    kind: str = "run"  # run | trunk | branch
    budget: Optional[float] = None  # the study budget this run belongs to, FLOPs
    label: str = ""
    parent: Optional[str] = None  # branches: the trunk's run id
    fork_step: Optional[int] = None  # branches: the trunk step they start from
    fork_steps: list[int] = field(default_factory=list)  # trunks: checkpoints kept for branches
    start_step: int = 0  # steps not trained by this run (a branch's share of its trunk)
    rule: str = "fixed"  # the hparams rule that set its LR, batch and weight decay (scaleflow/rules.py)

    @property
    def params(self) -> int:
        return self.counts.params(self.config["trainer"]["param_count"])

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def flops_per_token(self) -> float:
        return self.counts.flops_per_token(self.config["trainer"]["flop_count"])

    @property
    def flops(self) -> float:
        """Training FLOPs of the whole run (with trainer.flop_count)."""
        return self.tokens * self.flops_per_token

    @property
    def own_flops(self) -> float:
        """FLOPs this run itself spends (a branch reuses its trunk's first steps)."""
        return (self.steps - self.start_step) * self.tokens_per_step * self.flops_per_token

    def meta(self) -> dict:
        """What run.json records."""
        return {
            "run_id": self.run_id, "kind": self.kind, "budget": self.budget, "label": self.label,
            "parent": self.parent, "fork_step": self.fork_step, "fork_steps": self.fork_steps,
            "steps": self.steps, "flops": self.flops, "own_flops": self.own_flops, "hparams_rule": self.rule,
        }


def model_config(shape: dict) -> ModelConfig:
    """A validated ModelConfig; unknown keys are an error."""
    unknown = set(shape) - _MODEL_KEYS
    if unknown:
        raise ConfigError(f"unknown model key(s) in the ladder: {', '.join(sorted(unknown))}")
    mup = shape.get("mup", {})
    if isinstance(mup, dict):
        unknown = set(mup) - _MUP_KEYS
        if unknown:
            raise ConfigError(f"unknown model.mup key(s): {', '.join(sorted(unknown))}")
        shape = {**shape, "mup": MupConfig(**mup)}
    return ModelConfig(**shape)


def ladder(cfg) -> list[dict]:
    """The study's model shapes (model.* dicts): explicit `study.shapes` or the width/depth rule."""
    s, base = cfg.study, _plain(cfg.model)
    if s.shapes:
        shapes = [{**base, **_plain(shape)} for shape in s.shapes]
        for shape in shapes:
            model_config(shape)  # unknown keys, with the ladder's own message
        # typed as the worker types a run's config (study.shapes is untyped); rule-made shapes
        # below are typed already (typed widths, depths and head size)
        shapes = [typed_values(ModelConfig, shape, f"model shape {shape}") for shape in shapes]
    else:
        shapes = [
            {**base, "d_model": w, "n_layer": d, "n_head": max(1, w // s.head_size)}
            for d in s.depths for w in s.widths
            if s.aspect_min <= w / d and (s.aspect_max is None or w / d <= s.aspect_max)
        ]
    if not shapes:
        raise ConfigError("the model ladder is empty: give study.shapes, or study.widths and study.depths "
                          "with an aspect range that keeps some")
    for shape in shapes:
        model_config(shape)
    return shapes


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else copy.deepcopy(node)


def _check_budgets(cfg) -> list[float]:
    budgets = [float(b) for b in cfg.study.budgets]
    if not budgets:
        raise ConfigError("the study has no budgets: set study.budgets=[...] (training FLOPs)")
    bad = [b for b in budgets if not b > 0]
    if bad:
        raise ConfigError(f"budgets must be positive FLOP counts, got {bad[0]}")
    return budgets


def make_spec(base: dict, shape: dict, steps: int, **meta) -> RunSpec:
    """A run spec: `base` config with a model shape and a length in steps; ConfigError (naming
    the run) if its worker would refuse it."""
    config = copy.deepcopy(base)
    config["model"] = shape
    config["trainer"].update(steps=steps, tokens=0.0, flops=0.0)
    config["run_dir"] = config["study_dir"] = ""
    if config["command"]["template"] is not None and config["command"]["cwd"] is None:
        config["command"]["cwd"] = os.getcwd()  # where the study is planned: the command's relative paths start there
    counts = count(model_config(shape))
    spec = RunSpec(config, run_id(config), counts, steps, config["trainer"]["batch_size"] * shape["seq_len"], **meta)
    check_runnable(spec)
    return spec


class _Attrs(dict):
    """A plain config dict read with attribute access, as validate() reads a DictConfig."""

    def __getattr__(self, key: str) -> Any:
        try:
            value = self[key]
        except KeyError:
            raise AttributeError(key) from None
        return _Attrs(value) if isinstance(value, dict) else value


def check_runnable(spec: RunSpec) -> None:
    """Refuse at plan time a run that its worker would refuse when it starts: the checks of
    config.validate (which the worker's load_run_config applies) and of check_length (the
    trainer's length checks), on the run's own config. The planners fill a run's config with
    typed values (the composed study's, or study.shapes and study.decay_variants converted by
    typed_values), so the checks run on the plain dict: a typed merge per run would cost
    tens of milliseconds, too slow for plans of a thousand runs."""
    try:
        config = _Attrs(spec.config)
        validate(config)
        check_length(config.schedule, spec.steps, spec.tokens_per_step)
        if config.command.template is not None:
            planned_command(spec, Path("RUN_DIR"))  # an unknown placeholder fails here, not in the job
    except ConfigError as exc:
        raise ConfigError(f"planned run {spec.run_id} ({spec.label or spec.kind}): {exc}") from None


def check_length(schedule, steps: int, tokens_per_step: int) -> int:
    """A run's warmup in steps; ConfigError for a run the trainer refuses: shorter than one
    step, or a WSD run whose warmup reaches into its decay. The one place of these checks:
    the planner calls it for every planned run, plan_run for the trainer."""
    if steps < 1:
        raise ConfigError(f"the run is shorter than one step of {tokens_per_step} tokens; give a longer "
                          "trainer.tokens/flops/steps")
    warmup = schedules.absolute_warmup(schedule, tokens_per_step)
    if warmup is None:
        warmup = max(1, round(0.05 * steps))
    if schedule.name == "wsd" and warmup > schedules.decay_start(steps, schedule.decay_fraction):
        raise ConfigError(
            f"a {steps}-step WSD run is shorter than its warmup ({warmup} steps) plus decay "
            f"({schedules.decay_steps(steps, schedule.decay_fraction)} steps)"
        )
    return min(warmup, steps)


DEFAULT_STEPS = 200  # run length when none of trainer.steps/tokens/flops is given


@dataclass(frozen=True)
class RunPlan:
    """A run's length and shape, built once from its config (`plan_run`) and read by the
    trainer, the schedule and the summary: steps, warmup and decay start (`schedule`), tokens
    per step, FLOPs per token (with trainer.flop_count) and the parameter counts."""

    schedule: schedules.StepPlan
    tokens_per_step: int
    flops_per_token: float
    counts: Counts

    @property
    def steps(self) -> int:
        return self.schedule.steps

    @property
    def warmup(self) -> int:
        return self.schedule.warmup


def plan_run(cfg) -> RunPlan:
    """The plan of one run. Raises ConfigError for a run the trainer refuses (check_length)."""
    model_cfg = OmegaConf.to_object(cfg.model) if isinstance(cfg.model, DictConfig) else cfg.model
    counts = count(model_cfg)
    t = cfg.trainer
    tokens_per_step = t.batch_size * cfg.model.seq_len
    steps = run_steps(t, counts, tokens_per_step)
    steps = DEFAULT_STEPS if steps is None else steps
    warmup = check_length(cfg.schedule, steps, tokens_per_step)
    return RunPlan(schedules.StepPlan.of(steps, warmup, cfg.schedule), tokens_per_step,
                   counts.flops_per_token(t.flop_count), counts)


def spec_plan(spec: RunSpec) -> RunPlan:
    """The RunPlan of a planned run, as its worker's plan_run will build it."""
    schedule = _Attrs(spec.config["schedule"])
    warmup = check_length(schedule, spec.steps, spec.tokens_per_step)
    return RunPlan(schedules.StepPlan.of(spec.steps, warmup, schedule), spec.tokens_per_step, spec.flops_per_token,
                   spec.counts)


def planned_command(spec: RunSpec, run_dir: Path) -> list[str]:
    """The exact arguments an external trainer's run will start with (its first attempt)."""
    from scaleflow.external.template import command_argv, run_values

    values = run_values(spec.config, spec_plan(spec), run_dir, spec.run_id)
    return command_argv(_Attrs(spec.config["command"]), values)


def steps_for_flops(flops: float, counts: Counts, flop_count: str, tokens_per_step: int) -> int:
    """Whole steps of `tokens_per_step` tokens that fit in `flops` training FLOPs."""
    return int(flops / counts.flops_per_token(flop_count) // tokens_per_step)


def run_steps(trainer, counts: Counts, tokens_per_step: int) -> Optional[int]:
    """A run's length in steps from trainer.steps, .tokens or .flops; None when none is given."""
    if trainer.steps:
        return int(trainer.steps)
    if trainer.tokens:
        return int(trainer.tokens // tokens_per_step)
    if trainer.flops:
        return steps_for_flops(trainer.flops, counts, trainer.flop_count, tokens_per_step)
    return None


def _label(counts: Counts, param_count: str, budget: float) -> str:
    n = counts.params(param_count)
    return f"C={budget:.3g} N={n / 1e3:.1f}k" if n < 1e6 else f"C={budget:.3g} N={n / 1e6:.1f}M"


def isoflop(cfg) -> list[RunSpec]:
    """IsoFLOP grid: every ladder model at every budget, D = C / (FLOPs per token); each run's
    LR, batch and weight decay from the study's rule (`hparams=NAME`, scaleflow/rules.py)."""
    from scaleflow.rules import Rule

    budgets, shapes = _check_budgets(cfg), ladder(cfg)
    base, t, rule = _plain(cfg), cfg.trainer, Rule(cfg)
    specs = []
    for budget in budgets:
        for shape in shapes:
            counts = count(model_config(shape))
            n, seq = counts.params(t.param_count), shape["seq_len"]
            config, model, steps = rule.run(base, shape, budget, n, budget / counts.flops_per_token(t.flop_count),
                                            lambda batch: steps_for_flops(budget, counts, t.flop_count, batch * seq))
            if steps < cfg.study.min_steps:
                continue
            tokens = steps * config["trainer"]["batch_size"] * seq
            if cfg.study.max_tokens_per_param is not None and tokens / n > cfg.study.max_tokens_per_param:
                continue
            specs.append(make_spec(config, model, steps, budget=budget, label=_label(counts, t.param_count, budget),
                                   rule=rule.name))
    _check_nonempty(specs, budgets, cfg)
    return _unique(specs)


def lr_bs(cfg) -> list[RunSpec]:
    """DeepSeek-style grid: peak LR x batch size at each budget, for the budget's model (one shape,
    or one per budget); with study.every_shape, for every shape at every budget (Step Law's (N, D)
    grid, which `fit --law lr-bs-nd` needs to separate N from D)."""
    budgets, shapes = _check_budgets(cfg), ladder(cfg)
    s = cfg.study
    if not s.every_shape and len(shapes) not in (1, len(budgets)):
        raise ConfigError(f"an lr_bs study needs one model shape, or one per budget ({len(budgets)}), not "
                          f"{len(shapes)}; set study.every_shape=true to train every shape at every budget")
    if not s.lrs or not s.batch_sizes:
        raise ConfigError("an lr_bs study needs study.lrs and study.batch_sizes")
    if min(s.lrs) <= 0 or min(s.batch_sizes) < 1:
        raise ConfigError("study.lrs and study.batch_sizes must be positive")
    base = _plain(cfg)
    specs = []
    for i, budget in enumerate(budgets):
        for shape in shapes if s.every_shape else [shapes[i if len(shapes) > 1 else 0]]:
            specs += _lr_bs_grid(cfg, base, shape, budget)
    _check_nonempty(specs, budgets, cfg)
    return _unique(specs)


def _lr_bs_grid(cfg, base: dict, shape: dict, budget: float) -> list[RunSpec]:
    """The LR x batch-size runs of one model shape at one budget (batches too short left out)."""
    counts, specs = count(model_config(shape)), []
    for batch in cfg.study.batch_sizes:
        steps = steps_for_flops(budget, counts, cfg.trainer.flop_count, batch * shape["seq_len"])
        if steps < cfg.study.min_steps:
            continue
        for lr in cfg.study.lrs:
            run_base = copy.deepcopy(base)
            run_base["optim"]["lr"] = float(lr)
            run_base["trainer"]["batch_size"] = int(batch)
            label = f"{_label(counts, cfg.trainer.param_count, budget)} lr={lr:.3g} B={batch}"
            specs.append(make_spec(run_base, shape, steps, budget=budget, label=label))
    return specs


def mup_transfer(cfg) -> list[RunSpec]:
    """LR x width grids in each parametrization, all runs of the same length (trainer.*).

    Widths come from study.widths at depth model.n_layer, n_head = width / study.head_size;
    under muP the base width is the narrowest width, so the narrowest model is the same in
    both parametrizations and the others differ only by the muP rules.
    """
    s = cfg.study
    if not s.widths or not s.lrs:
        raise ConfigError("a mup_transfer study needs study.widths and study.lrs")
    for p in s.parametrizations:
        if p not in ("sp", "mup"):
            raise ConfigError(f"study.parametrizations: {p!r} is not sp or mup")
    base = _plain(cfg)
    specs = []
    for parametrization in s.parametrizations:
        for width in sorted(s.widths):
            shape = {**base["model"], "d_model": int(width), "n_head": max(1, int(width) // s.head_size),
                     "parametrization": parametrization}
            shape["mup"] = {**shape["mup"], "base_width": int(min(s.widths))}
            counts = count(model_config(shape))
            steps = run_steps(cfg.trainer, counts, cfg.trainer.batch_size * shape["seq_len"]) or 0
            if steps < max(1, s.min_steps):
                raise ConfigError(f"width {width}: the run length gives {steps} steps, fewer than study.min_steps")
            for lr in s.lrs:
                run_base = copy.deepcopy(base)
                run_base["optim"]["lr"] = float(lr)
                specs.append(make_spec(run_base, shape, steps, label=f"{parametrization} d={width} lr={lr:.3g}"))
    return specs


def _check_nonempty(specs: list[RunSpec], budgets: list[float], cfg) -> None:
    if not specs:
        raise ConfigError(
            f"every budget ({', '.join(f'{b:.3g}' for b in budgets)} FLOPs) is too small for every model: "
            f"no run reaches study.min_steps={cfg.study.min_steps} steps"
        )


def _unique(specs: list[RunSpec]) -> list[RunSpec]:
    """The specs without repeats (a shape or budget listed twice gives the same run id)."""
    unique: dict[str, RunSpec] = {}
    for spec in specs:
        unique.setdefault(spec.run_id, spec)
    return list(unique.values())
