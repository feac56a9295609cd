"""What every tracker shares: a run's description (RunInfo), the guard that keeps a failing
tracker from ever stopping a run (Tracker), and the run directory's tracker.json, which keeps a
tracker run's id so that a resumed run continues the same tracker run."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from scaleflow.files import read_json, write_json

STATE_FILE = "tracker.json"  # in the run directory: {tracker name: {"id": ..., "last_step": ...}}
#: tracker name -> the module with its Run class and log_report function (imported when used).
BACKENDS = {"wandb": "scaleflow.trackers.wandb_backend", "tensorboard": "scaleflow.trackers.tensorboard_backend",
            "mlflow": "scaleflow.trackers.mlflow_backend"}
#: Config keys that are not settings of the run: how and where this attempt runs.
_NOT_PARAMS = ("resume", "run_dir", "study_dir", "tracker", "launcher")


@dataclass
class RunInfo:
    """One scaleflow run as a tracker sees it."""

    run_id: str
    run_dir: Path
    base_dir: Path  # default places start here: the study directory, or a lone run's own directory
    study: str  # the study's name; "" for a lone run
    config: dict  # the run's resolved config, nested (plain containers; see _NOT_PARAMS)
    tags: dict  # budget (training FLOPs; study runs only) and params (with trainer.param_count)
    resume: bool  # continue this run directory's tracker run, if it has one

    @property
    def in_study(self) -> bool:
        return bool(self.study)

    @property
    def params(self) -> dict[str, Any]:
        """The config flattened to dotted keys: {"model.n_layer": 2, "optim.lr": 0.003, ...}."""
        return flatten(self.config)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def run_config(container: dict) -> dict:
    """The part of a resolved config that describes the run itself (the study's name is the
    tracker's group or experiment; an external trainer's command only when there is one)."""
    skip = _NOT_PARAMS + ("study",) + (() if (container.get("command") or {}).get("template") else ("command",))
    return {k: v for k, v in container.items() if k not in skip}


def metrics_of(line: dict) -> dict[str, float]:
    """A metrics line's numbers (step aside; None, flags and text left out)."""
    return {k: float(v) for k, v in line.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def failure(name: str, exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"tracker {name} failed ({type(exc).__name__}{': ' + text[0][:200] if text else ''})"


class Tracker:
    """The tracker run of one scaleflow run. It never raises: its first failure (the package
    missing, not logged in, a full disk, any exception) is one warning line on stderr, and the
    run goes on without the tracker. On a resumed run, steps the tracker already has are not
    logged again."""

    def __init__(self, name: str, settings: Any, info: RunInfo):
        self.name, self.info, self.off, self.run = name, info, False, None
        self.saved = read_json(info.run_dir / STATE_FILE) or {}
        state = dict(self.saved.get(name, {})) if info.resume else {}
        self.last_step = state.get("last_step", -1)
        self._guard(lambda: self._start(settings, state))

    def _start(self, settings: Any, state: dict) -> None:
        backend = importlib.import_module(BACKENDS[self.name])
        self.run = backend.Run(settings, self.info, state)  # sets state["id"]
        self._save(state)

    def log(self, line: dict) -> None:
        """Log one metrics line at its step."""
        step = int(line["step"])
        if self.off or step <= self.last_step:
            return
        metrics = metrics_of(line)
        if self._guard(lambda: self.run.log(step, metrics)):
            self.last_step = step
            self._guard(lambda: self._save({**self.saved.get(self.name, {}), "last_step": step}))

    def finish(self, status: str) -> None:
        """End the tracker run: done, diverged, interrupted or stopped (resumable)."""
        if not self.off:
            self._guard(lambda: self.run.finish(status))
            self.off = True

    def _save(self, state: dict) -> None:
        self.saved[self.name] = state
        write_json(self.info.run_dir / STATE_FILE, self.saved)

    def _guard(self, call: Callable[[], Any]) -> bool:
        if self.off:
            return False
        try:
            call()
            return True
        except Exception as exc:  # noqa: BLE001 - a tracker never stops a run, whatever it raises
            self.off = True
            warn(failure(self.name, exc) + "; the run goes on without it")
            return False


class NoTracker:
    """tracker=none, and every rank but 0."""

    def log(self, line: dict) -> None:
        pass

    def finish(self, status: str) -> None:
        pass


NO_TRACKER = NoTracker()
