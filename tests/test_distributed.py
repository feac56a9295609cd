"""Data parallelism on CPU with gloo: 2 processes equal 1 process with the same global batch."""

import subprocess

import pytest

from conftest import TINY, metrics_without_timing, write_run_config
from scaleflow.config import compose_run
from scaleflow.launch import Job
from scaleflow.train import train

RUN = TINY + ["trainer.steps=30", "trainer.log_every=5", "trainer.eval_every=10", "trainer.checkpoint_every=10",
              "device=cpu"]


def _close(a: list[dict], b: list[dict]) -> None:
    assert [x["step"] for x in a] == [x["step"] for x in b]
    for x, y in zip(a, b):
        for key in ("train_loss", "val_loss", "grad_norm", "lr"):
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-6), (x["step"], key)


def _torchrun(run_dir, until=0):
    cmd = Job(run_dir, world_size=2, until=until).command()
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_two_processes_match_one_and_resume(tmp_path):
    single = tmp_path / "single"
    train(compose_run(RUN + ["trainer.grad_accum=2"]), single)

    two = tmp_path / "two"
    write_run_config(two, RUN + ["trainer.world_size=2"])
    out = _torchrun(two)
    assert out.returncode == 0, out.stderr[-2000:]
    _close(metrics_without_timing(single), metrics_without_timing(two))

    resumed = tmp_path / "resumed"
    write_run_config(resumed, RUN + ["trainer.world_size=2"])
    out = _torchrun(resumed, until=10)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not (resumed / "summary.json").exists()
    out = _torchrun(resumed)
    assert out.returncode == 0, out.stderr[-2000:]
    assert metrics_without_timing(resumed) == metrics_without_timing(two)
