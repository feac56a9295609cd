"""Running a study, every kind one way: plan it, register its runs in the store, launch what
is not finished.

Sweeping a study again skips finished runs (done or diverged), resumes unfinished ones from
their checkpoints, and adds only what is new when the study grows; `force` retrains finished
runs after archiving their results.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from scaleflow import branches
from scaleflow import plan as planners
from scaleflow.errors import ConfigError
from scaleflow.files import read_json
from scaleflow.launch import Job, LaunchOutcome, make_launcher
from scaleflow.plan import RunSpec
from scaleflow.store import register, run_state, study_dir_for

PLANNERS = {"isoflop": planners.isoflop, "lr_bs": planners.lr_bs, "mup_transfer": planners.mup_transfer,
            "decay_branches": branches.plan}


def plan_study(cfg, kind: str, from_dir: Optional[Path] = None) -> list[RunSpec]:
    """The runs of a study (pure but for reading `from_dir`). `kind` must match the study
    file's study.kind; `from_dir` (decay branches only): new branches of that existing trunk."""
    if kind not in PLANNERS:
        raise ConfigError(f"unknown study kind {kind!r}; choose one of {', '.join(PLANNERS)}")
    if cfg.study.kind != kind:
        raise ConfigError(f"study {cfg.study.name!r} is a {cfg.study.kind} study, not {kind}")
    if from_dir is not None:
        if kind != "decay_branches":
            raise ConfigError("--from (new branches of an existing trunk) is for decay-branch studies only")
        return branches.specs_from_trunk(cfg, from_dir)
    rule = (cfg.get("hparams") or {}).get("name", "fixed")
    if rule != "fixed" and kind in ("lr_bs", "mup_transfer"):
        raise ConfigError(f"hparams={rule} sets each run's LR, batch and weight decay in isoflop and decay-branch "
                          f"studies; a {kind} study sets them itself")
    specs = PLANNERS[kind](cfg)
    _check_vocab(cfg, specs)
    return specs


def _check_vocab(cfg, specs: list[RunSpec]) -> None:
    """A prepared corpus's vocabulary against every planned model's, once per study (each
    worker checks it again when it starts)."""
    if not cfg.data.path or cfg.command.template is not None:
        return
    from scaleflow.prepare.meta import read_meta

    vocab = read_meta(Path(cfg.data.path).expanduser())["vocab_size"]
    wrong = sorted({s.config["model"]["vocab_size"] for s in specs} - {vocab})
    if wrong:
        raise ConfigError(f"{cfg.data.path} was tokenized with vocab_size={vocab} (meta.json) but the study's "
                          f"models have model.vocab_size={wrong[0]}; set model.vocab_size={vocab}")


@dataclass
class StudyReport:
    specs: list[RunSpec]
    study_dir: Path
    skipped_done: int = 0  # finished runs left alone
    launched: int = 0
    outcome: Optional[LaunchOutcome] = None
    states: dict[str, str] = field(default_factory=dict)
    recreated: int = 0  # decay branches: jobs re-creating a missing fork checkpoint
    accounting: Optional[branches.Accounting] = None  # decay branches: branched vs independent FLOPs


def run_study(cfg, kind: str, force: bool = False, console=None, from_dir: Optional[Path] = None) -> StudyReport:
    """Every kind of study, one way: plan -> register -> skip what is finished (or being
    trained by another process) -> launch the rest as jobs."""
    specs = plan_study(cfg, kind, from_dir)
    study_dir = Path(from_dir).parent if from_dir is not None else study_dir_for(cfg)
    return launch_specs(cfg, kind, specs, study_dir, force, console)


def launch_specs(cfg, kind: str, specs: list[RunSpec], study_dir: Path, force: bool = False,
                 console=None) -> StudyReport:
    """Register planned runs in the study directory and launch those not finished (`scaleflow
    next --launch` adds its chosen runs this way)."""
    dirs = register(study_dir, specs, cfg.study.name, kind, force=force)
    report = StudyReport(specs, study_dir)
    finished, busy = set(), set()
    for spec, run_dir in zip(specs, dirs):
        state = report.states[spec.run_id] = run_state(run_dir).state
        if _finished(state, run_dir, spec):
            finished.add(spec.run_id)
        elif state == "running":  # another sweep (or a SLURM job) is training it
            busy.add(spec.run_id)
    report.skipped_done = len(finished)
    if kind == "decay_branches":
        jobs = branches.jobs(specs, dirs, finished | busy)
        report.recreated = sum(job.recreate_fork > 0 for job in jobs)
        report.accounting = branches.accounting(specs)
    else:
        jobs = [_job(spec, run_dir) for spec, run_dir in zip(specs, dirs) if spec.run_id not in finished | busy]
    report.launched = len(jobs)
    if jobs:
        report.outcome = make_launcher(cfg.launcher, console).launch(jobs)
    return report


def _finished(state: str, run_dir: Path, spec: RunSpec) -> bool:
    """Diverged, or done; an extendable trunk done at fewer steps than planned is extended (as
    the worker judges it: worker._finished_summary). Another run's length is its trainer's
    business: an external trainer may count its steps otherwise."""
    if state != "done" or not spec.config["trainer"]["extendable"]:
        return state in ("done", "diverged")
    return (read_json(run_dir / "summary.json") or {}).get("steps", 0) >= spec.steps


def _job(spec: RunSpec, run_dir: Path) -> Job:
    """A run's job. An external command starts its own processes ({run.world_size} in its
    template), so its job is one process that is given the run's GPUs."""
    world_size = spec.config["trainer"]["world_size"]
    if spec.config["command"]["template"] is not None:
        return Job(run_dir, spec.label, spec.steps, gpus=world_size)
    return Job(run_dir, spec.label, spec.steps, world_size=world_size, gpus=world_size)


def sweep(cfg, kind: str, force: bool = False, console=None) -> StudyReport:
    """`scaleflow sweep KIND`: run an IsoFLOP, LR x batch-size or muP-transfer study."""
    return run_study(cfg, kind, force, console)


def decay_branches(cfg, from_dir: Optional[Path] = None, force: bool = False, console=None) -> StudyReport:
    """`scaleflow decay-branches`: trunks and their decay branches (or new branches of the
    trunk in `from_dir`)."""
    return run_study(cfg, "decay_branches", force, console, from_dir)


def plan_rows(specs: list[RunSpec], throughput: float) -> list[dict]:
    """One row per run for a --dry-run table; `throughput` in FLOP/s. `epochs`: passes over
    the training split (D / its tokens), None when its size cannot be known cheaply."""
    sizes: dict[str, Optional[int]] = {}
    return [
        {
            "run": spec.run_id, "label": spec.label, "kind": spec.kind, "N": spec.params,
            "D": spec.tokens, "D/N": spec.tokens / spec.params, "steps": spec.steps,
            "batch": spec.config["trainer"]["batch_size"], "lr": spec.config["optim"]["lr"],
            "wd": spec.config["optim"]["weight_decay"], "rule": spec.rule,
            "FLOPs": spec.own_flops, "est_s": spec.own_flops / throughput, "epochs": _epochs(spec, sizes),
        }
        for spec in specs
    ]


def _epochs(spec: RunSpec, sizes: dict) -> Optional[float]:
    """How many times a run reads its training split; `sizes` caches each data config's size.
    None for an external trainer (its data is not scaleflow's data config)."""
    from types import SimpleNamespace

    from scaleflow.data import train_tokens

    if spec.config.get("command", {}).get("template") is not None:
        return None
    data = spec.config["data"]
    key = json.dumps(data, sort_keys=True, default=str)
    if key not in sizes:
        sizes[key] = train_tokens(SimpleNamespace(**data))
    return spec.tokens / sizes[key] if sizes[key] else None


def repeat_warning(rows: list[dict]) -> Optional[str]:
    """One line when some planned run reads its training split more than once, else None."""
    repeats = [r["epochs"] for r in rows if r["epochs"] is not None and r["epochs"] > 1]
    if not repeats:
        return None
    return (f"data repeats in {len(repeats)} of {len(rows)} runs (up to {max(repeats):.3g} epochs of the training "
            "split); repeated data changes the scaling law (Muennighoff et al. 2023): use more data or smaller budgets")
