"""tracker=mlflow: one MLflow run per scaleflow run, in the study's experiment, through
MlflowClient (no global active run). By default a local file store at <study dir>/mlruns,
which `mlflow ui --backend-store-uri <study dir>/mlruns` and `scaleflow fit --from mlflow` read;
MLflow 3 keeps file stores in maintenance mode, and scaleflow opts in for them
(MLFLOW_ALLOW_FILE_STORE=true unless set). A resumed run continues the MLflow run whose id its
run directory kept. The fit report goes to a `fit` run of the experiment, under fit/."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from scaleflow.trackers.base import RunInfo

MAX_PARAM_LENGTH = 6000  # characters of a param value (MLflow's limit)
BATCH = 100  # params per log_batch call (MLflow's limit)
STATUSES = {"done": "FINISHED", "diverged": "FAILED"}  # interrupted, stopped: KILLED (they resume)


def _client(settings: Any, base_dir: Path):
    uri = settings.tracking_uri or (Path(base_dir) / "mlruns").resolve().as_uri()
    if uri.startswith("file:") or "://" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment(client: Any, name: str) -> str:
    """The experiment's id, created if new (by whichever of two parallel runs comes first)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _text(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) or value is None else str(value)
    return text[:MAX_PARAM_LENGTH]


def _tags(info: RunInfo) -> dict[str, str]:
    tags = {k: f"{v:.6g}" if isinstance(v, float) else str(v) for k, v in info.tags.items()}
    return {**tags, "scaleflow.run_id": info.run_id, "scaleflow.study": info.study}


class Run:
    """An MLflow run; `state["id"]` (kept in the run directory) resumes the same one. Params
    (the flattened config) are logged once, when the run is created."""

    def __init__(self, settings: Any, info: RunInfo, state: dict):
        from mlflow.entities import Param

        self.client = _client(settings, info.base_dir)
        if state.get("id"):
            self.run_id = state["id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        experiment = _experiment(self.client, settings.experiment or info.study or "scaleflow")
        self.run_id = state["id"] = self.client.create_run(experiment, run_name=info.run_id, tags=_tags(info)).info.run_id
        params = [Param(k, _text(v)) for k, v in info.params.items()]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + BATCH])

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def finish(self, status: str) -> None:
        self.client.set_tag(self.run_id, "scaleflow.status", status)
        self.client.set_terminated(self.run_id, STATUSES.get(status, "KILLED"))


def log_report(settings: Any, study_dir: Path, study: str, files: list[Path], out_dir: Path) -> None:
    """The fit's files as artifacts (under fit/) of a run named `fit` in the study's experiment."""
    client = _client(settings, study_dir)
    experiment = _experiment(client, settings.experiment or study)
    run_id = client.create_run(experiment, run_name="fit", tags={"scaleflow.study": study,
                                                                 "scaleflow.kind": "fit"}).info.run_id
    for path in files:
        folder = Path(path).relative_to(out_dir).parent.as_posix()
        client.log_artifact(run_id, str(path), "fit" if folder == "." else f"fit/{folder}")
    client.set_terminated(run_id, "FINISHED")
