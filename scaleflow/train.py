"""The trainer: `train(cfg, run_dir)` runs one training run, readable top to bottom.

A run directory holds `config.yaml` (resolved), `metrics.jsonl` (one line per log step),
`checkpoints/step_XXXXXXXX.pt` and, once the run ends, `summary.json`. Checkpoints hold the
model, the optimizer, the step and the RNG states; the data of a step is a pure function of
(seed, step), so a resumed or forked run continues bit for bit on CPU.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from omegaconf import DictConfig, OmegaConf

from scaleflow import schedules, trackers
from scaleflow.config import run_id
from scaleflow.distributed import Group, any_rank, env_group, mean, setup, teardown
from scaleflow.data import batch_offsets, check_length, gather, load_corpus, validation_offsets
from scaleflow.errors import ConfigError, StoreError
from scaleflow.checkpoints import checkpoint_path, latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint
from scaleflow.files import read_jsonl, write_text
from scaleflow.model import GPT
from scaleflow.plan import RunPlan, plan_run
from scaleflow.run_files import (append_metrics, diverges, json_line, set_aside_earlier_results, truncate_metrics, write_config,
                                 write_summary)

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s


def lr_at(cfg, plan: RunPlan, step: int) -> float:
    return cfg.optim.lr * schedules.lr_factor(step, plan.schedule, cfg.schedule)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA device is available")
    return torch.device(name)


def peak_flops(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def build_optimizer(model: GPT, cfg, device: torch.device) -> torch.optim.AdamW:
    o = cfg.optim
    mults = {"embedding": o.lr_mult_embedding, "hidden": o.lr_mult_hidden,
             "readout": o.lr_mult_readout, "vector": o.lr_mult_vector}
    groups = model.param_groups(o.weight_decay, mults)
    # fused: one kernel over all parameters, on CPU too (3x faster than the default loop there).
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=True)


# ----------------------------------------------------------------------------- training

def evaluate(model, corpus, cfg, device, autocast) -> float:
    """Mean validation loss over the fixed validation set, in nats per token."""
    seq = cfg.model.seq_len
    offsets = validation_offsets(len(corpus.val), seq, cfg.trainer.eval_sequences)
    micro = max(1, cfg.trainer.batch_size // cfg.trainer.grad_accum)
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad(), autocast():
        for i in range(0, len(offsets), micro):
            x, y = gather(corpus.val, offsets[i : i + micro], seq)
            _, loss = model(x.to(device), y.to(device))
            total += loss.item() * len(x)
            n += len(x)
    model.train()
    return total / n


@dataclass
class Session:
    """What one training process holds: where it runs, its data, model and optimizer."""

    device: torch.device
    group: Group
    corpus: object  # scaleflow.data.Corpus
    model: GPT
    optimizer: torch.optim.AdamW
    step_model: torch.nn.Module  # the model as the step runs it (compiled, DDP-wrapped)
    autocast: Callable
    noise: Optional[object]  # scaleflow.noise_scale.NoiseScaleEMA when trainer.noise_scale


def start_session(cfg) -> Session:
    """Device, process group, corpus, model (seeded) and optimizer of a run."""
    t = cfg.trainer
    group_env = env_group()
    device = pick_device(cfg.device if not group_env.active or cfg.device != "auto" else _rank_device(group_env))
    group = setup(t.world_size, device)
    corpus = load_corpus(cfg.data, cfg.model.vocab_size)
    check_length(corpus, cfg.model.seq_len)
    torch.manual_seed(cfg.seed)
    model = GPT(OmegaConf.to_object(cfg.model) if isinstance(cfg.model, DictConfig) else cfg.model).to(device)
    optimizer = build_optimizer(model, cfg, device)
    bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    step_model = torch.compile(model) if t.compile else model
    if group.active:
        step_model = DDP(step_model, device_ids=[device.index] if device.type == "cuda" else None)
    noise = None
    if t.noise_scale:
        from scaleflow.noise_scale import NoiseScaleEMA

        noise = NoiseScaleEMA()
    return Session(device, group, corpus, model, optimizer, step_model, autocast, noise)


def train(
    cfg,
    run_dir: Path,
    should_stop: Callable[[], bool] = lambda: False,
    until: int = 0,
    fork_steps: tuple[int, ...] = (),
    init_from: Optional["Fork"] = None,
) -> dict:
    """Train one run into `run_dir`; returns its summary (status done or diverged) or, for a
    run that stopped early, {"status": "interrupted" | "stopped", "step": ...}.

    should_stop: polled between steps; when True the run checkpoints and returns "interrupted"
      (Ctrl-C, SLURM preemption).
    until: stop (checkpointed) after this many steps, status "stopped"; 0 = the whole run.
    fork_steps: steps whose checkpoints are kept for decay branches.
    init_from: (decay branches) the parent trunk's checkpoint to start from when the run has
      none of its own; the trunk's metrics up to the fork are copied in.
    """
    run_dir, started, plan, t = Path(run_dir), time.time(), plan_run(cfg), cfg.trainer
    s = start_session(cfg)
    this_id = run_id(cfg)
    if s.group.is_main:
        write_config(run_dir, cfg, this_id)
        if not cfg.resume:
            set_aside_earlier_results(run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    tracker = trackers.start_run(cfg, run_dir, plan, this_id) if s.group.is_main else trackers.NO_TRACKER
    log = (lambda line: log_line(metrics_path, line, tracker)) if s.group.is_main else (lambda line: None)
    stop_at = until if 0 < until < plan.steps else plan.steps
    keep = {step for step in fork_steps if 0 < step <= plan.steps} | {stop_at}
    state = {"initial_loss": None, "run_id": this_id}
    start = resume_or_fork(s, cfg, run_dir, state, init_from, log)
    checkpoint = lambda step: save_state(s, run_dir, step, state, t.keep_checkpoints, keep)
    clock = Throughput(plan, s.device, start)
    # The step reads its settings from plain dataclasses: an OmegaConf attribute read costs
    # ~30 us, and ~26 per step were 15% of a tiny model's step on CPU.
    hot = OmegaConf.to_object(cfg) if isinstance(cfg, DictConfig) else cfg
    status, diverged_step, step = "done", None, start
    for step in range(start, stop_at):
        done = step + 1
        is_log_step = done % t.log_every == 0 or done % t.eval_every == 0 or done in (1, plan.steps, stop_at)
        # Ranks must agree on stopping: single-process runs check every step, others at log steps.
        if (not s.group.active or is_log_step) and any_rank(should_stop(), s.group, s.device):
            status = "interrupted"
            break
        lr, train_loss, grad_norm, noise_scale = train_step(s, hot, plan, step)
        if is_log_step:
            loss_value = mean(train_loss, s.group).item()  # the one host sync, at log steps only
            if state["initial_loss"] is None:
                state["initial_loss"] = loss_value
            line = {"step": done, "tokens": done * plan.tokens_per_step,
                    "flops": done * plan.tokens_per_step * plan.flops_per_token, "lr": lr,
                    "train_loss": loss_value, "grad_norm": grad_norm.item(), **clock.at(done)}
            if s.noise is not None:
                line["grad_noise_scale"] = noise_scale
            if diverges(loss_value, state["initial_loss"], t.divergence_factor):
                log({**line, "diverged": True})
                status, diverged_step = "diverged", done
                break
            if done % t.eval_every == 0 or done == plan.steps:
                line["val_loss"] = evaluate(s.model, s.corpus, hot, s.device, s.autocast)
            log(line)
        if done % t.checkpoint_every == 0 or done in keep:
            checkpoint(done)
    teardown(s.group)
    tracker.finish("stopped" if status == "done" and stop_at < plan.steps else status)
    if status == "interrupted":
        checkpoint(step)
        return {"status": status, "run_id": this_id, "step": step}
    if status == "done" and stop_at < plan.steps:
        return {"status": "stopped", "run_id": this_id, "step": stop_at}
    if not s.group.is_main:
        return {"status": status, "run_id": this_id}
    return write_summary(run_dir, cfg, plan, s.corpus, status, diverged_step, this_id, time.time() - started)


def log_line(path: Path, line: dict, tracker) -> None:
    """Append a metrics line to metrics.jsonl, then give it to the run's tracker (which never raises)."""
    append_metrics(path, line)
    tracker.log(line)


def resume_or_fork(s: Session, cfg, run_dir: Path, state: dict, init_from: Optional["Fork"], log) -> int:
    """Load the run's newest checkpoint (resume=true), else its trunk's fork checkpoint (a
    decay branch), else start afresh with the step-0 evaluation; returns the step to start at."""
    metrics_path = run_dir / "metrics.jsonl"
    ckpt = latest_checkpoint(run_dir) if cfg.resume else None
    if ckpt is not None and ckpt.get("run_id") != state["run_id"]:
        raise StoreError(f"{run_dir} holds checkpoints of another config "
                         f"(run {ckpt.get('run_id')}, not {state['run_id']})")
    if ckpt is None and init_from is not None:
        ckpt = _fork(init_from, metrics_path if s.group.is_main else None)
    if ckpt is None:
        if s.group.is_main:
            metrics_path.unlink(missing_ok=True)
        log({"step": 0, "tokens": 0, "flops": 0.0, "lr": 0.0,
             "val_loss": evaluate(s.model, s.corpus, cfg, s.device, s.autocast)})
        return 0
    s.model.load_state_dict(ckpt["model"])
    s.optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng_cpu"])
    if ckpt["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng_cuda"])
    state["initial_loss"] = ckpt["initial_loss"]
    if s.noise is not None and ckpt.get("noise_scale"):
        s.noise.load_state_dict(ckpt["noise_scale"])
    if s.group.is_main:
        truncate_metrics(metrics_path, ckpt["step"])
    return ckpt["step"]


def train_step(s: Session, cfg, plan: RunPlan, step: int):
    """One optimizer step on the global batch of `step` (this rank's share, in micro-batches);
    (lr, mean train loss as a tensor, gradient norm before clipping, noise scale or None)."""
    t = cfg.trainer
    per_rank = t.batch_size // t.world_size
    micro = per_rank // t.grad_accum
    lr = lr_at(cfg, plan, step)
    for param_group in s.optimizer.param_groups:
        param_group["lr"] = lr * param_group["lr_mult"]
    offsets = batch_offsets(cfg.seed, step, t.batch_size, len(s.corpus.train), cfg.model.seq_len)
    offsets = offsets[s.group.rank * per_rank : (s.group.rank + 1) * per_rank]
    train_loss, small_batch_sq = 0.0, None
    for m in range(t.grad_accum):
        x, y = gather(s.corpus.train, offsets[m * micro : (m + 1) * micro], cfg.model.seq_len)
        sync = nullcontext() if not s.group.active or m == t.grad_accum - 1 else s.step_model.no_sync()
        with sync, s.autocast():
            _, loss = s.step_model(x.to(s.device), y.to(s.device))
        with sync:
            (loss / t.grad_accum).backward()
        train_loss += loss.detach() / t.grad_accum
        if s.noise is not None and m == 0:  # one micro-batch's gradient is g_1 / grad_accum
            small_batch_sq = _grad_sq(s.model) * t.grad_accum**2
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(s.model.parameters(), clip)
    s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    noise_scale = None
    if s.noise is not None:
        tokens_small, tokens_big = micro * cfg.model.seq_len, plan.tokens_per_step
        noise_scale = s.noise.update(float(small_batch_sq), float(grad_norm) ** 2, tokens_small, tokens_big)
    return lr, train_loss, grad_norm, noise_scale


def save_state(s: Session, run_dir: Path, step: int, state: dict, keep_last: int, keep: set[int]) -> None:
    """Checkpoint at `step` (rank 0), then prune to the newest `keep_last` plus the steps in `keep`
    (fork steps and the run's last step)."""
    if s.group.is_main:
        extra = {**state, "noise_scale": s.noise.state_dict() if s.noise is not None else {}}
        save_checkpoint(checkpoint_path(run_dir, step), s.model, s.optimizer, step, extra)
        prune_checkpoints(run_dir, keep_last, keep)


class Throughput:
    """tokens/s and MFU over each log interval (wall clock: logged, never compared)."""

    def __init__(self, plan: RunPlan, device: torch.device, start: int):
        self.plan, self.peak = plan, peak_flops(device)
        self.last_time, self.last_step = time.time(), start

    def at(self, done: int) -> dict:
        now = time.time()
        tokens_per_s = (done - self.last_step) * self.plan.tokens_per_step / max(now - self.last_time, 1e-9)
        self.last_time, self.last_step = now, done
        mfu = tokens_per_s * self.plan.flops_per_token / self.peak if self.peak else None
        return {"tokens_per_s": tokens_per_s, "mfu": mfu}


def _rank_device(group: Group) -> str:
    return f"cuda:{group.local_rank}" if torch.cuda.is_available() else "cpu"


def _grad_sq(model) -> torch.Tensor:
    """Squared L2 norm of the current gradients."""
    return sum(p.grad.float().pow(2).sum() for p in model.parameters() if p.grad is not None)


@dataclass(frozen=True)
class Fork:
    """Where a decay branch starts: its trunk's run directory, run id and fork step."""

    trunk_dir: Path
    trunk_id: str
    step: int


def _fork(fork: Fork, metrics_path: Optional[Path]) -> dict:
    """A branch's starting state: the trunk's checkpoint at the fork, and its metrics so far."""
    ckpt = load_checkpoint(checkpoint_path(Path(fork.trunk_dir), fork.step))
    if ckpt is None:
        raise StoreError(f"the fork checkpoint of trunk {fork.trunk_id} at step {fork.step} is missing or unreadable")
    if ckpt.get("run_id") != fork.trunk_id:
        raise StoreError(f"{fork.trunk_dir} holds trunk {ckpt.get('run_id')}, not the branch's parent {fork.trunk_id}")
    if metrics_path is None:  # not rank 0: nothing to write
        return ckpt
    trunk_metrics = Path(fork.trunk_dir) / "metrics.jsonl"
    kept = [line for line in read_jsonl(trunk_metrics) if line.get("step", 0) <= ckpt["step"]]
    write_text(metrics_path, "".join(json_line(line) for line in kept))
    return ckpt


