"""Cross-field checks Hydra cannot express; each failure is a one-line ConfigError."""

from __future__ import annotations

import re
from typing import Any

from scaleflow.config.schema import FLOP_COUNTS, LAUNCHERS, PARAM_COUNTS, choice, validate_model
from scaleflow.config.trackers import check_tracker
from scaleflow.errors import ConfigError
from scaleflow.schedules import SHAPES


def validate(cfg: Any) -> None:
    """Cross-field checks Hydra cannot express. Raises ConfigError."""
    validate_model(cfg.model)
    choice("data.kind", cfg.data.kind, ("stdlib", "text", "tokens"))
    choice("data.token_dtype", cfg.data.token_dtype, ("uint16", "uint32"))
    if not 0 < cfg.data.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must lie in (0, 1), got {cfg.data.val_fraction}")
    _check_data_path(cfg.data)
    s = cfg.schedule
    choice("schedule.name", s.name, ("constant", "cosine", "wsd", "multistep"))
    choice("schedule.decay_shape", s.decay_shape, SHAPES)
    if s.name == "wsd" and not 0 < s.decay_fraction < 1:
        raise ConfigError(f"schedule.decay_fraction must lie in (0, 1), got {s.decay_fraction}")
    if not 0 <= s.final_lr_fraction <= 1:
        raise ConfigError(f"schedule.final_lr_fraction must lie in [0, 1], got {s.final_lr_fraction}")
    if s.name == "wsd" and s.decay_shape == "exponential" and s.final_lr_fraction <= 0:
        raise ConfigError("schedule.decay_shape=exponential needs schedule.final_lr_fraction > 0")
    t = cfg.trainer
    choice("trainer.flop_count", t.flop_count, FLOP_COUNTS)
    choice("trainer.param_count", t.param_count, PARAM_COUNTS)
    choice("trainer.precision", t.precision, ("auto", "fp32", "bf16"))
    lengths = [n for n in ("steps", "tokens", "flops") if getattr(t, n) > 0]
    if len(lengths) > 1:
        raise ConfigError(f"give one run length, not {' and '.join('trainer.' + n for n in lengths)}")
    if min(t.steps, t.tokens, t.flops) < 0:
        raise ConfigError("trainer.steps, trainer.tokens and trainer.flops must not be negative")
    if t.batch_size < 1 or t.grad_accum < 1 or t.batch_size % t.grad_accum:
        raise ConfigError(
            f"trainer.batch_size={t.batch_size} must be a positive multiple of trainer.grad_accum={t.grad_accum}"
        )
    if t.world_size < 1 or (t.batch_size // t.grad_accum) % t.world_size:
        raise ConfigError(
            f"trainer.batch_size / grad_accum = {t.batch_size // t.grad_accum} must divide "
            f"evenly over trainer.world_size={t.world_size}"
        )
    if t.noise_scale and t.grad_accum < 2:
        raise ConfigError(
            "trainer.noise_scale needs two batch sizes: set trainer.grad_accum >= 2 (a micro-batch is the small one)"
        )
    for name in ("eval_every", "log_every", "checkpoint_every", "eval_sequences"):
        if getattr(t, name) < 1:
            raise ConfigError(f"trainer.{name} must be positive, got {getattr(t, name)}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr must be positive, got {cfg.optim.lr}")
    if cfg.model.tie_embeddings and cfg.optim.lr_mult_readout != 1:
        raise ConfigError(
            f"optim.lr_mult_readout={cfg.optim.lr_mult_readout} needs model.tie_embeddings=false: a tied "
            "readout is the token embedding and trains with optim.lr_mult_embedding"
        )
    _check_command(cfg)
    choice("launcher.name", cfg.launcher.name, tuple(LAUNCHERS))
    check_tracker(cfg)
    if cfg.launcher.name == "slurm":
        _check_sbatch_values(cfg.launcher)
    if t.extendable and (s.name != "constant" or (s.warmup_steps < 0 and s.warmup_tokens <= 0)):
        raise ConfigError("trainer.extendable needs schedule.name=constant and an absolute warmup")


def _check_data_path(data: Any) -> None:
    """data.path (a prepared directory) is a kind of token data, in place of token files."""
    if getattr(data, "path", None) is None:
        return
    if data.kind != "tokens":
        raise ConfigError(f"data.path (a directory made by `scaleflow data prepare`) needs data=tokens, not data={data.kind}")
    if data.paths or data.val_paths:
        raise ConfigError("give data.path (a prepared directory) or data.paths/val_paths (token files), not both")


METRICS_FORMATS = ("contract", "jsonl", "csv", "tensorboard", "json", "regex")


def _check_command(cfg: Any) -> None:
    """An external trainer's settings (the placeholders are checked by the planner, which
    knows every run's values)."""
    c = getattr(cfg, "command", None)
    if c is None or c.template is None:
        given = [n for n in ("params", "flops_per_token") if getattr(cfg.model, n, None) is not None]
        if given:
            raise ConfigError(f"model.{given[0]} describes a model of an external trainer: set command.template, "
                              "or leave it out and scaleflow counts its own model")
        return
    if not str(c.template).strip():
        raise ConfigError("command.template is empty: give the command that trains one run")
    m = c.metrics
    choice("command.metrics.format", m.format, METRICS_FORMATS)
    if m.format == "regex" and not m.regex:
        raise ConfigError("command.metrics.format=regex needs command.metrics.regex (named groups, e.g. (?P<val_loss>...))")
    for name, pattern in (("regex", m.regex), ("params_regex", m.params_regex)):
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"command.metrics.{name} is not a regular expression: {exc}") from None
    if m.format in ("jsonl", "csv", "json") and not m.path:
        raise ConfigError(f"command.metrics.format={m.format} needs command.metrics.path (the trainer's file, in the run directory)")


_SBATCH_VALUE = re.compile(r"^[A-Za-z0-9_.,:@%+=/\[\]-]*$")


def _check_sbatch_values(launcher: Any) -> None:
    """Values that end up in #SBATCH lines: no newlines, spaces or shell syntax."""
    values = {f"launcher.{k}": getattr(launcher, k) for k in ("partition", "account", "qos", "constraint", "python")
              if getattr(launcher, k) is not None}
    for key, value in dict(launcher.extra).items():
        values[f"launcher.extra key {key!r}"] = str(key)
        values[f"launcher.extra.{key}"] = str(value)
    for name, value in values.items():
        if not _SBATCH_VALUE.match(str(value)):
            raise ConfigError(f"{name}={value!r} may only hold letters, digits and _ . , : @ % + = / [ ] -")
    for line in launcher.setup:
        if "\n" in str(line) or "\r" in str(line):
            raise ConfigError("each launcher.setup entry must be one line")
