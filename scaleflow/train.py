"""The trainer: `train(cfg, run_dir)` runs one training run, readable top to bottom.

A run directory holds `config.yaml` (resolved), `metrics.jsonl` (one line per log step),
`checkpoints/step_XXXXXXXX.pt` and, once the run ends, `summary.json`. Checkpoints hold the
model, the optimizer, the step and the RNG states; the data of a step is a pure function of
(seed, step), so a resumed or forked run continues bit for bit on CPU.
"""

from __future__ import annotations

import errno
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from omegaconf import DictConfig, OmegaConf

from scaleflow import schedules
from scaleflow.config import run_id
from scaleflow.counting import Counts, count
from scaleflow.distributed import Group, any_rank, env_group, mean, setup, teardown
from scaleflow.data import batch_offsets, check_length, gather, load_corpus, validation_offsets
from scaleflow.errors import ConfigError, StoreError
from scaleflow.checkpoints import checkpoint_path, latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint
from scaleflow.files import read_jsonl, write_json, write_text
from scaleflow.model import GPT
from scaleflow.plan import check_length as check_run_length, run_steps

DEFAULT_STEPS = 200  # run length when none of trainer.steps/tokens/flops is given
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s


@dataclass
class Plan:
    """A run's length and shape, derived from its config (all counts resolved)."""

    steps: int
    warmup: int
    tokens_per_step: int
    flops_per_token: float  # with trainer.flop_count
    counts: Counts


def plan_run(cfg) -> Plan:
    """Steps, warmup and counts of a run. Raises ConfigError for a run shorter than a step."""
    model_cfg = OmegaConf.to_object(cfg.model) if isinstance(cfg.model, DictConfig) else cfg.model
    counts = count(model_cfg)
    t = cfg.trainer
    tokens_per_step = t.batch_size * cfg.model.seq_len
    fpt = counts.flops_per_token(t.flop_count)
    steps = run_steps(t, counts, tokens_per_step)
    if steps is None:
        steps = DEFAULT_STEPS
    return Plan(steps, check_run_length(cfg.schedule, steps, tokens_per_step), tokens_per_step, fpt, counts)


def lr_at(cfg, plan: Plan, step: int) -> float:
    s = cfg.schedule
    factor = schedules.lr_factor(
        step, plan.steps, s.name, plan.warmup, s.final_lr_fraction, s.decay_fraction, s.decay_shape
    )
    return cfg.optim.lr * factor


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
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                             fused=device.type == "cuda")


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
    run_dir = Path(run_dir)
    started = time.time()
    plan = plan_run(cfg)
    t = cfg.trainer
    group_env = env_group()
    device = pick_device(cfg.device if not group_env.active or cfg.device != "auto" else _rank_device(group_env))
    group = setup(t.world_size, device)
    corpus = load_corpus(cfg.data, cfg.model.vocab_size)
    check_length(corpus, cfg.model.seq_len)
    this_id = run_id(cfg)
    if group.is_main:
        _write_config(run_dir, cfg, this_id)
        if not cfg.resume:
            _set_aside_earlier_results(run_dir)

    torch.manual_seed(cfg.seed)
    model = GPT(OmegaConf.to_object(cfg.model) if isinstance(cfg.model, DictConfig) else cfg.model).to(device)
    optimizer = build_optimizer(model, cfg, device)
    bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    step_model = torch.compile(model) if t.compile else model
    if group.active:
        step_model = DDP(step_model, device_ids=[device.index] if device.type == "cuda" else None)

    metrics_path = run_dir / "metrics.jsonl"
    log = (lambda line: _log(metrics_path, line)) if group.is_main else (lambda line: None)
    fork_steps = {s for s in fork_steps if 0 < s <= plan.steps}
    stop_at = until if 0 < until < plan.steps else plan.steps
    noise = None
    if t.noise_scale:
        from scaleflow.noise_scale import NoiseScaleEMA

        noise = NoiseScaleEMA()
    state = {"initial_loss": None, "run_id": this_id}
    start = 0
    ckpt = latest_checkpoint(run_dir) if cfg.resume else None
    if ckpt is not None and ckpt.get("run_id") != this_id:
        raise StoreError(f"{run_dir} holds checkpoints of another config (run {ckpt.get('run_id')}, not {this_id})")
    if ckpt is None and init_from is not None:
        ckpt = _fork(init_from, metrics_path if group.is_main else None)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng_cpu"])
        if ckpt["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng_cuda"])
        start, state["initial_loss"] = ckpt["step"], ckpt["initial_loss"]
        if noise is not None and ckpt.get("noise_scale"):
            noise.load_state_dict(ckpt["noise_scale"])
        if group.is_main:
            _truncate_metrics(metrics_path, start)
    else:
        if group.is_main:
            metrics_path.unlink(missing_ok=True)
        log({"step": 0, "tokens": 0, "flops": 0.0, "lr": 0.0, "val_loss": evaluate(model, corpus, cfg, device, autocast)})

    def checkpoint(step: int) -> None:
        if group.is_main:
            extra = {**state, "noise_scale": noise.state_dict() if noise is not None else {}}
            save_checkpoint(checkpoint_path(run_dir, step), model, optimizer, step, extra)
            prune_checkpoints(run_dir, t.keep_checkpoints, fork_steps | {stop_at})

    peak = peak_flops(device)
    per_rank = t.batch_size // t.world_size
    micro = per_rank // t.grad_accum
    last_time, last_step = time.time(), start
    status, diverged_step, step = "done", None, start
    for step in range(start, stop_at):
        done = step + 1
        is_log_step = done % t.log_every == 0 or done % t.eval_every == 0 or done in (1, plan.steps, stop_at)
        # Ranks must agree on stopping: single-process runs check every step, others at log steps.
        if (not group.active or is_log_step) and any_rank(should_stop(), group, device):
            status = "interrupted"
            break
        lr = lr_at(cfg, plan, step)
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr * param_group["lr_mult"]
        offsets = batch_offsets(cfg.seed, step, t.batch_size, len(corpus.train), cfg.model.seq_len)
        offsets = offsets[group.rank * per_rank : (group.rank + 1) * per_rank]
        train_loss, small_batch_sq = 0.0, None
        for m in range(t.grad_accum):
            x, y = gather(corpus.train, offsets[m * micro : (m + 1) * micro], cfg.model.seq_len)
            sync = nullcontext() if not group.active or m == t.grad_accum - 1 else step_model.no_sync()
            with sync, autocast():
                _, loss = step_model(x.to(device), y.to(device))
            with sync:
                (loss / t.grad_accum).backward()
            train_loss += loss.detach() / t.grad_accum
            if noise is not None and m == 0:  # one micro-batch's gradient is g_1 / grad_accum
                small_batch_sq = _grad_sq(model) * t.grad_accum**2
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        noise_scale = None
        if noise is not None:
            tokens_small, tokens_big = micro * cfg.model.seq_len, plan.tokens_per_step
            noise_scale = noise.update(float(small_batch_sq), float(grad_norm) ** 2, tokens_small, tokens_big)

        if is_log_step:
            loss_value = mean(train_loss, group).item()  # the one host sync, at log steps only
            if state["initial_loss"] is None:
                state["initial_loss"] = loss_value
            now = time.time()
            tokens_per_s = (done - last_step) * plan.tokens_per_step / max(now - last_time, 1e-9)
            last_time, last_step = now, done
            line = {
                "step": done,
                "tokens": done * plan.tokens_per_step,
                "flops": done * plan.tokens_per_step * plan.flops_per_token,
                "lr": lr,
                "train_loss": loss_value,
                "grad_norm": grad_norm.item(),
                "tokens_per_s": tokens_per_s,
                "mfu": tokens_per_s * plan.flops_per_token / peak if peak else None,
            }
            if noise is not None:
                line["grad_noise_scale"] = noise_scale
            if not math.isfinite(loss_value) or loss_value > t.divergence_factor * state["initial_loss"]:
                line["diverged"] = True
                log(line)
                status, diverged_step = "diverged", done
                break
            if done % t.eval_every == 0 or done == plan.steps:
                line["val_loss"] = evaluate(model, corpus, cfg, device, autocast)
            log(line)
        if done % t.checkpoint_every == 0 or done in fork_steps or done == stop_at:
            checkpoint(done)

    teardown(group)
    if status == "interrupted":
        checkpoint(step)
        return {"status": status, "run_id": this_id, "step": step}
    if status == "done" and stop_at < plan.steps:
        return {"status": "stopped", "run_id": this_id, "step": stop_at}
    if not group.is_main:
        return {"status": status, "run_id": this_id}
    return _write_summary(run_dir, cfg, plan, corpus, status, diverged_step, this_id, time.time() - started)


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
    write_text(metrics_path, "".join(_json_line(line) for line in kept))
    return ckpt


def _set_aside_earlier_results(run_dir: Path) -> None:
    """resume=false starts a new run from step 0. What an earlier run left here moves to
    previous/<n>/ (as `sweep --force` does): left in place, its summary would read as this
    run's, and its checkpoints (often at later steps) would be what a later resume=true of
    this run picks up."""
    from scaleflow.store import archive

    if any((run_dir / name).exists() for name in ("summary.json", "metrics.jsonl", "checkpoints")):
        archive(run_dir)


def _write_config(run_dir: Path, cfg, this_id: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    text = OmegaConf.to_yaml(cfg) if isinstance(cfg, DictConfig) else OmegaConf.to_yaml(OmegaConf.structured(cfg))
    path = run_dir / "config.yaml"
    if not path.exists() or path.read_text() != text:
        write_text(path, text)
    write_text(run_dir / "run_id", this_id + "\n")


def _log(path: Path, line: dict) -> None:
    """Append one metrics line. A torn last line (a kill mid-write) is skipped by readers."""
    try:
        with open(path, "a") as f:
            f.write(_json_line(line))
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreError(f"no space left on the device to write {path}; the run can resume from its last checkpoint") from None
        raise


def _mean(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _json_line(line: dict) -> str:
    return json.dumps(line) + "\n"


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the metrics logged up to `step`: the steps after it will be logged again."""
    kept = [line for line in read_jsonl(path) if line.get("step", 0) <= step]
    write_text(path, "".join(_json_line(line) for line in kept))


def _write_summary(run_dir, cfg, plan: Plan, corpus, status, diverged_step, this_id, wall) -> dict:
    lines = list(read_jsonl(run_dir / "metrics.jsonl"))
    evals = [line for line in lines if line.get("val_loss") is not None]
    final = evals[-1] if evals and status == "done" else None
    steps_done = lines[-1]["step"] if lines else 0
    tokens = steps_done * plan.tokens_per_step
    counts = plan.counts.as_dict()
    summary = {
        "status": status,
        "run_id": this_id,
        "steps": steps_done,
        "planned_steps": plan.steps,
        "tokens": tokens,
        "flops": tokens * plan.flops_per_token,
        "flop_count": cfg.trainer.flop_count,
        "param_count": cfg.trainer.param_count,
        "params": plan.counts.params(cfg.trainer.param_count),
        "val_loss": final["val_loss"] if final else None,
        "val_bpb": final["val_loss"] / math.log(2) if final and corpus.byte_level else None,
        "initial_val_loss": lines[0].get("val_loss") if lines else None,
        # Throughput over the log intervals after the first (which includes start-up).
        "tokens_per_s": _mean(line.get("tokens_per_s") for line in lines[2:]),
        "mfu": _mean(line.get("mfu") for line in lines[2:]),
        "diverged_step": diverged_step,
        "wall_time_s": wall,
        # The settings the collector needs, so that it never has to parse config.yaml.
        "seed": cfg.seed,
        "lr": cfg.optim.lr,
        "batch_size": cfg.trainer.batch_size,
        "batch_tokens": plan.tokens_per_step,
        "seq_len": cfg.model.seq_len,
        "n_layer": cfg.model.n_layer,
        "d_model": cfg.model.d_model,
        "n_head": cfg.model.n_head,
        "parametrization": cfg.model.parametrization,
        "schedule": cfg.schedule.name,
        "decay_shape": cfg.schedule.decay_shape if cfg.schedule.name == "wsd" else None,
        "decay_fraction": cfg.schedule.decay_fraction if cfg.schedule.name == "wsd" else None,
        **{k: v for k, v in counts.items() if k.startswith("params_")},
        **{k: v * tokens for k, v in counts.items() if k.startswith("flops_")},
    }
    write_json(run_dir / "summary.json", summary)
    return summary
