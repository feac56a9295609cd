"""An external trainer's command: a template over a run's resolved values.

    python train.py --n_layer={model.n_layer} --lr={optim.lr} --max_tokens={run.tokens} --out_dir={run.dir}

The template is split into arguments first (shell rules, `shlex`) and each argument is filled
in after, so a value is always one argument and never shell syntax. A placeholder is any key
of the run's config (`{model.d_model}`, `{trainer.batch_size}`, `{seed}`) or a resolved value
under `run.` (RUN_KEYS); `{{` and `}}` are literal braces. An unknown placeholder is a
ConfigError, raised when the study is planned.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from scaleflow.errors import ConfigError

#: The resolved values of a run, with units (docs/own-trainer.md lists them for users).
RUN_KEYS = {
    "dir": "the run directory (absolute)",
    "id": "the run id",
    "steps": "optimizer steps",
    "tokens": "training tokens (steps x tokens_per_step)",
    "flops": "training FLOPs (tokens x FLOPs per token, trainer.flop_count)",
    "params": "parameters (the study's trainer.param_count, or model.params)",
    "tokens_per_step": "tokens per optimizer step (batch_size x seq_len)",
    "batch_size": "sequences per optimizer step",
    "seq_len": "tokens per sequence",
    "lr": "peak learning rate",
    "warmup_steps": "optimizer steps of warmup",
    "decay_start": "first step of a WSD decay (= steps for other schedules)",
    "micro_batch_size": "sequences per process per forward pass (batch_size / grad_accum / world_size)",
    "final_lr": "the learning rate at the end of the schedule (lr x final_lr_fraction; lr for constant)",
    "python": "the interpreter running scaleflow (its packages, whatever PATH says)",
    "world_size": "processes (trainer.world_size)",
    "gpus": "GPUs the run may use (trainer.world_size on a GPU machine, else 0)",
    "seed": "the run's seed",
}
_RUN_SECTIONS = ("model", "data", "optim", "schedule", "trainer")
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


def run_values(cfg: Any, plan: Any, run_dir: Path, run_id: str, gpus: int = 0) -> dict[str, Any]:
    """Every placeholder's value for one run: its config keys, flattened, and `run.*`."""
    config = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    values: dict[str, Any] = {"seed": config["seed"]}
    for section in _RUN_SECTIONS:
        values.update(_flatten(config[section], section))
    t = config["trainer"]
    run = {
        "dir": str(Path(run_dir).resolve()), "id": run_id, "steps": plan.steps,
        "tokens": plan.steps * plan.tokens_per_step, "flops": plan.steps * plan.tokens_per_step * plan.flops_per_token,
        "params": plan.counts.params(t["param_count"]), "tokens_per_step": plan.tokens_per_step,
        "batch_size": t["batch_size"], "seq_len": config["model"]["seq_len"], "lr": config["optim"]["lr"],
        "warmup_steps": plan.warmup, "decay_start": plan.schedule.decay_start,
        "micro_batch_size": t["batch_size"] // t["grad_accum"] // t["world_size"],
        "final_lr": config["optim"]["lr"] * (1.0 if config["schedule"]["name"] == "constant"
                                             else config["schedule"]["final_lr_fraction"]),
        "python": sys.executable, "world_size": t["world_size"], "gpus": gpus, "seed": config["seed"],
    }
    values.update({f"run.{k}": v for k, v in run.items()})
    return values


def _flatten(node: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flatten(value, f"{prefix}.{key}"))
    return out


def render(value: Any) -> str:
    """A value as one command-line word, as Python writes it: floats exactly (3e-4 -> 0.0003,
    1.0 -> 1.0, so a float flag gets a float), booleans True/False, lists comma-separated,
    None as an empty string. Counts (steps, tokens, parameters) are integers already."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return ",".join(render(v) for v in value)
    return str(value)


def fill(text: str, values: dict[str, Any], where: str = "command.template") -> str:
    """`text` with every {placeholder} replaced by its rendered value."""
    def substitute(match: re.Match) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        key = match.group(1).strip()
        if key not in values:
            raise ConfigError(f"{where}: unknown placeholder {{{key}}}; use a config key such as "
                              f"{{model.n_layer}} or one of {', '.join('{run.' + k + '}' for k in RUN_KEYS)}")
        return render(values[key])

    return _PLACEHOLDER.sub(substitute, text)


def split(template: str, where: str = "command.template") -> list[str]:
    """The template's arguments, before filling (shell quoting rules, no shell)."""
    try:
        words = shlex.split(template)
    except ValueError as exc:
        raise ConfigError(f"{where} cannot be split into arguments: {exc}") from None
    if not words:
        raise ConfigError(f"{where} is empty: give the command that trains one run")
    return words


def command_argv(command: Any, values: dict[str, Any], resume: bool = False) -> list[str]:
    """The run's argument list: the template's words filled in, then `resume_args` when resuming."""
    argv = [fill(word, values) for word in split(command.template)]
    if resume and command.resume_args:
        argv += [fill(word, values, "command.resume_args") for word in split(command.resume_args, "command.resume_args")]
    return argv


def command_env(command: Any, values: dict[str, Any]) -> dict[str, str]:
    """The extra environment variables of the study (command.env), filled in."""
    return {str(k): fill(str(v), values, f"command.env.{k}") for k, v in dict(command.env).items()}
