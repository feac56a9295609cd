"""The SLURM launcher against the local cluster (scripts/slurm-local.sh): arrays, requeue,
time limits, cancellation. Skipped, with the reason, where no cluster answers.

No test paces itself by the clock: a signal (requeue, cancel, the time-limit warning) is sent
once the job has logged a step, to a job paused (SIGSTOP) at that step, so it lands at the
same point of the run on a fast or a slow machine; Slurm continues the job as it signals it.
Every wait has a generous bound, only so that a broken cluster fails a test instead of
hanging it."""

import signal
import subprocess
from pathlib import Path

import pytest

from conftest import metrics_without_timing
from scaleflow.config import compose_study
from scaleflow.files import read_json, read_jsonl
from scaleflow.launch.slurm import queue_states
from scaleflow.store import run_dirs, study_states
from scaleflow.sweep import sweep
from scaleflow.checkpoints import list_checkpoints
from slurm_util import (cluster_available, continue_once_signalled, job_task_pid, logged_step, pause,
                        sacct_records, wait_until)

ok, reason = cluster_available()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(not ok, reason=reason)]

STUDY = """
defaults:
  - config
  - study: isoflop
  - _self_
study:
  name: slurm_micro
  budgets: [BUDGETS]
  shapes:
    - {n_layer: 1, d_model: 8, n_head: 1}
    - {n_layer: 1, d_model: 16, n_head: 2}
  min_steps: 10
model: {seq_len: 32}
trainer: {batch_size: 8, eval_every: 100, eval_sequences: 16, log_every: 10, checkpoint_every: 25}
"""


#: Each launcher's settings (a key of one launcher is an error under the other): one thread a
#: run on both, so that local and SLURM runs compute alike.
LOCAL = ["launcher.max_parallel=2", "launcher.threads_per_run=1"]
SLURM = ["launcher=slurm", "launcher.cpus_per_task=1", "launcher.mem_gb=1"]


def _study(tmp_path, budgets="2e9, 4e9") -> Path:
    path = tmp_path / "slurm_micro.yaml"
    path.write_text(STUDY.replace("BUDGETS", budgets))
    return path


def _requeues_so_far(job_id: str) -> int:
    """REQUEUED accounting records of a job until now."""
    return sum(jid == job_id and state == "REQUEUED" for jid, state in sacct_records(job_id))


def _requeues(job_id: str) -> int:
    """REQUEUED accounting records of a finished job (sacct may lag its end by a moment)."""
    wait_until(lambda: any(jid == job_id and not state.startswith(("REQUEUED", "PENDING", "RUNNING"))
                           for jid, state in sacct_records(job_id)), 30, f"sacct to record the end of {job_id}")
    return _requeues_so_far(job_id)


def _all_finished(study_dir: Path) -> bool:
    return all(s.state in ("done", "diverged", "failed") for s in study_states(study_dir, queue_states()))


@pytest.fixture(autouse=True)
def _cancel_leftover_jobs(tmp_path):
    """A failed test leaves no job behind (nor a paused one: scancel continues it first)."""
    yield
    ids = [job["job_id"] for job in map(read_json, tmp_path.rglob("job.json")) if job and job.get("launcher") == "slurm"]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30)


def _pause_at_a_logged_step(run_dir: Path, job_id: str) -> tuple[int, list[dict]]:
    """Waits until the job has logged a step, then pauses its task there at once (watching
    closely: the run must not end first); (pid, the metrics lines logged so far, wall-clock
    fields included)."""
    pids: list[int] = []
    wait_until(lambda: pids.append(job_task_pid(job_id)) or pids[-1], 300, f"the task of job {job_id} to start")
    wait_until(lambda: logged_step(run_dir) >= 1, 300, f"job {job_id} to log a step", poll_s=0.01)
    pause(pids[-1])
    assert not (run_dir / "summary.json").exists(), "the run ended before it could be paused: make it longer"
    return pids[-1], list(read_jsonl(run_dir / "metrics.jsonl"))


def test_a_study_as_a_job_array_matches_the_local_run(tmp_path):
    study = _study(tmp_path)
    local_dir, slurm_dir = tmp_path / "local", tmp_path / "slurm"
    report = sweep(compose_study(str(study), [f"study_dir={slurm_dir}", *SLURM]), "isoflop")
    # Submission returns at once: before the array has finished (two cores run at most two of
    # its four jobs at a time, so it cannot have finished by then whatever the machine).
    assert not _all_finished(slurm_dir)
    assert len(report.outcome.submitted) == 4 and all("_" in j for j in report.outcome.submitted)  # one array
    sweep(compose_study(str(study), [f"study_dir={local_dir}", *LOCAL]), "isoflop")  # the reference, meanwhile
    wait_until(lambda: _all_finished(slurm_dir), 300, "the array to finish")
    assert [s.state for s in study_states(slurm_dir, queue_states())] == ["done"] * 4
    for run in run_dirs(local_dir):
        local, remote = read_json(run / "summary.json"), read_json(slurm_dir / run.name / "summary.json")
        assert remote["val_loss"] == local["val_loss"]


#: One small model over one budget: 458 steps, enough that the run cannot end between logging
#: its first step and being paused (the test watches every 10 ms; a step takes 2 to 30 ms on
#: one core of the 2-core machine, idle to busy), few enough that the part after the cut is
#: quick. Checkpoints only when signalled, so a checkpoint part-way is the signal's.
LONG_RUN = ["study.shapes=[{n_layer: 1, d_model: 8, n_head: 1}]", "trainer.log_every=50",
            "trainer.checkpoint_every=1000000"]
LONG_BUDGET = "2e9"


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory) -> Path:
    """The long run trained locally, undisturbed: the reference of every cut test below."""
    study_dir = tmp_path_factory.mktemp("reference") / "local"
    study = _study(study_dir.parent, LONG_BUDGET)
    assert not sweep(compose_study(str(study), [f"study_dir={study_dir}", *LOCAL, *LONG_RUN]), "isoflop").outcome.failed
    return run_dirs(study_dir)[0]


def _one_long_run(tmp_path, extra: list[str]) -> tuple[Path, str]:
    """The long run submitted to SLURM (with `extra`); (its run dir, its job id)."""
    study, slurm_dir = _study(tmp_path, LONG_BUDGET), tmp_path / "slurm"
    sweep(compose_study(str(study), [f"study_dir={slurm_dir}", *SLURM, *LONG_RUN, *extra]), "isoflop")
    slurm_run = run_dirs(slurm_dir)[0]
    return slurm_run, read_json(slurm_run / "job.json")["job_id"]


def _cut_resumed_and_matched(reference: Path, slurm_run: Path, job_id: str, logged: list[dict]) -> None:
    """After one cut of a job paused once it had logged `logged`: it checkpointed part-way
    (the signal's checkpoint: the run has no periodic ones), was requeued once, resumed from
    that checkpoint rather than from scratch, ran to the end, and equals the local run bit for
    bit."""
    steps = read_json(slurm_run / "run.json")["steps"]
    wait_until(lambda: _requeues_so_far(job_id) >= 1, 120, f"the requeue of job {job_id} in the accounting")
    wait_until(lambda: (slurm_run / "summary.json").exists(), 300, "the job to finish after its requeue")
    part_way = [s for s, _ in list_checkpoints(slurm_run) if s < steps]
    assert len(part_way) == 1 and logged[-1]["step"] <= part_way[0], part_way
    # Resumed: the lines logged before the pause are still those of the first attempt, their
    # wall-clock fields included (a run trained again from scratch logs them anew).
    assert list(read_jsonl(slurm_run / "metrics.jsonl"))[: len(logged)] == logged
    assert metrics_without_timing(slurm_run) == metrics_without_timing(reference)
    assert _requeues(job_id) == 1


def test_a_requeued_job_resumes_and_matches_an_undisturbed_run(tmp_path, long_reference):
    slurm_run, job_id = _one_long_run(tmp_path, [])
    pid, logged = _pause_at_a_logged_step(slurm_run, job_id)
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=30)
    continue_once_signalled(pid, signal.SIGTERM, 60, "the requeue's SIGTERM")  # checkpoints, ends
    _cut_resumed_and_matched(long_reference, slurm_run, job_id, logged)


def test_a_job_hitting_its_time_limit_checkpoints_requeues_and_finishes(tmp_path, long_reference):
    # The job starts with a 10 min limit and the warning 300 s before it, so nothing is due
    # until the run has made progress; then, paused at a logged step, its limit becomes 5 min:
    # the warning is due at once. slurmctld checks time limits on a 30 s cycle, so the warning
    # comes 0 to 30 s later whatever the machine; the paused run does not move meanwhile.
    # Slurm continues the job as it sends the warning (SIGCONT, then SIGUSR2); the run
    # checkpoints at its next step and requeues itself.
    slurm_run, job_id = _one_long_run(tmp_path, ["launcher.time_min=10", "launcher.signal_delay_s=300"])
    pid, logged = _pause_at_a_logged_step(slurm_run, job_id)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=5"], check=True, timeout=30)
    continue_once_signalled(pid, signal.SIGUSR2, 120, "slurmctld's time-limit warning (a 30 s cycle)")
    # The warning is on its way: a far limit again lets the requeued job run in one piece.
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=15"], check=True, timeout=30)
    _cut_resumed_and_matched(long_reference, slurm_run, job_id, logged)


def test_a_cancelled_job_shows_failed_and_the_next_sweep_reruns_it(tmp_path):
    study = _study(tmp_path, LONG_BUDGET)
    overrides = [f"study_dir={tmp_path / 's'}", *SLURM, *LONG_RUN]
    cfg = compose_study(str(study), overrides)
    report = sweep(cfg, "isoflop")
    run, job_id = run_dirs(tmp_path / "s")[0], report.outcome.submitted[0]
    pid, logged = _pause_at_a_logged_step(run, job_id)
    subprocess.run(["scancel", job_id], check=True, timeout=30)
    continue_once_signalled(pid, signal.SIGTERM, 60, "the cancel's SIGTERM")
    wait_until(lambda: job_id not in queue_states(), 60, "the job to leave the queue")
    assert study_states(tmp_path / "s", queue_states())[0].state == "failed"
    assert len(list_checkpoints(run)) == 1  # it checkpointed before it ended
    again = sweep(cfg, "isoflop")
    assert again.launched == 1
    wait_until(lambda: (run / "summary.json").exists(), 300, "the rerun to finish")
    assert read_json(run / "summary.json")["status"] == "done"
    assert list(read_jsonl(run / "metrics.jsonl"))[: len(logged)] == logged  # the rerun resumed


BRANCHES = """
defaults:
  - config
  - study: decay_branches
  - override schedule: wsd
  - _self_
study:
  name: slurm_branches
  shapes:
    - {n_layer: 1, d_model: 16, n_head: 2}
  branch_grid: "linear:12800:38400:3"
model: {seq_len: 32}
trainer: {batch_size: 8, eval_every: 25, eval_sequences: 16, log_every: 5, checkpoint_every: 1000}
schedule: {warmup_steps: 10, decay_fraction: 0.2}
"""


def test_decay_branches_on_slurm_match_the_local_study(tmp_path):
    from scaleflow.sweep import decay_branches

    study = tmp_path / "slurm_branches.yaml"
    study.write_text(BRANCHES)
    local_dir, slurm_dir = tmp_path / "local", tmp_path / "slurm"
    report = decay_branches(compose_study(str(study), [f"study_dir={slurm_dir}", *SLURM]))
    # a trunk of three segments (an afterok chain) and three branches, every branch queued
    # before its trunk ends
    assert len(report.outcome.submitted) == 6
    local = decay_branches(compose_study(str(study), [f"study_dir={local_dir}", *LOCAL]))  # the reference, meanwhile
    assert not local.outcome.failed
    wait_until(lambda: _all_finished(slurm_dir), 400, "the branched study to finish")
    for spec in local.specs:
        local_summary = read_json(local_dir / spec.run_id / "summary.json")
        slurm_summary = read_json(slurm_dir / spec.run_id / "summary.json")
        assert slurm_summary["status"] == "done"
        if spec.kind == "branch":
            assert slurm_summary["val_loss"] == local_summary["val_loss"]
            assert metrics_without_timing(slurm_dir / spec.run_id) == metrics_without_timing(local_dir / spec.run_id)


def test_a_rank_that_fails_ends_its_job_instead_of_leaving_the_others_waiting(tmp_path, monkeypatch):
    """Rank 0 of a two-task run cannot listen on its rendezvous port (the test holds it): the
    job ends failed at once (srun --kill-on-bad-exit), rank 1 does not wait for it until the
    time limit. The port scaleflow picks itself lies below the kernel's ephemeral ports."""
    import socket

    from scaleflow.launch.slurm import rendezvous_port

    assert all(20000 <= rendezvous_port(j) < 32000 for j in (1, 181, 11999, 12000, 10**7))
    held = socket.socket()
    held.bind(("", 0))
    held.listen()
    monkeypatch.setenv("MASTER_PORT", str(held.getsockname()[1]))  # sbatch exports it to the job
    study = _study(tmp_path, "4e9")
    study_dir = tmp_path / "two"
    sweep(compose_study(str(study), [f"study_dir={study_dir}", *SLURM, "trainer.world_size=2",
                                     "launcher.tasks_per_node=2", "study.shapes=[{n_layer: 1, d_model: 16, n_head: 2}]"]),
          "isoflop")
    try:
        wait_until(lambda: _all_finished(study_dir), 300, "the two-task job to end")
    finally:
        held.close()
    assert [s.state for s in study_states(study_dir, queue_states())] == ["failed"]


def test_a_two_task_run_matches_the_one_task_run(tmp_path):
    study = _study(tmp_path, "4e9")
    common = ["study.shapes=[{n_layer: 1, d_model: 16, n_head: 2}]", "trainer.eval_every=20"]
    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    sweep(compose_study(str(study), [f"study_dir={one_dir}", *SLURM, "trainer.grad_accum=2", *common]),
          "isoflop")
    sweep(compose_study(str(study), [f"study_dir={two_dir}", *SLURM, "trainer.world_size=2",
                                     "launcher.tasks_per_node=2", *common]), "isoflop")
    wait_until(lambda: _all_finished(one_dir) and _all_finished(two_dir), 300, "both runs")
    one, two = run_dirs(one_dir)[0], run_dirs(two_dir)[0]
    assert read_json(two / "summary.json")["status"] == "done", (two / "worker.log")
    a, b = metrics_without_timing(one), metrics_without_timing(two)
    assert [x["step"] for x in a] == [x["step"] for x in b]
    for x, y in zip(a, b):
        for key in ("train_loss", "val_loss"):
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=1e-4)
