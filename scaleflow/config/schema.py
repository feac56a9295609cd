"""The config schema: one dataclass per config group (Hydra structured configs), with units in
the field comments. FLOPs are floating-point operations, tokens are tokens (bytes for
byte-level corpora), batch sizes are in sequences unless a name says tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from scaleflow.errors import ConfigError

PARAM_COUNTS = ("non_embedding", "with_head", "total")
FLOP_COUNTS = ("6n_non_embedding", "6n_with_head", "6n_total", "deepseek", "chinchilla")



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
    # A model scaleflow does not build (an external trainer's): its parameter count, which then
    # stands for every count (non_embedding, with_head, total), and its training FLOPs per
    # token (None: 6 x params). None: both counted from the shape above.
    params: Optional[float] = None
    flops_per_token: Optional[float] = None

    def __post_init__(self) -> None:
        validate_model(self)

    @property
    def ff_width(self) -> int:
        if self.d_ff:
            return self.d_ff
        if self.mlp == "swiglu":
            return int(math.ceil(8 * self.d_model / 3 / 8) * 8)
        return 4 * self.d_model


def choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(str, choices))}")



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
    choice("model.norm", m.norm, ("rmsnorm", "layernorm"))
    choice("model.mlp", m.mlp, ("gelu", "swiglu"))
    choice("model.pos", m.pos, ("rope", "learned"))
    choice("model.parametrization", m.parametrization, ("sp", "mup"))
    for name in ("params", "flops_per_token"):
        if getattr(m, name, None) is not None and not getattr(m, name) > 0:
            raise ConfigError(f"model.{name} must be positive, got {getattr(m, name)}")
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
    # tokens: a directory made by `scaleflow data prepare` (shards + meta.json, docs/data.md),
    # in place of paths/val_paths; its meta.json gives the dtype, split and vocab_size.
    # None (not part of a run's identity while unset): the token files in paths.
    path: Optional[str] = None


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
class MetricsSourceConfig:
    """Where an external trainer's results are read from (docs/contract.md)."""

    # contract: metrics.jsonl (+ result.json) in the run directory, written as docs/contract.md
    #   says (scaleflow/runlog.py does it); jsonl | csv: the trainer's own log file, its keys
    #   renamed by `keys`; tensorboard: event files under `path`; json: one final JSON object;
    #   regex: `regex` over the trainer's stdout, the last match wins.
    format: str = "contract"
    path: Optional[str] = None  # file or folder, relative to the run directory (globs allowed)
    # scaleflow's key -> the trainer's key, column or tag, for step, tokens, train_loss,
    # val_loss, params; a key not mapped is looked up under its own name.
    keys: dict[str, str] = field(default_factory=dict)
    regex: Optional[str] = None  # format=regex: named groups (val_loss or train_loss, step, params)
    params_regex: Optional[str] = None  # a group `params` over stdout: the trainer's own N


@dataclass
class CommandConfig:
    """An external training program in place of scaleflow's trainer (docs/own-trainer.md)."""

    # The command as a template over the run's resolved values ({model.n_layer}, {optim.lr},
    # {run.tokens}, {run.dir}, ...): split into arguments first, each filled in after, so a
    # value never becomes shell syntax. None: scaleflow's own GPT trainer.
    template: Optional[str] = None
    resume_args: Optional[str] = None  # appended (templated) when the run resumes
    # The run resumes (resume_args, SCALEFLOW_RESUME=1) once a file matching this glob exists in
    # the run directory (the trainer's checkpoint); None: once an earlier attempt has started.
    resume_if: Optional[str] = None
    env: dict[str, str] = field(default_factory=dict)  # extra environment variables (templated)
    cwd: Optional[str] = None  # working directory; None = where the study was planned
    metrics: MetricsSourceConfig = field(default_factory=MetricsSourceConfig)


@dataclass
class StudyConfig:
    """What every study kind has. Each kind has its own schema below, chosen in a study file's
    defaults list (`- study: isoflop`), so a key of another kind is an error, never ignored."""

    name: str = "study"
    kind: str = "isoflop"  # fixed by the schema: isoflop | lr_bs | decay_branches | mup_transfer
    throughput: float = 2e10  # FLOP/s assumed by --dry-run time estimates


@dataclass
class LadderStudyConfig(StudyConfig):
    """A study over a model ladder: explicit shapes, each a dict of model.* overrides, or the
    width/depth rule (every width x depth with d_model / n_layer in [aspect_min, aspect_max])."""

    shapes: list[Any] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)  # d_model values
    depths: list[int] = field(default_factory=list)  # n_layer values
    aspect_min: float = 0.0
    aspect_max: Optional[float] = None  # None = no upper bound
    head_size: int = 16  # n_head = d_model / head_size for rule-made shapes
    min_steps: int = 50  # leave out a run shorter than this many optimizer steps


@dataclass
class IsoflopStudyConfig(LadderStudyConfig):
    kind: str = "isoflop"
    budgets: list[float] = field(default_factory=list)  # training FLOPs per budget
    max_tokens_per_param: Optional[float] = None  # leave out (N, C) pairs above this D/N


@dataclass
class LrBsStudyConfig(LadderStudyConfig):
    """Peak LR x batch size at each budget, for one model or one per budget."""

    kind: str = "lr_bs"
    budgets: list[float] = field(default_factory=list)  # training FLOPs per budget
    lrs: list[float] = field(default_factory=list)  # peak learning rates
    batch_sizes: list[int] = field(default_factory=list)  # sequences per optimizer step
    every_shape: bool = False  # every shape at every budget: an (N, D) grid for `fit --law lr-bs-nd`


@dataclass
class DecayBranchesStudyConfig(LadderStudyConfig):
    """Branch budgets in tokens, as tokens-per-parameter multiples, or as a grid (one of them)."""

    kind: str = "decay_branches"
    branch_tokens: list[float] = field(default_factory=list)
    branch_tokens_per_param: list[float] = field(default_factory=list)
    branch_grid: Optional[str] = None  # "linear:MIN:MAX:N" or "geometric:MIN:MAX:N" (tokens)
    # IsoFLOP budgets (training FLOPs): each model branches at D = C / (its FLOPs per token), so
    # every budget is an IsoFLOP curve of branches (approach 2) at the cost of one trunk per model.
    branch_flops: list[float] = field(default_factory=list)
    max_tokens_per_param: Optional[float] = None  # branch_flops: leave out (N, C) pairs above this D/N
    decay_variants: list[Any] = field(default_factory=list)  # [{decay_shape, decay_fraction}]


@dataclass
class MupTransferStudyConfig(StudyConfig):
    """LR x width grids, once per parametrization; every run's length is trainer.*."""

    kind: str = "mup_transfer"
    widths: list[int] = field(default_factory=list)  # d_model values at depth model.n_layer
    head_size: int = 16  # n_head = d_model / head_size
    lrs: list[float] = field(default_factory=list)  # peak learning rates
    parametrizations: list[str] = field(default_factory=lambda: ["sp", "mup"])
    min_steps: int = 50  # refuse a width whose run is shorter than this many steps


#: study kind -> its schema (the `study` config group: `- study: KIND` in a study's defaults).
STUDIES = {"isoflop": IsoflopStudyConfig, "lr_bs": LrBsStudyConfig,
           "decay_branches": DecayBranchesStudyConfig, "mup_transfer": MupTransferStudyConfig}


@dataclass
class LocalLauncherConfig:
    """launcher=local: runs on this machine."""

    name: str = "local"
    max_parallel: Optional[int] = None  # concurrent runs; None = one per GPU, or 2 on CPU
    threads_per_run: Optional[int] = None  # torch threads per run; None = cores / max_parallel


@dataclass
class SlurmLauncherConfig:
    """launcher=slurm: sbatch through submitit."""

    name: str = "slurm"
    partition: Optional[str] = None  # None = the cluster's default
    account: Optional[str] = None
    qos: Optional[str] = None
    time_min: int = 60  # minutes
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem_gb: Optional[float] = None  # None = the cluster's default
    constraint: Optional[str] = None
    array_parallelism: int = 64
    max_array_size: int = 1000  # chunk job arrays under the cluster's MaxArraySize
    setup: list[str] = field(default_factory=list)  # lines run before the job (module load...)
    extra: dict[str, Any] = field(default_factory=dict)  # extra sbatch parameters
    signal_delay_s: int = 90  # seconds before the time limit that submitit signals the job
    python: Optional[str] = None  # interpreter on the nodes; None = this one


#: launcher.name -> its schema: a key of another launcher is an error, not a silent no-op.
LAUNCHERS = {"local": LocalLauncherConfig, "slurm": SlurmLauncherConfig}


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
    command: CommandConfig = field(default_factory=CommandConfig)
    study: Any = None  # one of STUDIES (typed by it), chosen by `- study: KIND`; None for a lone run
    launcher: Any = None  # one of LAUNCHERS (typed by it), chosen by launcher=NAME
    tracker: Any = None  # one of config.trackers.TRACKERS, chosen by tracker=NAME; not part of the run id
    hparams: Any = None  # one of config.hparams.HPARAMS, chosen by hparams=NAME: how planners set LR, batch, WD


# --------------------------------------------------------------------------- composition
