"""`scaleflow status` exits 1 while any run of the study has failed, 0 once none has."""

import argparse
import shutil

from conftest import run_cli
from scaleflow.config import compose_study
from scaleflow.sweep import sweep

STUDY = """
defaults:
  - config
  - study: isoflop
  - _self_
study:
  name: status
  budgets: [1e9]
  shapes:
    - {n_layer: 1, d_model: 16, n_head: 2}
  min_steps: 10
model: {seq_len: 32}
data: {kind: text, paths: [%s]}
trainer: {batch_size: 8, eval_every: 1000000, eval_sequences: 16, log_every: 10}
launcher: {max_parallel: 1, threads_per_run: 1}
"""


def test_status_exits_1_while_a_run_has_failed_and_0_once_it_is_done(tmp_path):
    corpus = tmp_path / "corpus.txt"  # not there yet: the worker fails as it loads its data
    study_file = tmp_path / "status.yaml"
    study_file.write_text(STUDY % corpus)
    study_dir = tmp_path / "study"
    cfg = compose_study(str(study_file), [f"study_dir={study_dir}"])

    report = sweep(cfg, "isoflop")
    assert report.launched == 1 and len(report.outcome.failed) == 1
    assert "does not exist" in (study_dir / report.specs[0].run_id / "worker.log").read_text()
    out = run_cli("status", str(study_dir))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "1 failed" in out.stdout

    shutil.copy(argparse.__file__, corpus)  # the data is there now: the same sweep trains the run
    report = sweep(cfg, "isoflop")
    assert report.launched == 1 and not report.outcome.failed
    out = run_cli("status", str(study_dir))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 done" in out.stdout
