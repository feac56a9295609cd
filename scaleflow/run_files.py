"""What the trainer writes in a run directory, and how: config.yaml and run_id, metrics.jsonl
(one fsync'd JSON line per log step; a torn last line is skipped by readers), summary.json
once the run ends, and previous/<n>/ for an earlier run's results (resume=false)."""

from __future__ import annotations

import errno
import math
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from scaleflow import runlog
from scaleflow.errors import StoreError
from scaleflow.files import read_jsonl, write_json, write_text


def diverges(loss: float, initial_loss: float, factor: float) -> bool:
    """The divergence rule (trainer.divergence_factor): a loss that is not finite, or above
    `factor` x the run's first training loss."""
    return not math.isfinite(loss) or loss > factor * initial_loss


def set_aside_earlier_results(run_dir: Path) -> None:
    """resume=false starts a new run from step 0. What an earlier run left here moves to
    previous/<n>/ (as `sweep --force` does): left in place, its summary would read as this
    run's, and its checkpoints (often at later steps) would be what a later resume=true of
    this run picks up."""
    from scaleflow.store import archive

    if any((run_dir / name).exists() for name in ("summary.json", "metrics.jsonl", "checkpoints", "stdout.log")):
        archive(run_dir)


def write_config(run_dir: Path, cfg, this_id: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    text = OmegaConf.to_yaml(cfg) if isinstance(cfg, DictConfig) else OmegaConf.to_yaml(OmegaConf.structured(cfg))
    path = run_dir / "config.yaml"
    if not path.exists() or path.read_text() != text:
        write_text(path, text)
    write_text(run_dir / "run_id", this_id + "\n")


def append_metrics(path: Path, line: dict) -> None:
    """Append one metrics line, fsynced, with the run contract's own writer (runlog.py, what
    an external trainer uses too). A torn last line (a kill mid-write) is skipped by readers."""
    try:
        runlog.append_line(path, line)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreError(f"no space left on the device to write {path}; the run can resume from its last checkpoint") from None
        raise


def _mean(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def json_line(line: dict) -> str:
    """A metrics line as the run contract writes it (non-finite values kept, docs/contract.md)."""
    return runlog.encode_line(line).decode()


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the metrics logged up to `step`: the steps after it will be logged again."""
    kept = [line for line in read_jsonl(path) if line.get("step", 0) <= step]
    write_text(path, "".join(json_line(line) for line in kept))


def write_summary(run_dir, cfg, plan, corpus, status, diverged_step, this_id, wall) -> dict:
    lines = list(read_jsonl(run_dir / "metrics.jsonl"))
    summary = summary_fields(cfg, plan, lines, status, diverged_step, this_id, wall, corpus.tokens_per_byte)
    write_json(run_dir / "summary.json", summary)
    return summary


def summary_fields(cfg, plan, lines: list[dict], status: str, diverged_step, this_id: str, wall: float,
                   tokens_per_byte: Optional[float], tokens: Optional[float] = None) -> dict:
    """A finished run's summary.json from its config, plan and metrics lines: what the
    collector reads (docs/contract.md), for scaleflow's trainer and an external one alike.
    `tokens_per_byte`: the validation text's tokens per byte (1.0 for bytes; None: unknown, no
    val_bpb). `tokens`: the training tokens the trainer reported; None: steps x the planned
    tokens per step."""
    evals = [line for line in lines if line.get("val_loss") is not None]
    final = evals[-1] if evals and status == "done" else None
    steps_done = lines[-1]["step"] if lines else 0
    tokens = steps_done * plan.tokens_per_step if tokens is None else tokens
    counts = plan.counts.as_dict()
    return {
        "status": status,
        "run_id": this_id,
        "steps": steps_done,
        "planned_steps": plan.steps,
        "tokens": tokens,
        "flops": tokens * plan.flops_per_token,
        "flop_count": cfg.trainer.flop_count,
        "param_count": cfg.trainer.param_count,
        "params": plan.counts.params(cfg.trainer.param_count),
        "params_source": "planner",
        "val_loss": final["val_loss"] if final else None,
        # bits per byte: nats per token / ln 2 x tokens per byte
        "val_bpb": final["val_loss"] / math.log(2) * tokens_per_byte if final and tokens_per_byte else None,
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
