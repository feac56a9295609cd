"""The run store: a study directory of run directories and their states (`collect.py` reads
the finished ones into tables; `lock.py` keeps two processes off one run).

    runs/<study>/
      study.json              the study's name and kind
      <run_id>/config.yaml    the run's resolved config (its id is a hash of it)
      <run_id>/run.json       its place in the study: kind, budget, parent trunk, fork step
      <run_id>/job.json       the launcher's record: local pid and exit code, or SLURM job id
      <run_id>/metrics.jsonl, checkpoints/, summary.json   written by the trainer

A run's state comes from its own directory first (summary, lock, job record) and from the
scheduler second, so `squeue` alone is enough on clusters without accounting.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from omegaconf import OmegaConf

from scaleflow.errors import StoreError
from scaleflow.files import read_json, write_json, write_text
from scaleflow.lock import is_locked
from scaleflow.plan import RunSpec

STATES = ("planned", "queued", "running", "stopped", "done", "failed", "diverged")
_ID = re.compile(r"^[0-9a-f]{10}$")


#: A run that ended (at its planned length, or stopped as diverged): never trained again.
FINISHED = ("done", "diverged")


def is_finished(summary: Optional[dict]) -> bool:
    return summary is not None and summary.get("status") in FINISHED


def study_dir_for(cfg) -> Path:
    """Where a study lives: study_dir=..., else runs/<study name>. Names cannot escape runs/."""
    if cfg.study_dir:
        return Path(cfg.study_dir)
    name = cfg.study.name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or ".." in name:
        raise StoreError(f"study.name={name!r} must be a plain name (letters, digits, _ . -), not a path")
    return Path("runs") / name


def _safe_run_dir(study_dir: Path, run_id: str) -> Path:
    if not _ID.match(run_id):
        raise StoreError(f"{run_id!r} is not a run id")
    return study_dir / run_id


def register(study_dir: Path, specs: Iterable[RunSpec], study_name: str, kind: str, force: bool = False) -> list[Path]:
    """Create run directories for new specs; returns every spec's directory.

    A finished run is never touched, unless `force`, which archives its results to
    `<run>/previous/` first rather than deleting them.
    """
    study_dir.mkdir(parents=True, exist_ok=True)
    info = read_json(study_dir / "study.json")
    if info is None:
        write_json(study_dir / "study.json", {"name": study_name, "kind": kind})
    dirs = []
    for spec in specs:
        run_dir = _safe_run_dir(study_dir, spec.run_id)
        run_dir.mkdir(exist_ok=True)
        text = OmegaConf.to_yaml(OmegaConf.create(spec.config))
        config_path = run_dir / "config.yaml"
        # Settings outside a run's id (an extendable trunk's length, bookkeeping such as log_every,
        # how an external trainer's results are read) follow the study until the run has finished.
        follows = spec.config["trainer"]["extendable"] or not is_finished(read_json(run_dir / "summary.json"))
        if not config_path.exists() or (follows and config_path.read_text() != text):
            write_text(config_path, text)
        meta = read_json(run_dir / "run.json")
        wanted = {**spec.meta(), "study": study_name}
        if meta != wanted:
            write_json(run_dir / "run.json", wanted)
        if force and (run_dir / "summary.json").exists():
            archive(run_dir)
        dirs.append(run_dir)
    return dirs


def archive(run_dir: Path) -> None:
    """Move a run's results aside (to previous/<n>/) so that it trains again from scratch."""
    target = run_dir / "previous" / str(len(list((run_dir / "previous").glob("*"))) if (run_dir / "previous").exists() else 0)
    target.mkdir(parents=True)
    # stdout.log, stderr.log, result.json: an external trainer's (its own files are its business)
    for name in ("summary.json", "metrics.jsonl", "checkpoints", "job.json", "stdout.log", "stderr.log", "result.json"):
        if (run_dir / name).exists():
            shutil.move(str(run_dir / name), str(target / name))


def run_dirs(study_dir: Path) -> list[Path]:
    if not Path(study_dir).is_dir():
        raise StoreError(f"{study_dir} is not a study directory")
    return sorted(p for p in Path(study_dir).iterdir() if p.is_dir() and _ID.match(p.name))


@dataclass
class RunState:
    run_dir: Path
    state: str
    kind: str
    label: str
    step: int  # last logged step
    steps: int  # planned steps
    last_loss: Optional[float]
    job_id: Optional[str]
    budget: Optional[float]
    parent: Optional[str]
    reason: Optional[str] = None  # why a run failed, when its worker could say (summary.json "error")

    @property
    def progress(self) -> float:
        return self.step / self.steps if self.steps else 0.0


def last_metrics(run_dir: Path) -> Optional[dict]:
    """The last valid metrics line (cheap: reads the file's tail)."""
    path = run_dir / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(tail):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and "step" in obj:
            return obj
    return None


def run_state(run_dir: Path, scheduler_states: Optional[dict[str, str]] = None) -> RunState:
    """A run's state from its directory, then from the scheduler (job id -> squeue state)."""
    meta = read_json(run_dir / "run.json") or {}
    summary = read_json(run_dir / "summary.json")
    job = read_json(run_dir / "job.json") or {}
    last = last_metrics(run_dir) or {}
    loss = last.get("train_loss", last.get("val_loss"))
    job_id = job.get("job_id")
    failed = summary is not None and summary.get("status") == "failed"
    if is_finished(summary):
        state = summary["status"]
        loss = summary.get("val_loss") or loss
    elif is_locked(run_dir):
        state = "running"
    elif job_id and scheduler_states is not None and job_id in scheduler_states:
        state = "running" if scheduler_states[job_id] in ("RUNNING", "COMPLETING") else "queued"
    elif job.get("exit_code") == 3 or job.get("state") == "stopped":
        state = "stopped"
    elif job.get("exit_code") not in (None, 0) or (job_id and scheduler_states is not None) or failed:
        state = "failed"  # a scheduler's job gone from its queue without a summary failed
    elif last.get("step"):
        state = "stopped"
    else:
        state = "planned"
    return RunState(run_dir, state, meta.get("kind", "run"), meta.get("label", ""), int(last.get("step", 0)),
                    int(meta.get("steps", 0)), loss, job_id, meta.get("budget"), meta.get("parent"),
                    summary.get("error") if state == "failed" and summary else None)


def study_states(study_dir: Path, scheduler_states: Optional[dict[str, str]] = None) -> list[RunState]:
    return [run_state(d, scheduler_states) for d in run_dirs(study_dir)]


def write_job(run_dir: Path, **record) -> None:
    write_json(run_dir / "job.json", record)
