"""The local SLURM cluster works end to end with submitit.

Needs a cluster (`sudo bash scripts/slurm-local.sh start`); skipped with the reason otherwise.
The jobs run on this machine, so pytest's tmp_path is visible to them, and they run with the
Python that runs pytest (submitit's default, sys.executable).

Every wait is bounded: a broken cluster fails a test, it never hangs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:
    from slurm_util import cluster_available, sacct_records, wait_until
except ImportError:  # tests/ imported as a package
    from tests.slurm_util import cluster_available, sacct_records, wait_until

_OK, _REASON = cluster_available()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(not _OK, reason=_REASON)]

submitit = pytest.importorskip("submitit")
import cloudpickle  # noqa: E402  (a submitit dependency)

# The jobs unpickle the functions below in a fresh interpreter where this test module is not
# importable (pytest put tests/ on sys.path only here): send them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

# Generous, because others may share the 2-core cluster; a healthy one needs about 1 s a job.
JOB_TIMEOUT_S = 120.0
POLL_S = 0.5


# ---------------------------------------------------------------------------------------------
# Functions the jobs run
# ---------------------------------------------------------------------------------------------
def _double(x: int) -> int:
    return 2 * x


def _square_with_env(x: int) -> tuple[int, str, str]:
    return x * x, os.environ.get("SLURM_ARRAY_JOB_ID", ""), os.environ.get("SLURM_ARRAY_TASK_ID", "")


def _fail() -> None:
    raise ValueError("deliberate failure")


def _wait_for_file(path: Path, bound_s: float) -> None:
    """Blocks until `path` exists: the job waits for the test, not for the clock (`bound_s`
    only keeps a forgotten job from running on forever)."""
    deadline = time.monotonic() + bound_s
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _count_attempts(marker: str, release: str) -> int:
    """Counts its runs in a file; the first run waits (for `release`, which the test never
    writes) so that it can be requeued while it runs."""
    path = Path(marker)
    attempt = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(attempt))
    if attempt == 1:
        _wait_for_file(Path(release), 300)
    return attempt


class _Steps(submitit.helpers.Checkpointable):
    """Counts steps, writing each to `progress`; submitit pickles it (with `step`) when its USR2
    handler calls checkpoint(). Its first run holds at step `hold` until it is signalled (it
    waits for a file the test never writes), so the signal lands at that step on any machine;
    the resumed run goes straight through."""

    def __init__(self, progress: str) -> None:
        self.progress = progress
        self.step = 0
        self.starts: list[int] = []

    def __call__(self, n: int, hold: int) -> tuple[int, list[int]]:
        self.starts.append(self.step)
        while self.step < n:
            if self.step == hold and len(self.starts) == 1:
                _wait_for_file(Path(self.progress + ".release"), 300)
            self.step += 1
            Path(self.progress).write_text(str(self.step))
        return self.step, self.starts


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def executor(tmp_path: Path):
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    assert ex.cluster == "slurm"
    ex.update_parameters(timeout_min=5, cpus_per_task=1, name="scaleflow-test")
    return ex


def _squeue(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id.split("_")[0], "-o", "%i %T %r"],
                         capture_output=True, text=True, timeout=10)
    return out.stdout.strip() or out.stderr.strip()


def _wait_done(job, timeout_s: float = JOB_TIMEOUT_S) -> None:
    """Waits until submitit says the job is done (result file or a final sacct state)."""
    deadline = time.monotonic() + timeout_s
    while not job.done(force_check=True):
        if time.monotonic() > deadline:
            state = job.state
            job.cancel(check=False)
            pytest.fail(f"job {job.job_id} not done after {timeout_s:g} s (submitit state {state}; "
                        f"squeue: {_squeue(job.job_id)!r})")
        time.sleep(POLL_S)


def _wait_state(job, wanted: str | tuple[str, ...], timeout_s: float = JOB_TIMEOUT_S) -> str:
    """Waits until submitit's view of the job (job.state, from sacct) starts with `wanted`
    (or one of them)."""
    deadline = time.monotonic() + timeout_s
    while True:
        job.done(force_check=True)  # forces one sacct call; job.state then reads it
        state = job.state
        if state.startswith(wanted):
            return state
        if time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(f"job {job.job_id}: state {state!r}, expected {wanted} within {timeout_s:g} s")
        time.sleep(POLL_S)


def _sacct_states(job_id: str) -> dict[str, str]:
    return dict(sacct_records(job_id))  # a requeued job has several records: the last one wins


def _wait_sacct(job_id: str, wanted: str, timeout_s: float = 30.0) -> str:
    """sacct lags the job by a moment (the result file can exist before the job is COMPLETED)."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = _sacct_states(job_id).get(job_id, "")
        if state.startswith(wanted) or time.monotonic() > deadline:
            return state
        time.sleep(POLL_S)


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------
def test_submit_returns_result(executor) -> None:
    job = executor.submit(_double, 21)
    assert job.job_id.isdigit()
    _wait_done(job)
    assert job.result() == 42


def test_job_array_via_batch(executor) -> None:
    with executor.batch():
        jobs = [executor.submit(_square_with_env, i) for i in range(5)]
    # One sbatch call: one array job id, tasks 0..4.
    array_ids = {job.job_id.split("_")[0] for job in jobs}
    assert len(array_ids) == 1, [job.job_id for job in jobs]
    array_id = array_ids.pop()
    assert [job.job_id for job in jobs] == [f"{array_id}_{i}" for i in range(5)]
    for job in jobs:
        _wait_done(job)
    results = [job.result() for job in jobs]
    assert [r[0] for r in results] == [0, 1, 4, 9, 16]
    assert {r[1] for r in results} == {array_id}
    assert [r[2] for r in results] == [str(i) for i in range(5)]


def test_sacct_reports_completed(executor) -> None:
    job = executor.submit(_double, 1)
    _wait_done(job)
    assert job.result() == 2
    assert _wait_sacct(job.job_id, "COMPLETED") == "COMPLETED"
    # submitit's own view comes from sacct too.
    assert _wait_state(job, "COMPLETED", timeout_s=30) == "COMPLETED"


def test_failed_job_reports_failed(executor) -> None:
    job = executor.submit(_fail)
    _wait_done(job)
    exc = job.exception()
    assert isinstance(exc, submitit.core.utils.FailedJobError)
    assert "deliberate failure" in str(exc)
    assert _wait_state(job, "FAILED", timeout_s=30) == "FAILED"


def test_cancelled_job_shows_cancelled(executor, tmp_path: Path) -> None:
    job = executor.submit(_wait_for_file, tmp_path / "never", 300)  # runs until cancelled
    _wait_state(job, "RUNNING")
    job.cancel()
    # sacct writes "CANCELLED by <uid>".
    state = _wait_state(job, "CANCELLED", timeout_s=60)
    assert state.startswith("CANCELLED")
    assert job.done()
    # No result file will ever come: submitit must say so, not wait forever.
    job._results_timeout_s = 1
    started = time.monotonic()
    assert isinstance(job.exception(), submitit.core.utils.UncompletedJobError)
    assert time.monotonic() - started < 30


def test_scontrol_requeue_runs_job_again(executor, tmp_path: Path) -> None:
    """`scontrol requeue` kills the running job (SIGTERM, which submitit ignores, then SIGKILL
    after KillWait) and runs it again from the same submitted pickle, under the same job id."""
    marker = tmp_path / "attempts"
    job = executor.submit(_count_attempts, str(marker), str(tmp_path / "never"))
    wait_until(marker.exists, JOB_TIMEOUT_S, "the function to start in the job")
    subprocess.run(["scontrol", "requeue", job.job_id], check=True, timeout=30)
    _wait_done(job)
    assert job.result() == 2
    assert _wait_sacct(job.job_id, "COMPLETED") == "COMPLETED"
    # The accounting keeps the requeue: a REQUEUED record before the final one (what submitit
    # reports meanwhile, REQUEUED, then PENDING until AuthInfo=cred_expire passes, is transient).
    assert [state for _, state in sacct_records(job.job_id)] == ["REQUEUED", "COMPLETED"]


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text())
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return 0


def test_usr2_checkpoints_and_requeues(executor, tmp_path: Path) -> None:
    """submitit's preemption/timeout path: on USR2 its handler calls checkpoint(), saves the
    returned submission over the pickle, runs `scontrol requeue` and exits; the job resumes.

    submitit calls a USR2 "timed-out" (and uses up one of max_num_timeout requeues) when the
    job has run for min(80% of its time limit, time limit - 10 min); with a 30-minute limit a
    USR2 after seconds is a preemption."""
    executor.update_parameters(timeout_min=30)
    progress = tmp_path / "steps"
    job = executor.submit(_Steps(str(progress)), 16, 2)
    wait_until(lambda: _read_int(progress) >= 2, JOB_TIMEOUT_S, "the job to reach step 2")
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True, timeout=30)
    _wait_done(job)
    steps, starts = job.result()
    assert steps == 16
    assert starts == [0, 2]  # checkpointed at step 2, resumed there
    log = (job.stdout() or "") + (job.stderr() or "")
    assert "Caught signal SIGUSR2" in log and "this job is preempted" in log
    assert "Calling checkpoint method" in log
    assert "(3 remaining timeouts)" in log  # a preemption does not use up a timeout requeue
