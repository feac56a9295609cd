"""Shared fixtures: tiny configs that train in a second or two on a CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.seq_len=32",
        "trainer.batch_size=8", "trainer.eval_sequences=16"]
TIMING_KEYS = {"tokens_per_s", "mfu"}
# The Chinchilla runs as Epoch AI extracted them (source and citation: fixtures/chinchilla/README.md).
CHINCHILLA_CSV = Path(__file__).parent / "fixtures/chinchilla/svg_extracted_data.csv"
# The known law behind the fit tests' synthetic studies (Chinchilla-like values).
TRUE_LAW_PARAMS = dict(E=1.8, A=480.0, B=2100.0, alpha=0.35, beta=0.37)


@pytest.hookimpl(tryfirst=True)  # before xdist's hook, which reads the groups when the worker collects
def pytest_collection_modifyitems(items) -> None:
    """Under pytest-xdist (`make test` runs two workers, `--dist loadgroup`): a module's tests
    run on one worker, so that its module-scoped fixtures are computed once; every SLURM test
    runs on one worker, one after another (they share the cluster's two CPUs: a test's jobs
    would otherwise queue behind another's), and first: much of their time is spent waiting on
    slurmctld, time in which the other worker runs the local tests."""
    for item in items:
        slurm = item.get_closest_marker("slurm") is not None
        item.add_marker(pytest.mark.xdist_group("slurm" if slurm else item.module.__name__))
    items.sort(key=lambda item: item.get_closest_marker("slurm") is None)  # stable: SLURM first


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


def metrics_without_timing(run_dir: Path) -> list[dict]:
    """metrics.jsonl lines minus the wall-clock fields, for bit-for-bit comparisons."""
    lines = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in TIMING_KEYS} for line in lines]


def write_run_config(run_dir: Path, overrides: list[str]) -> None:
    """run_dir/config.yaml composed from `overrides`, as the run store writes it."""
    from omegaconf import OmegaConf

    from scaleflow.config import compose_run

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "config.yaml").write_text(OmegaConf.to_yaml(compose_run(overrides)))


def start_worker(run_dir: Path) -> subprocess.Popen:
    """`python -m scaleflow.worker RUN_DIR` on one torch thread, its output discarded."""
    env = {**os.environ, "SCALEFLOW_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "scaleflow.worker", str(run_dir)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


CLI = [sys.executable, "-m", "scaleflow.cli"]


def run_cli(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    """`python -m scaleflow.cli ARGS` in a subprocess, output captured as text."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, env=env)


def start_cli(*args: str) -> subprocess.Popen:
    """`python -m scaleflow.cli ARGS` started in the background, its output discarded."""
    return subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
