"""Typed config schemas (Hydra structured configs) and composition.

Every config group has a dataclass here; the YAML files in `conf/` and `sweeps/` only fill in
values. Because the composed config is structured, a mistyped key or a value of the wrong type
in a file or an override is an error, never a silent default.

Units are in the field comments: FLOPs are floating-point operations, tokens are tokens
(bytes for byte-level corpora), batch sizes are in sequences unless a name says tokens.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from scaleflow.errors import ConfigError
from scaleflow.schedules import SHAPES

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"
SWEEPS_DIR = REPO_ROOT / "sweeps"

PARAM_COUNTS = ("non_embedding", "with_head", "total")
FLOP_COUNTS = ("6n_non_embedding", "6n_with_head", "6n_total", "deepseek", "chinchilla")


def _choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(str, choices))}")


@dataclass
class MupConfig:
    base_width: int = 256  # d_base: the width at which muP equals SP
    input_mult: float = 1.0  # alpha_in: embeddings output x alpha_in
    output_mult: float = 1.0  # alpha_out: logits x alpha_out / m
    zero_readout: bool = False  # zero-initialise the unembedding
    zero_query: bool = False  # zero-initialise the query projection
    scale_depth: float = 0.0  # MiniCPM: block output x scale_depth / sqrt(n_layer); 0 = off
    weight_decay_scaling: str = "width"  # "width": lambda x m (keeps eta*lambda fixed); "none"


@dataclass
class ModelConfig:
    n_layer: int = 2
    d_model: int = 64
    n_head: int = 4
    d_ff: int = 0  # MLP hidden width; 0 means 4 d_model (GELU) or 8/3 d_model rounded (SwiGLU)
    vocab_size: int = 256  # tokens; 256 for the byte-level corpora
    seq_len: int = 128  # tokens per sequence
    norm: str = "rmsnorm"  # rmsnorm | layernorm
    bias: bool = False
    mlp: str = "gelu"  # gelu | swiglu
    tie_embeddings: bool = True
    qk_norm: bool = False
    pos: str = "rope"  # rope | learned
    parametrization: str = "sp"  # sp | mup
    init_std: float = 0.02
    mup: MupConfig = field(default_factory=MupConfig)

    def __post_init__(self) -> None:
        validate_model(self)

    @property
    def ff_width(self) -> int:
        if self.d_ff:
            return self.d_ff
        if self.mlp == "swiglu":
            return int(math.ceil(8 * self.d_model / 3 / 8) * 8)
        return 4 * self.d_model


def validate_model(m: Any) -> None:
    """Checks shared by the dataclass and composed DictConfigs (Hydra skips __post_init__)."""
    for name in ("n_layer", "d_model", "n_head", "vocab_size", "seq_len"):
        if getattr(m, name) < 1:
            raise ConfigError(f"model.{name} must be positive, got {getattr(m, name)}")
    if m.d_model % m.n_head:
        raise ConfigError(
            f"model.d_model={m.d_model} is not divisible by model.n_head={m.n_head}"
        )
    if m.pos == "rope" and (m.d_model // m.n_head) % 2:
        raise ConfigError(f"rotary positions need an even head size, got {m.d_model // m.n_head}")
    _choice("model.norm", m.norm, ("rmsnorm", "layernorm"))
    _choice("model.mlp", m.mlp, ("gelu", "swiglu"))
    _choice("model.pos", m.pos, ("rope", "learned"))
    _choice("model.parametrization", m.parametrization, ("sp", "mup"))
    if m.parametrization == "mup" and m.mup.base_width > m.d_model:
        raise ConfigError(
            f"model.mup.base_width={m.mup.base_width} is larger than model.d_model={m.d_model}"
        )
    if m.parametrization == "mup" and m.mup.zero_readout and m.tie_embeddings:
        raise ConfigError(
            "model.mup.zero_readout=true needs model.tie_embeddings=false: a tied readout is the "
            "token embedding, which cannot start at zero"
        )


@dataclass
class DataConfig:
    kind: str = "stdlib"  # stdlib | text | tokens
    paths: list[str] = field(default_factory=list)  # text or token files (globs allowed)
    val_paths: list[str] = field(default_factory=list)  # tokens: validation files; else split
    token_dtype: str = "uint16"  # tokens: uint16 | uint32
    val_fraction: float = 0.05  # share of files (stdlib, text) held out for validation


@dataclass
class OptimConfig:
    lr: float = 3e-3  # peak learning rate
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1  # decoupled (AdamW), applied to matrices only
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    # Per-group LR multipliers on top of the parametrization's own rules.
    lr_mult_embedding: float = 1.0
    lr_mult_hidden: float = 1.0
    lr_mult_readout: float = 1.0
    lr_mult_vector: float = 1.0


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # constant | cosine | wsd | multistep
    warmup_steps: int = -1  # optimizer steps of linear warmup; -1 = 5% of the run
    warmup_tokens: float = 0.0  # alternative absolute warmup length in tokens (wins if > 0)
    final_lr_fraction: float = 0.1  # cosine/wsd: final LR as a fraction of the peak
    decay_fraction: float = 0.2  # wsd: decay over the last fraction f of the run
    decay_shape: str = "1-sqrt"  # wsd: linear | cosine | 1-sqrt | exponential


@dataclass
class TrainerConfig:
    batch_size: int = 16  # sequences per optimizer step (global, all micro-batches)
    grad_accum: int = 1  # micro-batches per step
    steps: int = 0  # length in optimizer steps ...
    tokens: float = 0.0  # ... or in training tokens ...
    flops: float = 0.0  # ... or in training FLOPs (counted with flop_count); one of the three
    flop_count: str = "6n_with_head"  # which FLOPs-per-token count measures compute
    param_count: str = "with_head"  # which N a study reports and plans with
    eval_every: int = 100  # steps between validation evaluations (and at the end)
    eval_sequences: int = 64  # validation sequences (fixed set)
    log_every: int = 10  # steps between metrics.jsonl lines
    checkpoint_every: int = 100  # steps between checkpoints
    keep_checkpoints: int = 2  # periodic checkpoints kept (fork checkpoints are always kept)
    divergence_factor: float = 3.0  # stop as diverged if train loss > factor x initial loss
    noise_scale: bool = False  # log the gradient noise scale (needs grad_accum >= 2)
    compile: bool = False  # torch.compile the model (CUDA)
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    world_size: int = 1  # data-parallel processes
    # A decay-branch trunk: constant LR after an absolute warmup, so its length is not part of
    # its identity and it can be extended to serve larger budgets later.
    extendable: bool = False


@dataclass
class StudyConfig:
    name: str = "study"
    kind: str = "isoflop"  # isoflop | lr_bs | decay_branches | mup_transfer
    budgets: list[float] = field(default_factory=list)  # training FLOPs per budget
    # The model ladder: explicit shapes, each a dict of model.* overrides ...
    shapes: list[Any] = field(default_factory=list)
    # ... or a width/depth rule: every (width, depth) whose aspect ratio d_model / n_layer
    # lies in [aspect_min, aspect_max].
    widths: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    aspect_min: float = 0.0
    aspect_max: float = 1e9
    head_size: int = 16  # n_head = d_model / head_size for rule-made shapes
    min_steps: int = 50  # skip a model whose run at a budget would be shorter than this
    max_tokens_per_param: float = 0.0  # skip (N, C) pairs above this ratio; 0 = no limit
    lrs: list[float] = field(default_factory=list)  # lr_bs: peak learning rates
    batch_sizes: list[int] = field(default_factory=list)  # lr_bs: sequences per step
    throughput: float = 2e10  # FLOP/s assumed by --dry-run time estimates
    # decay_branches: budgets in tokens, or as tokens-per-parameter multiples
    branch_tokens: list[float] = field(default_factory=list)
    branch_tokens_per_param: list[float] = field(default_factory=list)
    branch_grid: str = ""  # "linear:MIN:MAX:N" or "geometric:MIN:MAX:N" (tokens)
    decay_variants: list[Any] = field(default_factory=list)  # [{decay_shape, decay_fraction}]
    # mup_transfer: LR x width grids, once per parametrization (the run length is trainer.*)
    parametrizations: list[str] = field(default_factory=lambda: ["sp", "mup"])


@dataclass
class LauncherConfig:
    name: str = "local"  # local | slurm
    max_parallel: int = 0  # local: concurrent runs; 0 = one per GPU, or 2 on CPU
    threads_per_run: int = 0  # local: torch threads per run; 0 = cores / max_parallel
    # slurm
    partition: str = ""
    account: str = ""
    qos: str = ""
    time_min: int = 60  # minutes
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem_gb: float = 0.0  # 0 = cluster default
    constraint: str = ""
    array_parallelism: int = 64
    max_array_size: int = 1000  # chunk job arrays under the cluster's MaxArraySize
    setup: list[str] = field(default_factory=list)  # lines run before the job (module load...)
    extra: dict[str, Any] = field(default_factory=dict)  # extra sbatch parameters
    signal_delay_s: int = 90  # seconds before the time limit that submitit signals the job
    python: str = ""  # interpreter on the nodes; "" = this one


@dataclass
class Config:
    """A run (model, data, optim, schedule, trainer) plus, for sweeps, the study and launcher."""

    run_dir: str = ""  # where `scaleflow train` writes; "" = runs/train/<run id>
    study_dir: str = ""  # where a study lives; "" = runs/<study name>
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    resume: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)


# --------------------------------------------------------------------------- composition

_RUN_KEYS = ("seed", "model", "data", "optim", "schedule", "trainer")
# Bookkeeping that does not change a run's result, so not part of its identity.
_UNHASHED_TRAINER_KEYS = ("checkpoint_every", "keep_checkpoints", "log_every")


def _register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_config", node=Config)


def _hydra_message(exc: BaseException) -> str:
    """One line from a Hydra/OmegaConf exception and its causes."""
    parts = []
    while exc is not None:
        text = str(exc).strip().splitlines()
        if text and text[0] not in parts:
            parts.append(text[0])
        exc = exc.__cause__ or exc.__context__
    return ": ".join(parts) or "invalid configuration"


def _compose(config_dir: Path, name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    _register_schema()
    GlobalHydra.instance().clear()
    extra = [] if config_dir == CONF_DIR else [f"hydra.searchpath=[file://{CONF_DIR}]"]
    try:
        with initialize_config_dir(str(config_dir), version_base=None):
            cfg = compose(name, overrides=extra + list(overrides))
    except _error_types() as exc:
        raise ConfigError(_hydra_message(exc)) from None
    finally:
        GlobalHydra.instance().clear()
    with _config_errors():
        OmegaConf.set_struct(cfg, True)
        validate(cfg)
    return cfg


def _error_types() -> tuple:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return (HydraException, OmegaConfBaseException, ValueError, TypeError, KeyError)


class _config_errors:
    """Context manager turning OmegaConf errors into ConfigError."""

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        if exc is not None and isinstance(exc, _error_types()) and not isinstance(exc, ConfigError):
            raise ConfigError(_hydra_message(exc)) from None
        return False


def compose_run(overrides: list[str] = ()) -> DictConfig:
    """The config of one training run: conf/config.yaml plus Hydra overrides."""
    return _compose(CONF_DIR, "config", list(overrides))


def study_names() -> list[str]:
    return sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))


def find_study(study: str) -> Path:
    """A study file: a name from sweeps/ or a path to a YAML file."""
    path = Path(study)
    if path.suffix in (".yaml", ".yml") or "/" in study:
        if not path.is_file():
            raise ConfigError(f"study file {study} does not exist")
        return path.resolve()
    path = SWEEPS_DIR / f"{study}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown study {study!r}; choose one of {', '.join(study_names())} or give a YAML path")
    return path


def compose_study(study: str, overrides: list[str] = ()) -> DictConfig:
    """A study: its YAML file (which lists `config` in its defaults) plus overrides."""
    path = find_study(study)
    return _compose(path.parent, path.stem, list(overrides))


def validate(cfg: Any) -> None:
    """Cross-field checks Hydra cannot express. Raises ConfigError."""
    validate_model(cfg.model)
    _choice("data.kind", cfg.data.kind, ("stdlib", "text", "tokens"))
    _choice("data.token_dtype", cfg.data.token_dtype, ("uint16", "uint32"))
    if not 0 < cfg.data.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must lie in (0, 1), got {cfg.data.val_fraction}")
    s = cfg.schedule
    _choice("schedule.name", s.name, ("constant", "cosine", "wsd", "multistep"))
    _choice("schedule.decay_shape", s.decay_shape, SHAPES)
    if s.name == "wsd" and not 0 < s.decay_fraction < 1:
        raise ConfigError(f"schedule.decay_fraction must lie in (0, 1), got {s.decay_fraction}")
    if not 0 <= s.final_lr_fraction <= 1:
        raise ConfigError(f"schedule.final_lr_fraction must lie in [0, 1], got {s.final_lr_fraction}")
    if s.name == "wsd" and s.decay_shape == "exponential" and s.final_lr_fraction <= 0:
        raise ConfigError("schedule.decay_shape=exponential needs schedule.final_lr_fraction > 0")
    t = cfg.trainer
    _choice("trainer.flop_count", t.flop_count, FLOP_COUNTS)
    _choice("trainer.param_count", t.param_count, PARAM_COUNTS)
    _choice("trainer.precision", t.precision, ("auto", "fp32", "bf16"))
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
    _choice("launcher.name", cfg.launcher.name, ("local", "slurm"))
    _check_sbatch_values(cfg.launcher)
    if t.extendable and (s.name != "constant" or (s.warmup_steps < 0 and s.warmup_tokens <= 0)):
        raise ConfigError("trainer.extendable needs schedule.name=constant and an absolute warmup")


_SBATCH_VALUE = re.compile(r"^[A-Za-z0-9_.,:@%+=/\[\]-]*$")


def _check_sbatch_values(launcher: Any) -> None:
    """Values that end up in #SBATCH lines: no newlines, spaces or shell syntax."""
    values = {f"launcher.{k}": getattr(launcher, k) for k in ("partition", "account", "qos", "constraint", "python")}
    for key, value in dict(launcher.extra).items():
        values[f"launcher.extra key {key!r}"] = str(key)
        values[f"launcher.extra.{key}"] = str(value)
    for name, value in values.items():
        if not _SBATCH_VALUE.match(str(value)):
            raise ConfigError(f"{name}={value!r} may only hold letters, digits and _ . , : @ % + = / [ ] -")
    for line in launcher.setup:
        if "\n" in str(line) or "\r" in str(line):
            raise ConfigError("each launcher.setup entry must be one line")


def run_section(cfg: Any) -> dict:
    """The part of a config that defines a run's result (what its id hashes)."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    return {k: container[k] for k in _RUN_KEYS}


def _identity(cfg: Any) -> dict:
    section = run_section(cfg)
    unhashed = _UNHASHED_TRAINER_KEYS + (("steps", "tokens", "flops") if section["trainer"].get("extendable") else ())
    section["trainer"] = {k: v for k, v in section["trainer"].items() if k not in unhashed}
    return section


def run_id(cfg: Any) -> str:
    """A short, stable hash of the run-defining config (not paths, device, launcher)."""
    blob = json.dumps(_identity(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def typed_config(values: Any) -> DictConfig:
    """A plain dict (or loaded YAML) as a typed, validated Config."""
    with _config_errors():
        cfg = OmegaConf.merge(OmegaConf.structured(Config), values)
        OmegaConf.set_struct(cfg, True)
        validate(cfg)
    return cfg


def typed_values(schema: type, values: dict, what: str) -> dict:
    """`values` (fields of the config dataclass `schema`) type-checked and converted as
    typed_config does for a whole run: a planner checks what it takes from untyped study
    fields (study.shapes, study.decay_variants) with this, once each."""
    try:
        with _config_errors():
            return OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(schema), values))
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def load_run_config(path: Path) -> DictConfig:
    """A run's resolved config.yaml, checked against the schema."""
    with _config_errors():
        values = OmegaConf.load(path)
    return typed_config(values)
