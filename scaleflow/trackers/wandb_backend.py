"""tracker=wandb: one Weights & Biases run per scaleflow run (group: the study's name; tags:
budget and params), and the fit report as an artifact of the study.

Offline by default: a run is files under `<dir>/wandb/offline-run-*` that `wandb sync` uploads
later; nothing here goes to the network in offline mode, and nothing ever prompts for a login
(online mode without credentials is a failure, which the run survives).
"""

from __future__ import annotations

import inspect
import os
import re
import secrets
from pathlib import Path
from typing import Any

from scaleflow.trackers.base import RunInfo


def _wandb():
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    return wandb


def _init(settings: Any, base_dir: Path, **kwargs: Any):
    """wandb.init with the tracker's settings; the wandb/ folder goes to tracker.dir or base_dir."""
    wandb = _wandb()
    folder = Path(settings.dir).expanduser() if settings.dir else Path(base_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if settings.mode == "online" and "prompt" in inspect.signature(wandb.login).parameters \
            and not wandb.login(prompt=False, verify=False):  # older wandb: init fails where no terminal can ask
        raise RuntimeError("not logged in to W&B: run `wandb login` or set WANDB_API_KEY (or tracker.mode=offline)")
    return wandb.init(project=settings.project, entity=settings.entity, mode=settings.mode, dir=str(folder),
                      reinit="create_new", settings=wandb.Settings(console="off", silent=True), **kwargs)


def _tag(key: str, value: Any) -> str:
    return f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"


class Run:
    """A W&B run; `state["id"]` (kept in the run directory) resumes the same one."""

    def __init__(self, settings: Any, info: RunInfo, state: dict):
        state.setdefault("id", f"{info.run_id}-{secrets.token_hex(3)}")
        config = {**info.config, "scaleflow": {"run_id": info.run_id, "study": info.study, **info.tags}}
        self.run = _init(settings, info.base_dir, id=state["id"], resume="allow", name=info.run_id,
                         group=info.study or None, job_type="train", config=config,
                         tags=[_tag(k, v) for k, v in info.tags.items()] + list(settings.tags))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def finish(self, status: str) -> None:
        self.run.summary["status"] = status
        self.run.finish(exit_code=1 if status == "diverged" else 0)


def log_report(settings: Any, study_dir: Path, study: str, files: list[Path], out_dir: Path) -> None:
    """The fit's files as one artifact (type fit-report, named `<study>-fit`) of a `fit` run in
    the study's group."""
    wandb = _wandb()
    run = _init(settings, study_dir, name=f"{study} fit", group=study, job_type="fit", tags=list(settings.tags))
    artifact = wandb.Artifact(re.sub(r"[^A-Za-z0-9_.-]", "-", study) + "-fit", type="fit-report")
    for path in files:
        artifact.add_file(str(path), name=Path(path).relative_to(out_dir).as_posix())
    run.log_artifact(artifact)
    run.finish()
