import json
import signal
import time

import pytest

from conftest import metrics_without_timing, start_worker, write_run_config
from scaleflow.config import compose_run
from scaleflow.checkpoints import list_checkpoints
from scaleflow.train import train


def test_a_100k_model_cuts_its_validation_loss_by_40_percent(tmp_path):
    # The foundation's acceptance figure: ~100k parameters, 2e11 FLOPs, stdlib corpus, CPU.
    cfg = compose_run(["trainer.flops=2e11", "trainer.eval_every=1000", "trainer.eval_sequences=32"])
    summary = train(cfg, tmp_path)
    assert 80_000 < summary["params_with_head"] < 130_000
    assert summary["flops"] == pytest.approx(2e11, rel=0.02)
    assert summary["val_loss"] <= 0.6 * summary["initial_val_loss"]
    assert summary["initial_val_loss"] == pytest.approx(5.55, abs=0.3)  # about ln 256


def test_run_directory_contents(tmp_path, tiny_overrides):
    cfg = compose_run(tiny_overrides + ["trainer.steps=20", "trainer.log_every=5", "trainer.eval_every=10",
                                        "trainer.checkpoint_every=10"])
    summary = train(cfg, tmp_path)
    assert (tmp_path / "config.yaml").exists()
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    lines = metrics_without_timing(tmp_path)
    assert [x["step"] for x in lines] == [0, 1, 5, 10, 15, 20]
    assert {"step", "tokens", "flops", "lr", "train_loss", "grad_norm"} <= set(lines[1])
    assert [x["step"] for x in lines if "val_loss" in x] == [0, 10, 20]
    assert summary["tokens"] == 20 * 8 * 32
    assert [s for s, _ in list_checkpoints(tmp_path)] == [10, 20]


def test_sigkill_after_a_checkpoint_then_resume_is_bit_for_bit(tmp_path, tiny_overrides):
    overrides = tiny_overrides + ["trainer.steps=120", "trainer.log_every=5", "trainer.eval_every=20",
                                  "trainer.checkpoint_every=20", "resume=true"]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    for run_dir in (reference, killed):
        write_run_config(run_dir, overrides)
    assert start_worker(reference).wait(timeout=120) == 0

    proc = start_worker(killed)
    deadline = time.monotonic() + 120
    while not list_checkpoints(killed) and time.monotonic() < deadline:
        time.sleep(0.02)  # waiting for a condition, not timing anything
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
    assert start_worker(killed).wait(timeout=120) == 0
    assert metrics_without_timing(killed) == metrics_without_timing(reference)


def test_noise_scale_is_logged_and_survives_resume(tmp_path, tiny_overrides):
    overrides = tiny_overrides + ["trainer.steps=60", "trainer.grad_accum=2", "trainer.noise_scale=true",
                                  "trainer.log_every=10", "trainer.checkpoint_every=30", "resume=true"]
    full, split = tmp_path / "full", tmp_path / "split"
    train(compose_run(overrides), full)
    lines = metrics_without_timing(full)
    assert all(line["grad_noise_scale"] is None or line["grad_noise_scale"] > 0 for line in lines[1:])
    assert lines[-1]["grad_noise_scale"] > 0
    train(compose_run(overrides), split, until=30)
    train(compose_run(overrides), split)
    assert metrics_without_timing(split) == lines
