"""Running a study: plan it, register its runs in the store, launch what is not finished.

Sweeping a study again skips finished runs (done or diverged), resumes unfinished ones from
their checkpoints, and adds only what is new when the study grows; `force` retrains finished
runs after archiving their results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from scaleflow import plan as planners
from scaleflow.errors import ConfigError
from scaleflow.launch import Job, make_launcher
from scaleflow.launch.base import LaunchOutcome
from scaleflow.plan import RunSpec
from scaleflow.store import register, run_state, study_dir_for

KINDS = {"isoflop": planners.isoflop, "lr_bs": planners.lr_bs, "mup_transfer": planners.mup_transfer}


def plan_study(cfg, kind: str) -> list[RunSpec]:
    """The runs of a study (pure, no I/O). `kind` must match the study file's study.kind."""
    if cfg.study.kind != kind:
        raise ConfigError(f"study {cfg.study.name!r} is a {cfg.study.kind} study, not {kind}")
    if kind not in KINDS:
        raise ConfigError(f"unknown sweep kind {kind!r}; choose one of {', '.join(KINDS)}")
    return KINDS[kind](cfg)


@dataclass
class SweepReport:
    specs: list[RunSpec]
    study_dir: Path
    skipped_done: int = 0  # finished runs left alone
    launched: int = 0
    outcome: Optional[LaunchOutcome] = None
    states: dict[str, str] = field(default_factory=dict)


def sweep(cfg, kind: str, force: bool = False, console=None) -> SweepReport:
    """Plan, register and launch a study; returns what happened."""
    specs = plan_study(cfg, kind)
    study_dir = study_dir_for(cfg)
    dirs = register(study_dir, specs, cfg.study.name, kind, force=force)
    report = SweepReport(specs, study_dir)
    jobs = []
    for spec, run_dir in zip(specs, dirs):
        state = run_state(run_dir).state
        report.states[spec.run_id] = state
        if state in ("done", "diverged"):
            report.skipped_done += 1
            continue
        if state == "running":  # another sweep (or a SLURM job) is training it
            continue
        jobs.append(Job(run_dir, spec.label, spec.steps, world_size=spec.config["trainer"]["world_size"]))
    report.launched = len(jobs)
    if jobs:
        report.outcome = make_launcher(cfg.launcher, console).launch(jobs)
    return report


def plan_rows(specs: list[RunSpec], throughput: float) -> list[dict]:
    """One row per run for a --dry-run table; `throughput` in FLOP/s."""
    return [
        {
            "run": spec.run_id, "label": spec.label, "kind": spec.kind, "N": spec.params,
            "D": spec.tokens, "D/N": spec.tokens / spec.params, "steps": spec.steps,
            "batch": spec.config["trainer"]["batch_size"], "lr": spec.config["optim"]["lr"],
            "FLOPs": spec.own_flops, "est_s": spec.own_flops / throughput,
        }
        for spec in specs
    ]
