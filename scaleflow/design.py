"""Closing the loop on an IsoFLOP study: simulate its design before spending compute
(`scaleflow simulate`), choose the runs that shrink the interval at a target budget the most
(`scaleflow next`), and repeat fit -> propose -> run until the interval is narrow enough.

The science is in `fit/simulate.py` and `fit/propose.py`; this module turns a study into
their inputs (planned runs as a design, the ladder at new budgets as candidates), launches the
chosen runs through the study's own launcher and trainer, and keeps the log of the rounds
(NEXT_LOG in the study directory, plotted by the fit report: `report/rounds.py`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from scaleflow.errors import ConfigError, FitError
from scaleflow.fit.propose import TARGETS, NoAffordableRun, Proposal, interval_of, propose, replicate_answers
from scaleflow.fit.simulate import DesignSimulation, law_from_text, residual_noise, simulate_design
from scaleflow.plan import RunSpec
from scaleflow.report.rounds import NEXT_LOG, read_rounds

#: New budgets offered to `next`: the study's largest times 2, 4, ... (at most this many).
NEW_BUDGETS = 6


def design_table(specs: list[RunSpec]):
    """Planned runs as the table a fit would see: params, tokens, flops, budget, cost (the FLOPs
    a run itself spends: a decay branch reuses its trunk), run_id, label, lr and batch_size (as
    the study's hparams rule set them)."""
    import pandas as pd

    return pd.DataFrame([{"params": s.params, "tokens": s.tokens, "flops": s.flops, "budget": s.budget,
                          "kind": s.kind, "cost": s.own_flops, "run_id": s.run_id, "label": s.label,
                          "lr": s.config["optim"]["lr"],
                          "batch_size": s.config["trainer"]["batch_size"]} for s in specs])


def _plan(cfg, kind: str) -> list[RunSpec]:
    from scaleflow.sweep import plan_study

    if kind not in ("isoflop", "decay_branches"):
        raise ConfigError(f"simulate and next work on isoflop and decay_branches studies, not {kind}")
    return plan_study(cfg, kind)


def truth_law(truth: str, noise: Optional[float]) -> tuple[Any, float]:
    """The assumed law and noise: 'E=..,A=..,B=..,alpha=..,beta=..' (then --noise is needed), or a
    saved fit.json with approach 3 (noise: its runs' residuals, when its source can be read)."""
    from scaleflow.fit.api import load_saved
    from scaleflow.fit.prepare import load_source

    if "=" in truth:
        law = law_from_text(truth)
        if noise is None:
            raise FitError("with a law given as numbers, give the noise too: --noise 0.01 (sd of log loss)")
        return law, noise
    law = load_saved(truth).get("approach3")
    if law is None:
        raise FitError(f"{truth} has no approach-3 fit; fit the study with --law approach3 or give the law as numbers")
    if noise is None:
        source = json.loads(Path(truth).read_text()).get("source", "")
        try:
            runs = load_source(source, None)[0]
        except (FitError, OSError):
            raise FitError(f"cannot read {source!r}, the runs of {truth}, to estimate the noise: give --noise") from None
        noise = residual_noise(law, runs)
    return law, noise


def simulate_study(cfg, kind: str, truth: str, target: float, noise: Optional[float] = None, n_sim: int = 100,
                   seed: int = 0) -> DesignSimulation:
    """`scaleflow simulate`: the study's planned runs fitted `n_sim` times under the assumed law."""
    law, noise = truth_law(truth, noise)
    design = design_table(_plan(cfg, kind))
    if target <= design["flops"].max():
        raise FitError(f"--target {target:.3g} FLOPs is not above the study's largest run ({design['flops'].max():.3g} "
                       "FLOPs): give the budget you mean to extrapolate to")
    return simulate_design(design, law, noise, target, n_sim, seed)


@dataclass(frozen=True)
class NextRuns:
    """A proposal with the specs to launch, the fit it came from and the study's finished runs."""

    proposal: Proposal
    specs: list[RunSpec]
    n_finished: int
    width_now: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.proposal.to_dict(), "n_finished": self.n_finished, "width_now": self.width_now}


def width(interval: list[float], quantity: str) -> float:
    """An interval's width as `--until-width` reads it: hi/lo for N_opt, D_opt and loss, hi - lo for a."""
    lo, hi = interval
    return hi / lo if TARGETS[quantity][1] else hi - lo


def current_fit(study_dir: Path, n_bootstrap: int, seed: int):
    """The study's approach-3 fit with bootstrap replicates, and its table."""
    from scaleflow.fit.api import fit
    from scaleflow.fit.types import FitOptions

    try:
        run = fit(study_dir, FitOptions(law="approach3", n_bootstrap=n_bootstrap, seed=seed))
    except FitError as exc:
        raise FitError(f"no fit possible yet ({exc}); train the study first: scaleflow sweep isoflop STUDY") from None
    return run.results["approach3"], run.data.table


def candidates(cfg, kind: str, target: float, existing: set[str]) -> list[RunSpec]:
    """The study's ladder at its own budgets and at its largest budget times 2, 4, ... (below the
    target), less the runs the study already has."""
    from omegaconf import OmegaConf

    budgets = sorted(float(b) for b in cfg.study.budgets)
    new = [budgets[-1] * 2**i for i in range(1, NEW_BUDGETS + 1) if budgets[-1] * 2**i < target]
    wide = OmegaConf.merge(cfg, {"study": {"budgets": budgets + new}})
    specs = []
    for budget in budgets + new:  # budget by budget: a budget too small for every model is not an error here
        try:
            specs += _plan(OmegaConf.merge(wide, {"study": {"budgets": [budget]}}), kind)
        except ConfigError:
            continue
    return [s for s in specs if s.run_id not in existing]


def next_runs(cfg, kind: str, target: float, compute: float, quantity: str = "n_opt", n_bootstrap: int = 200,
              seed: int = 0) -> NextRuns:
    """`scaleflow next`: the runs that fit in `compute` FLOPs and shrink the interval of `quantity`
    at `target` FLOPs the most, from the study's current approach-3 fit."""
    from scaleflow.store import run_dirs, study_dir_for

    if kind != "isoflop":
        raise ConfigError(f"next proposes runs of isoflop studies, not {kind}")
    if quantity not in TARGETS:
        raise FitError(f"unknown quantity {quantity!r}; choose one of {', '.join(TARGETS)}")
    study_dir = study_dir_for(cfg)
    largest = max(float(b) for b in cfg.study.budgets)
    if target <= largest:
        raise FitError(f"--target {target:.3g} FLOPs is not above the study's largest budget ({largest:.3g}): "
                       "give the budget you mean to train at, e.g. --target {:.3g}".format(largest * 100))
    if not study_dir.is_dir():
        raise FitError(f"no fit possible yet: {study_dir} does not exist; train the study first: scaleflow sweep isoflop STUDY")
    specs = candidates(cfg, kind, target, {p.name for p in run_dirs(study_dir)})
    if not specs:
        raise FitError("every candidate run is already in the study: raise the target or add shapes to the ladder")
    cheapest = min(s.own_flops for s in specs)
    if cheapest > compute:
        raise NoAffordableRun(f"no candidate run fits in {compute:.3g} FLOPs; the cheapest costs {cheapest:.3g} FLOPs: "
                              "give more --compute")
    law, table = current_fit(study_dir, n_bootstrap, seed)
    proposal = propose(law, table, design_table(specs), target, compute, residual_noise(law, table), quantity)
    chosen = set(proposal.runs["run_id"])
    return NextRuns(proposal, [s for s in specs if s.run_id in chosen], len(table),
                    width(proposal.interval_now, quantity))


def log_round(study_dir: Path, record: dict[str, Any]) -> None:
    """Append one round to the study's next_log.jsonl."""
    from scaleflow.runlog import append_line

    append_line(Path(study_dir) / NEXT_LOG, record)


def wait_for(run_dirs: list[Path], poll_s: float = 30.0) -> list[str]:
    """Block until every run is finished or failed (runs submitted to SLURM return at once);
    returns the failed or stopped runs' names. Polls the run directories and the scheduler's
    queue, every 0.5 s at first, then less often, up to every `poll_s` seconds."""
    import time

    from scaleflow.launch.slurm import queue_states
    from scaleflow.store import run_state

    wait = 0.5
    while True:
        states = [run_state(d, queue_states()) for d in run_dirs]
        if all(s.state in ("done", "diverged", "failed", "stopped") for s in states):
            return [s.run_dir.name for s in states if s.state in ("failed", "stopped")]
        time.sleep(wait)
        wait = min(poll_s, wait * 1.5)


def launch(cfg, kind: str, specs: list[RunSpec], console=None) -> list[str]:
    """Train the chosen runs through the study's launcher and trainer; wait for them (SLURM too).
    Returns the names of runs that failed."""
    from scaleflow.store import study_dir_for
    from scaleflow.sweep import launch_specs

    study_dir = study_dir_for(cfg)
    report = launch_specs(cfg, kind, specs, study_dir, console=console)
    if report.outcome is not None and report.outcome.submitted:
        return wait_for([study_dir / s.run_id for s in specs])
    return list(report.outcome.failed) if report.outcome else []


def run_loop(cfg, kind: str, target: float, compute: float, until_width: Optional[float], quantity: str = "n_opt",
             round_compute: Optional[float] = None, n_bootstrap: int = 200, seed: int = 0, console=None,
             on_round=None) -> list[dict[str, Any]]:
    """Rounds of fit -> propose -> launch until the interval of `quantity` at `target` is at most
    `until_width` wide (None: one round) or `compute` FLOPs are spent; then a last fit measures
    the interval the rounds bought. Every round, and that measurement (a record with no runs),
    is appended to the study's next_log.jsonl."""
    from scaleflow.store import study_dir_for

    study_dir, spent, rounds = study_dir_for(cfg), 0.0, []
    per_round = round_compute or (compute if until_width is None else compute / 3)
    while True:
        try:
            nxt = next_runs(cfg, kind, target, min(per_round, compute - spent), quantity, n_bootstrap, seed)
        except NoAffordableRun:
            if not rounds:
                raise
            break  # the compute is spent
        if until_width is not None and nxt.width_now <= until_width:
            break
        failed = launch(cfg, kind, nxt.specs, console)
        spent += nxt.proposal.cost
        rounds.append({**_record(len(rounds), nxt, quantity), "compute_spent": spent, "failed": failed})
        log_round(study_dir, rounds[-1])
        if on_round:
            on_round(rounds[-1])
        if until_width is None or failed:
            break
    law, table = current_fit(study_dir, n_bootstrap, seed)
    interval = interval_of(replicate_answers(law, target, quantity), TARGETS[quantity][1])
    reached = until_width is not None and width(interval, quantity) <= until_width
    rounds.append({"round": len(rounds), "target": target, "quantity": quantity, "n_finished": len(table),
                   "interval": interval, "width": width(interval, quantity), "compute": 0.0, "compute_spent": spent,
                   "runs": [], "reached": reached})
    log_round(study_dir, rounds[-1])
    return rounds


def _record(i: int, nxt: NextRuns, quantity: str) -> dict[str, Any]:
    p = nxt.proposal
    return {"round": i, "target": p.target, "quantity": quantity, "n_finished": nxt.n_finished,
            "interval": p.interval_now, "width": nxt.width_now, "expected_interval": p.interval_expected,
            "expected_width": width(p.interval_expected, quantity), "compute": p.cost, "reached": False,
            "runs": [{"run_id": s.run_id, "label": s.label, "params": s.params, "tokens": s.tokens, "flops": s.flops}
                     for s in nxt.specs]}


__all__ = ["NEXT_LOG", "NextRuns", "candidates", "design_table", "launch", "next_runs", "read_rounds", "run_loop",
           "simulate_study", "truth_law", "width"]
