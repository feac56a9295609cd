"""Experiment trackers: tracker=wandb | tensorboard | mlflow | none (docs/trackers.md).

One tracker run per scaleflow run, with the run's config (flattened params), every metrics
line at its step, the study's name as group or experiment, and the run's budget and parameter
count as tags; the fit report and its plots go to the study's tracker too. Three entry points:
- `start_run` (scaleflow's trainer, rank 0): a Tracker that logs each metrics line as it is
  appended to metrics.jsonl; a resumed run continues the same tracker run;
- `log_lines` (an external trainer): its normalised metrics lines, once the run has ended;
- `fit_tracker` and `log_fit_report` (`scaleflow fit`): the report's files as artifacts.

A tracker never stops or fails a run or a fit: any failure is one warning line on stderr, and
the work goes on without it. The tracker packages are imported only when used.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import sys
from pathlib import Path
from typing import Any, Optional, Union

from scaleflow.errors import FitError
from scaleflow.files import read_json
from scaleflow.trackers.base import BACKENDS, NO_TRACKER, NoTracker, RunInfo, Tracker, failure, run_config, warn

__all__ = ["NO_TRACKER", "RunInfo", "Tracker", "fit_tracker", "log_fit_report", "log_lines", "start_run"]
_RUN_ID = re.compile(r"^[0-9a-f]{10}$")


def start_run(cfg: Any, run_dir: Path, plan: Any, run_id: str, resume: Optional[bool] = None,
              params: Optional[int] = None) -> Union[Tracker, NoTracker]:
    """The tracker run of the run in `run_dir` (NO_TRACKER for tracker=none). `plan`: the
    run's RunPlan; `resume`: continue the run directory's tracker run (default: cfg.resume);
    `params`: the parameter count tag (default: the plan's, with trainer.param_count)."""
    settings = getattr(cfg, "tracker", None)
    if settings is None or settings.name == "none":
        return NO_TRACKER
    try:
        if params is None:
            params = plan.counts.params(cfg.trainer.param_count)
        info = run_info(cfg, Path(run_dir), int(params), run_id, bool(cfg.resume if resume is None else resume))
    except Exception as exc:  # noqa: BLE001 - never stops a run
        warn(failure(settings.name, exc) + "; the run goes on without it")
        return NO_TRACKER
    return Tracker(settings.name, settings, info)


def run_info(cfg: Any, run_dir: Path, params: int, run_id: str, resume: bool) -> RunInfo:
    """A run as trackers see it. A run of a study (its run.json names the study) has the study
    directory (its parent) as base and the study's budget as a tag."""
    from omegaconf import DictConfig, OmegaConf

    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    meta = read_json(run_dir / "run.json") or {}
    study = meta.get("study") or ""
    tags = {"params": params}
    if meta.get("budget") is not None:
        tags = {"budget": float(meta["budget"]), **tags}
    base = run_dir.parent if study else run_dir
    return RunInfo(run_id, run_dir, base.resolve(), study, run_config(container), tags, resume)


def log_lines(cfg: Any, run_dir: Path, plan: Any, run_id: str, lines: list[dict], summary: dict) -> None:
    """An external trainer's run, logged once it has ended (`summary`: its summary.json, whose
    params may be the trainer's own count): a new tracker run with every metrics line."""
    tracker = start_run(cfg, run_dir, plan, run_id, resume=False, params=summary.get("params"))
    for line in lines:
        tracker.log(line)
    tracker.finish(summary["status"])


def fit_tracker(source: str, from_: Optional[str], out: Optional[Path], name: Optional[str]) -> Any:
    """The tracker a fit's report goes to (None: none): `name` (--tracker) if given, else the
    tracker of the study's runs (a study directory's run config.yaml files). ConfigError for an
    unknown name; FitError when --tracker cannot apply."""
    from scaleflow.config.trackers import tracker_node

    study_dir = Path(source)
    is_study = from_ is None and study_dir.is_dir()
    if name is not None and name != "none" and (not is_study or out is None):
        raise FitError("--tracker logs the report of a study directory's fit: give a study directory and --out DIR")
    if name is not None:
        tracker_node({"name": name})  # an unknown name: ConfigError
    if name == "none" or not is_study or out is None:
        return None
    for settings in _run_trackers(study_dir):
        if name is None or settings.name == name:
            return settings
    return tracker_node({"name": name}) if name is not None else None


def _run_trackers(study_dir: Path):
    """The tracker sections (other than none) of the study's run configs, typed."""
    from omegaconf import OmegaConf

    from scaleflow.config.trackers import tracker_node

    for config in sorted(study_dir.glob("*/config.yaml")):
        if not _RUN_ID.match(config.parent.name):
            continue
        try:
            section = OmegaConf.load(config).get("tracker")
            if section is not None and section.get("name", "none") != "none":
                yield tracker_node(section)
        except Exception:  # noqa: BLE001 - an unreadable config says nothing about the tracker
            continue


def log_fit_report(settings: Any, study_dir: Path, out_dir: Path, files: list[Path]) -> None:
    """The fit's files (report, fit.json, plots) as artifacts of the study in its tracker. A
    failure is one warning line; the fit has succeeded all the same."""
    study_dir = Path(study_dir).resolve()
    study = (read_json(study_dir / "study.json") or {}).get("name") or study_dir.name
    files = [Path(f) for f in files if Path(f).is_file()]
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout may be `--json`'s one object
            importlib.import_module(BACKENDS[settings.name]).log_report(settings, study_dir, study, files, Path(out_dir))
    except Exception as exc:  # noqa: BLE001 - never fails the fit
        warn(failure(settings.name, exc) + "; the fit report is not in the tracker")
