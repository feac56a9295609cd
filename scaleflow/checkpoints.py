"""Checkpoints: everything a run needs to continue bit for bit, written atomically.

A checkpoint holds the model, the optimizer (Adam moments and step), the step, the RNG
states and the trainer's own state (initial loss, run id, noise-scale averages); the data
position is the step itself. Files are `checkpoints/step_XXXXXXXX.pt`, loaded with
`weights_only=True`, so a checkpoint can never run code.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import torch

from scaleflow.files import atomic_write


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file, oldest first."""
    found = []
    for path in (run_dir / "checkpoints").glob("step_*.pt"):
        try:
            found.append((int(path.stem.split("_")[1]), path))
        except ValueError:
            continue
    return sorted(found)


def save_checkpoint(path: Path, model, optimizer, step: int, state: dict) -> None:
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        **state,
    }
    # Serialise in memory first, so that a full disk fails in a plain write (OSError ENOSPC)
    # rather than deep inside torch's zip writer.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def load_checkpoint(path: Path) -> Optional[dict]:
    """A checkpoint's contents, or None if it is truncated or corrupt. Never unpickles code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # any unreadable file is treated as absent: fall back to an older one
        return None


def latest_checkpoint(run_dir: Path, at_most: Optional[int] = None) -> Optional[dict]:
    """The newest readable checkpoint (at or before step `at_most`)."""
    for step, path in reversed(list_checkpoints(run_dir)):
        if at_most is not None and step > at_most:
            continue
        ckpt = load_checkpoint(path)
        if ckpt is not None:
            return ckpt
    return None


def prune_checkpoints(run_dir: Path, keep: int, protected: set[int]) -> None:
    periodic = [(s, p) for s, p in list_checkpoints(run_dir) if s not in protected]
    for _, path in periodic[:-keep] if keep > 0 else periodic:
        path.unlink(missing_ok=True)
