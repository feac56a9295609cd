"""Shared fixtures: tiny configs that train in a second or two on a CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TINY = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.seq_len=32",
        "trainer.batch_size=8", "trainer.eval_sequences=16"]
TIMING_KEYS = {"tokens_per_s", "mfu"}


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


def metrics_without_timing(run_dir: Path) -> list[dict]:
    """metrics.jsonl lines minus the wall-clock fields, for bit-for-bit comparisons."""
    lines = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in TIMING_KEYS} for line in lines]
