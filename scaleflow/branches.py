"""WSD decay branches forked off shared stable-phase trunks (docs/science.md section 4).

For each model of the study: one trunk (warmup, then constant peak LR), trained to the
latest fork point, keeping a checkpoint at every fork point (1 - f) T_i; for each budget T_i
(and each decay variant), a branch that loads its fork checkpoint and decays to T_i. A
branch's config is exactly that of a fresh WSD run of length T_i, so its run id is that
run's id, and on CPU its results equal that run's bit for bit.

Cost per model, budgets T_1 < ... < T_k: T_k (1 - f) + f sum(T_i) tokens of training,
against sum(T_i) for independent runs. This module plans a study and builds its job graph;
`scaleflow.sweep.run_study` runs it like any other study.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from scaleflow import schedules
from scaleflow.config import ScheduleConfig, load_run_config, typed_values
from scaleflow.errors import ConfigError, StoreError
from scaleflow.files import read_json
from scaleflow.launch import Job
from scaleflow.plan import RunSpec, _plain, ladder, make_spec, model_config
from scaleflow.counting import count
from scaleflow.checkpoints import checkpoint_path, list_checkpoints


def _warmup_steps(cfg, tokens_per_step: int) -> int:
    warmup = schedules.absolute_warmup(cfg.schedule, tokens_per_step)
    if warmup is not None:
        return warmup
    raise ConfigError("decay branches need an absolute warmup, the same for every budget: "
                      "set schedule.warmup_steps or schedule.warmup_tokens")


def _budgets_tokens(cfg, counts) -> list[tuple[float, Optional[float]]]:
    """The study's branch budgets for one model, as (tokens, IsoFLOP budget in FLOPs or None),
    shortest first. A FLOP budget the model cannot serve (fewer than study.min_steps steps of
    the trunk's batch, or more than study.max_tokens_per_param tokens per parameter) is left out."""
    s = cfg.study
    params = counts.params(cfg.trainer.param_count)
    given = [bool(s.branch_tokens), bool(s.branch_tokens_per_param), bool(s.branch_grid), bool(s.branch_flops)]
    if sum(given) != 1:
        raise ConfigError("give the branch budgets one way: study.branch_tokens, study.branch_grid, "
                          "study.branch_tokens_per_param or study.branch_flops")
    if s.branch_flops:
        if min(float(c) for c in s.branch_flops) <= 0:
            raise ConfigError("study.branch_flops must be positive FLOP counts")
        return sorted({(float(c) / counts.flops_per_token(cfg.trainer.flop_count), float(c))
                       for c in s.branch_flops})
    if s.branch_tokens:
        budgets = [float(t) for t in s.branch_tokens]
    elif s.branch_tokens_per_param:
        budgets = [float(k) * params for k in s.branch_tokens_per_param]
    else:
        try:
            kind, low, high, n = s.branch_grid.split(":")
            low, high, n = float(low), float(high), int(n)
        except ValueError:
            raise ConfigError(f"study.branch_grid={s.branch_grid!r} is not KIND:MIN:MAX:N (KIND linear or geometric)") from None
        if kind not in ("linear", "geometric") or n < 1 or not 0 < low <= high:
            raise ConfigError(f"study.branch_grid={s.branch_grid!r} is not KIND:MIN:MAX:N with 0 < MIN <= MAX")
        budgets = list((np.linspace if kind == "linear" else np.geomspace)(low, high, n))
    if min(budgets) <= 0:
        raise ConfigError("branch budgets must be positive token counts")
    return [(tokens, None) for tokens in sorted(set(budgets))]


def _servable(cfg, budgets: list[tuple[float, Optional[float]]], params: int, tokens_per_step: int):
    """The FLOP budgets (branch_flops) a model serves: at least study.min_steps steps, at most
    study.max_tokens_per_param tokens per parameter; budgets in tokens are all kept (the
    planner refuses one too short for its warmup and decay, by name)."""
    s, kept = cfg.study, []
    for tokens, flops in budgets:
        steps = int(tokens // tokens_per_step)
        too_long = s.max_tokens_per_param is not None and steps * tokens_per_step / params > s.max_tokens_per_param
        if flops is None or (steps >= s.min_steps and not too_long):
            kept.append((tokens, flops))
    return kept


def _variants(cfg) -> list[dict]:
    base = {"decay_shape": cfg.schedule.decay_shape, "decay_fraction": cfg.schedule.decay_fraction,
            "final_lr_fraction": cfg.schedule.final_lr_fraction}
    variants = [base]
    for given in cfg.study.decay_variants:
        v = _plain(given)
        if not isinstance(v, dict):
            raise ConfigError(f"a study.decay_variants entry is a dict of {', '.join(base)}, not {v!r}")
        if set(v) - set(base):
            raise ConfigError(f"unknown decay variant key(s): {', '.join(sorted(set(v) - set(base)))}")
        # Typed as the worker's config check types them; the values themselves are checked
        # with each branch's whole config (plan.check_runnable, from make_spec).
        typed = typed_values(ScheduleConfig, v, f"study.decay_variants entry {v}")
        variants.append({**base, **{k: typed[k] for k in v}})
    unique = []
    for v in variants:
        if v not in unique:
            unique.append(v)
    return unique


def plan(cfg, shapes: Optional[list[dict]] = None) -> list[RunSpec]:
    """Trunks and branches for every model of the study (or for `shapes`)."""
    if cfg.command.template is not None:
        raise ConfigError("decay branches fork scaleflow's own checkpoints: a study with command.template "
                          "(an external trainer) cannot be branched; run its budgets as an isoflop study")
    from scaleflow.rules import Rule

    t, rule = cfg.trainer, Rule(cfg)
    specs = []
    for shape in shapes or ladder(cfg):
        counts = count(model_config(shape))
        n, wanted = counts.params(t.param_count), _budgets_tokens(cfg, counts)
        base, model = _ruled(cfg, rule, shape, counts, wanted[-1][0])
        budgets = _servable(cfg, wanted, n, base["trainer"]["batch_size"] * model["seq_len"])
        if not budgets:
            continue
        if budgets[-1] != wanted[-1]:  # the rule's values for the longest branch this model serves
            base, model = _ruled(cfg, rule, shape, counts, budgets[-1][0])
        shape = model
        tokens_per_step = base["trainer"]["batch_size"] * shape["seq_len"]
        warmup = _warmup_steps(cfg, tokens_per_step)
        trunk_base = copy.deepcopy(base)
        trunk_base["schedule"].update(name="constant", warmup_steps=warmup, warmup_tokens=0.0)
        trunk_base["trainer"]["extendable"] = True
        branches = []
        for variant in _variants(cfg):
            for tokens, flops in budgets:
                steps = int(tokens // tokens_per_step)
                branch_base = copy.deepcopy(base)
                branch_base["schedule"].update(name="wsd", warmup_steps=warmup, warmup_tokens=0.0, **variant)
                label = (f"{f'C={flops:.3g} ' if flops else ''}N={n:,} D={steps * tokens_per_step:.3g} "
                         f"{variant['decay_shape']} f={variant['decay_fraction']}")
                # make_spec refuses a branch its worker would refuse (a decay to an LR of 0
                # for the whole decay, a budget shorter than the warmup plus the decay...),
                # so its fork step is computed only for a valid branch.
                branch = make_spec(branch_base, shape, steps, kind="branch", label=label, rule=rule.name, budget=flops)
                branch.fork_step = branch.start_step = schedules.decay_start(steps, variant["decay_fraction"])
                branches.append(branch)
        trunk_steps = max(b.fork_step for b in branches)
        trunk = make_spec(trunk_base, shape, trunk_steps, kind="trunk", label=f"trunk N={n:,}", rule=rule.name)
        trunk.fork_steps = sorted({b.fork_step for b in branches})
        for branch in branches:
            branch.parent = trunk.run_id
        specs += [trunk, *branches]
    if not specs:
        raise ConfigError("no model of the ladder serves any of study.branch_flops (each needs at least "
                          "study.min_steps steps and at most study.max_tokens_per_param tokens per parameter)")
    return specs


def _ruled(cfg, rule, shape: dict, counts, tokens: float) -> tuple[dict, dict]:
    """(plain base config, model section) of one model's trunk and branches under the study's
    hparams rule. A branch shares its trunk's stable phase, so one LR, batch and weight decay
    serve them all: the rule's values for the model's LONGEST branch, of `tokens` tokens (C =
    tokens x FLOPs per token, before rounding to whole batches; the timescale rule's steps: that
    branch's)."""
    t = cfg.trainer
    n = counts.params(t.param_count)
    config, model, _ = rule.run(_plain(cfg), shape, tokens * counts.flops_per_token(t.flop_count), n, tokens,
                                lambda batch: int(tokens // (batch * shape["seq_len"])))
    return config, model


@dataclass
class Accounting:
    branched_flops: float  # trunks plus the decay of every branch
    independent_flops: float  # every branch as a run from scratch

    @property
    def ratio(self) -> float:
        return self.branched_flops / self.independent_flops if self.independent_flops else float("nan")


def accounting(specs: list[RunSpec]) -> Accounting:
    return Accounting(
        branched_flops=sum(s.own_flops for s in specs),
        independent_flops=sum(s.flops for s in specs if s.kind == "branch"),
    )


def study_accounting(study_dir: Path) -> Optional[Accounting]:
    """The accounting of a study directory from its run.json files (None if it has no branches)."""
    branched = independent = 0.0
    found = False
    for run_json in Path(study_dir).glob("*/run.json"):
        meta = read_json(run_json) or {}
        if meta.get("kind") in ("trunk", "branch"):
            found = True
            branched += meta.get("own_flops") or 0.0
            if meta.get("kind") == "branch":
                independent += meta.get("flops") or 0.0
    return Accounting(branched, independent) if found else None


def specs_from_trunk(cfg, trunk_dir: Path) -> list[RunSpec]:
    """--from RUN_DIR: new branches of an existing trunk; refuses a trunk of another config."""
    meta = read_json(Path(trunk_dir) / "run.json") or {}
    if meta.get("kind") != "trunk" or not (Path(trunk_dir) / "config.yaml").exists():
        raise StoreError(f"{trunk_dir} is not a decay-branch trunk directory")
    trunk_cfg = load_run_config(Path(trunk_dir) / "config.yaml")
    shape = _plain(trunk_cfg.model)
    specs = plan(cfg, [shape])
    if specs[0].run_id != Path(trunk_dir).name:
        raise StoreError(
            f"the study's trunk for this model ({specs[0].run_id}) has another config than {trunk_dir}: "
            "refusing to fork branches of one trunk from another's checkpoints")
    return specs


def jobs(specs: list[RunSpec], dirs: list[Path], skip: set[str]) -> list[Job]:
    """The job graph of a branched plan, the same whatever launcher runs it: per trunk, a job
    re-creating each fork checkpoint that is gone though the trunk got past it, then a chain of
    segments ending at the fork steps not reached yet, each `after` the one before; each
    branch `after` the job that makes its fork checkpoint (none when it exists). Runs in
    `skip` (finished) get no job."""
    out: list[Job] = []
    maker: dict[tuple[str, int], Optional[Job]] = {}  # (trunk, fork step) -> the job making that checkpoint
    for spec, run_dir in zip(specs, dirs):
        if spec.kind != "trunk":
            continue
        world_size = spec.config["trainer"]["world_size"]
        reached = max([s for s, _ in list_checkpoints(run_dir)], default=0)
        previous = None
        for fork in spec.fork_steps:
            if checkpoint_path(run_dir, fork).exists():
                maker[(spec.run_id, fork)] = None
            elif fork < reached:  # trained past, checkpoint gone: re-create it
                previous = Job(run_dir, f"{spec.label}: re-create step {fork}", fork, after=previous,
                               recreate_fork=fork, world_size=world_size)
                out.append(previous)
                maker[(spec.run_id, fork)] = previous
            elif spec.run_id not in skip:
                previous = Job(run_dir, f"{spec.label} to step {fork}", fork - reached, until=fork, after=previous,
                               world_size=world_size)
                out.append(previous)
                maker[(spec.run_id, fork)] = previous
                reached = fork
        if spec.run_id not in skip and reached < spec.steps:
            out.append(Job(run_dir, spec.label, spec.steps - reached, after=previous, world_size=world_size))
    for spec, run_dir in zip(specs, dirs):
        fork = (spec.parent, spec.fork_step)
        if spec.kind != "branch" or spec.run_id in skip or fork not in maker:
            continue  # not in maker: another process trains its trunk; a later sweep runs the branch
        out.append(Job(run_dir, spec.label, spec.steps - spec.fork_step, after=maker[fork],
                       world_size=spec.config["trainer"]["world_size"]))
    return out
