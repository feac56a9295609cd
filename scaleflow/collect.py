"""The collector: every finished run of a study (done or diverged) as one table, its
evaluation curves and its metrics history, for `scaleflow collect` and `scaleflow fit`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from scaleflow.files import read_json, read_jsonl
from scaleflow.store import is_finished, run_dirs


@dataclass
class Collected:
    runs: "object"  # pandas.DataFrame: one row per finished run or branch
    curves: "object"  # pandas.DataFrame: evaluation curves (for approach 1)
    skipped: int  # unfinished or corrupt runs left out
    warnings: list[str]
    history: "object" = None  # pandas.DataFrame: every metrics line (train loss, noise scale)


_SUMMARY_COLUMNS = (
    "status", "params", "params_non_embedding", "params_with_head", "params_total", "flops",
    "flops_6n_non_embedding", "flops_6n_with_head", "flops_6n_total", "flops_deepseek", "flops_chinchilla",
    "tokens", "steps", "lr", "batch_size", "batch_tokens", "seq_len", "n_layer", "d_model", "n_head",
    "parametrization", "schedule", "decay_shape", "decay_fraction", "seed", "wall_time_s", "diverged_step",
    "flop_count", "params_source", "val_bpb",
)


def collect(study_dir: Path, progress: Optional[Callable[[int], None]] = None) -> Collected:
    """Gather every finished run (done or diverged) into one table; skip the rest, counted."""
    import pandas as pd

    rows, curves, history, warnings, skipped = [], [], [], [], 0
    for run_dir in run_dirs(study_dir):
        summary = read_json(run_dir / "summary.json")
        meta = read_json(run_dir / "run.json") or {}
        if not is_finished(summary):
            skipped += 1
            if (run_dir / "summary.json").exists():
                warnings.append(f"{run_dir.name}: summary.json is corrupt")
            continue
        row = {"run_id": run_dir.name, "kind": meta.get("kind", "run"), "parent": meta.get("parent"),
               "fork_step": meta.get("fork_step"), "budget": meta.get("budget"), "label": meta.get("label", "")}
        row.update({k: summary.get(k) for k in _SUMMARY_COLUMNS})
        # An external trainer that logged no validation loss: its last training loss (loss_source says so).
        row["loss"] = summary.get("val_loss") if summary.get("val_loss") is not None else summary.get("final_train_loss")
        row["loss_source"] = summary.get("loss_source", "val")
        row["diverged"] = summary.get("status") == "diverged"
        rows.append(row)
        for line in read_jsonl(run_dir / "metrics.jsonl"):
            if line.get("step", 0) > 0:
                history.append({"run_id": run_dir.name, "step": line["step"], "tokens": line.get("tokens"),
                                "train_loss": line.get("train_loss"), "val_loss": line.get("val_loss"),
                                "grad_noise_scale": line.get("grad_noise_scale")})
            if line.get("val_loss") is not None and line.get("step", 0) > 0:
                curves.append({"run_id": run_dir.name, "kind": row["kind"], "parent": row["parent"],
                               "step": line["step"], "tokens": line.get("tokens"), "flops": line.get("flops"),
                               "val_loss": line["val_loss"], "params": row["params"],
                               "params_non_embedding": row["params_non_embedding"],
                               "params_with_head": row["params_with_head"], "params_total": row["params_total"]})
    if skipped:
        warnings.insert(0, f"skipped {skipped} unfinished or corrupt run(s)")
    runs = pd.DataFrame(rows, columns=["run_id", "kind", "parent", "fork_step", "budget", "label", *_SUMMARY_COLUMNS, "loss", "loss_source", "diverged"])
    return Collected(runs, pd.DataFrame(curves), skipped, warnings, pd.DataFrame(history))


def write_collected(study_dir: Path, collected: Collected) -> list[Path]:
    """runs.parquet, runs.csv and curves.parquet in the study directory (atomically)."""
    from scaleflow.files import atomic_write

    runs, curves = collected.runs, collected.curves
    writers = {
        "runs.parquet": lambda f: runs.to_parquet(f, index=False),
        "runs.csv": lambda f: runs.to_csv(f, index=False),
        "curves.parquet": lambda f: curves.to_parquet(f, index=False),
    }
    out = []
    for name, write in writers.items():
        path = Path(study_dir) / name
        atomic_write(path, write)
        out.append(path)
    return out
