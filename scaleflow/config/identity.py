"""A run's identity: the part of its config that defines its result, and the hash of it that
names its run directory."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

_RUN_KEYS = ("seed", "model", "data", "optim", "schedule", "trainer")
# Bookkeeping that does not change a run's result, so not part of its identity.
_UNHASHED_TRAINER_KEYS = ("checkpoint_every", "keep_checkpoints", "log_every")



def run_section(cfg: Any) -> dict:
    """The part of a config that defines a run's result (what its id hashes)."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    return {k: container[k] for k in _RUN_KEYS}


def _identity(cfg: Any) -> dict:
    section = run_section(cfg)
    unhashed = _UNHASHED_TRAINER_KEYS + (("steps", "tokens", "flops") if section["trainer"].get("extendable") else ())
    section["trainer"] = {k: v for k, v in section["trainer"].items() if k not in unhashed}
    # Settings added after the first release count only when set, so that existing runs keep
    # their ids: an unset (None) model or data field (data.path), and the external command
    # when there is none.
    section["model"] = {k: v for k, v in section["model"].items() if v is not None}
    section["data"] = {k: v for k, v in section["data"].items() if v is not None}
    command = cfg.get("command") or {}
    if command.get("template") is not None:
        # Where it runs and how its results are read are not what it computes.
        section["command"] = {k: v for k, v in _plain(command).items() if k not in ("cwd", "metrics")}
    return section


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def run_id(cfg: Any) -> str:
    """A short, stable hash of the run-defining config (not paths, device, launcher)."""
    blob = json.dumps(_identity(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]
