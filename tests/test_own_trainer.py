"""A real external trainer, not scaleflow's code (examples/own_trainer/train.py: its own model,
loop, CSV log and checkpoints), run as the IsoFLOP study examples/own_trainer/isoflop.yaml:
locally, collected and fitted; on the local SLURM cluster, cut by a requeue in the middle and
resumed from its own checkpoint to the same losses as an undisturbed run."""

import csv
import json
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import run_cli
from scaleflow.config import compose_study
from scaleflow.files import read_json
from scaleflow.launch.slurm import queue_states
from scaleflow.store import run_dirs, study_states
from scaleflow.sweep import sweep
from slurm_util import cluster_available, continue_once_signalled, pause, sacct_records, wait_until

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "examples" / "own_trainer" / "isoflop.yaml"
#: The script's path is relative to the repository root: run its commands from there.
HERE = [f"command.cwd={ROOT}"]


def test_the_example_trainer_runs_as_a_study_and_is_fitted(tmp_path):
    study_dir = tmp_path / "study"
    # Four of the example's six rungs (2.8k to 20k parameters with head), around both budgets'
    # minima (near 4-5k): 8 runs, each a fresh interpreter importing torch.
    four = "study.shapes=[{n_layer: 1, d_model: 8, n_head: 1}, {n_layer: 1, d_model: 12, n_head: 2}, " \
           "{n_layer: 1, d_model: 16, n_head: 2}, {n_layer: 2, d_model: 24, n_head: 2}]"
    report = sweep(compose_study(str(STUDY), [f"study_dir={study_dir}", four, *HERE]), "isoflop")
    assert report.outcome.finished == len(report.specs) == 8 and not report.outcome.failed
    for spec in report.specs:  # the trainer's own log, read through the study's key mapping
        summary = read_json(study_dir / spec.run_id / "summary.json")
        rows = list(csv.DictReader(open(study_dir / spec.run_id / "log.csv")))
        assert summary["steps"] == int(rows[-1]["iter"]) == spec.steps
        assert summary["val_loss"] == pytest.approx(float(rows[-1]["val_loss"]))
    fitted = run_cli("fit", str(study_dir), "--law", "approach2", "--bootstrap", "0", "--json")
    assert fitted.returncode == 0, fitted.stderr
    budgets = json.loads(fitted.stdout)["approach2"]["budgets"]
    sizes = sorted({s.params for s in report.specs})
    assert len(budgets) == 2 and all(b["status"] == "ok" for b in budgets)
    assert all(sizes[0] < b["params_opt"] < sizes[-1] for b in budgets)  # each budget's U has its minimum inside


ok, reason = cluster_available()


def _command_pid(run_dir: Path):
    """The pid of the example trainer training `run_dir` (a child of the SLURM job's worker)."""
    out = subprocess.run(["pgrep", "-f", "--", f"--out_dir={run_dir}"], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    return pids[0] if pids else None


@pytest.mark.slurm
@pytest.mark.skipif(not ok, reason=reason)
def test_a_requeue_in_the_middle_resumes_the_example_trainer_from_its_checkpoint(tmp_path):
    one = ["study.budgets=[2e9]", "study.shapes=[{n_layer: 1, d_model: 8, n_head: 1}]", "trainer.log_every=10",
           "trainer.checkpoint_every=100000", *HERE]  # the only checkpoint part-way is the signal's
    local_dir, slurm_dir = tmp_path / "local", tmp_path / "slurm"
    sweep(compose_study(str(STUDY), [f"study_dir={slurm_dir}", "launcher=slurm", "launcher.cpus_per_task=1",
                                     "launcher.mem_gb=1", *one]), "isoflop")
    run = run_dirs(slurm_dir)[0]
    job_id = read_json(run / "job.json")["job_id"]
    try:
        pids = []
        wait_until(lambda: pids.append(_command_pid(run)) or pids[-1], 300, "the trainer to start")
        wait_until(lambda: (run / "log.csv").exists() and len((run / "log.csv").read_text().splitlines()) >= 3,
                   300, "the trainer to log two rows", poll_s=0.01)
        pause(pids[-1])  # held at this step, however fast the machine, until Slurm signals it
        subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=30)
        continue_once_signalled(pids[-1], signal.SIGTERM, 60, "the requeue's SIGTERM")
        wait_until(lambda: (run / "summary.json").exists(), 300, "the requeued job to finish")
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
    assert read_json(run / "summary.json")["status"] == "done"
    assert [s.state for s in study_states(slurm_dir, queue_states())] == ["done"]
    assert any(jid == job_id and state == "REQUEUED" for jid, state in sacct_records(job_id))
    stdout = (run / "stdout.log").read_text()  # both attempts; the second resumed where the signal stopped the first
    stopped_at = int(stdout.split(": checkpointed at iter ")[1].split(",")[0])
    assert stopped_at > 0 and f"resuming from iter {stopped_at}" in stdout
    sweep(compose_study(str(STUDY), [f"study_dir={local_dir}", *one]), "isoflop")  # undisturbed
    local = (run_dirs(local_dir)[0] / "log.csv").read_text()
    assert (run / "log.csv").read_text() == local  # resumed from its checkpoint: the same run, row for row
