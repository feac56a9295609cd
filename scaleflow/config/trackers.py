"""The `tracker` config group: one dataclass per experiment tracker, each stored in Hydra's
ConfigStore as `tracker/NAME_schema` (scaleflow/conf/tracker/NAME.yaml starts from it), so a key
of another tracker is an error, never ignored. A tracker is bookkeeping: it is not part of a
run's id (scaleflow/config/identity.py), and adding one to a study never retrains its runs.

Default places are relative to the study directory (`<study dir>`), or, for a lone
`scaleflow train` run, to its run directory; scaleflow/trackers/ uses these settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from scaleflow.errors import ConfigError


@dataclass
class NoTrackerConfig:
    """tracker=none (the default): metrics go to metrics.jsonl only."""

    name: str = "none"


@dataclass
class WandbTrackerConfig:
    """tracker=wandb: Weights & Biases, offline by default (`wandb sync DIR` uploads later)."""

    name: str = "wandb"
    project: str = "scaleflow"
    entity: Optional[str] = None  # None = your default entity
    mode: str = "offline"  # offline (files only, no network) | online (needs `wandb login`)
    dir: Optional[str] = None  # where the wandb/ folder goes; None = <study dir>
    tags: list[str] = field(default_factory=list)  # extra tags on every run


@dataclass
class TensorboardTrackerConfig:
    """tracker=tensorboard: event files, one folder per run."""

    name: str = "tensorboard"
    # None = <study dir>/tensorboard/<run id> (a lone run: <run dir>/tensorboard);
    # a folder given here holds <log_dir>/<run id>.
    log_dir: Optional[str] = None


@dataclass
class MlflowTrackerConfig:
    """tracker=mlflow: one MLflow run per scaleflow run, in one experiment per study."""

    name: str = "mlflow"
    tracking_uri: Optional[str] = None  # None = a local file store, file://<study dir>/mlruns
    experiment: Optional[str] = None  # None = the study's name (a lone run: "scaleflow")


#: tracker.name -> its schema.
TRACKERS = {"none": NoTrackerConfig, "wandb": WandbTrackerConfig, "tensorboard": TensorboardTrackerConfig,
            "mlflow": MlflowTrackerConfig}
WANDB_MODES = ("offline", "online")


def check_tracker(cfg: Any) -> None:
    """tracker.name is one of TRACKERS and matches the schema its file picked; W&B's mode is
    known. A config without a tracker section (written before trackers) has none."""
    from omegaconf import DictConfig, OmegaConf

    tracker = getattr(cfg, "tracker", None)
    if tracker is None:
        return
    name = tracker.name
    if name not in TRACKERS:
        raise ConfigError(f"tracker={name!r} is not one of {', '.join(TRACKERS)}")
    if isinstance(tracker, DictConfig):
        schema = OmegaConf.get_type(tracker)
        picked = next((n for n, s in TRACKERS.items() if s is schema), name)
        if picked != name:
            raise ConfigError(f"tracker.name={name!r} contradicts tracker={picked}: choose the tracker with tracker=NAME")
    if name == "wandb" and tracker.mode not in WANDB_MODES:
        raise ConfigError(f"tracker.mode={tracker.mode!r} is not one of {', '.join(WANDB_MODES)}")


def tracker_node(values: Any = None) -> Any:
    """A tracker section typed by the schema its `name` picks (default: none)."""
    from omegaconf import OmegaConf

    values = OmegaConf.create(values if values is not None else {})
    name = OmegaConf.select(values, "name", default="none")
    if name not in TRACKERS:
        raise ConfigError(f"tracker={name!r} is not one of {', '.join(TRACKERS)}")
    return OmegaConf.merge(OmegaConf.structured(TRACKERS[name]), values)
