"""The SLURM launcher, through submitit: job arrays for independent runs, `afterok` chains
for decay-branch trunks, and requeue-and-resume on timeout or preemption.

Submission returns at once with the job ids; each run directory's job.json records its job
id, and `scaleflow status` follows the jobs with `squeue` (no accounting database needed).

In the job, `TrainJob` trains the run under scaleflow.worker's signal handling: SLURM's
SIGUSR2 (sent `signal_delay_s` before the time limit, or on preemption) and SIGTERM (scancel,
scontrol requeue) make the trainer checkpoint at its next step boundary. After SIGUSR2 the
job requeues itself (`scontrol requeue`) and resumes from that checkpoint; after SIGTERM it
just ends, so a cancelled job stays cancelled and the next sweep reruns it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Optional

from scaleflow.errors import LaunchError
from scaleflow.launch.base import Job, LaunchOutcome


class TrainJob:
    """The callable submitit runs on the node: train one run directory (or a segment)."""

    def __init__(self, run_dir: str, until: int = 0, threads: int = 0, recreate_fork: int = 0):
        self.run_dir, self.until, self.threads, self.recreate_fork = run_dir, until, threads, recreate_fork

    def __call__(self) -> str:
        from scaleflow.worker import StopFlag, execute_run, recreate_checkpoint, stop_on_signals

        if self.recreate_fork:
            recreate_checkpoint(Path(self.run_dir), self.recreate_fork)
            return "recreated"

        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:  # data parallel: one task per rank
            import submitit

            env = submitit.helpers.TorchDistributedEnvironment()  # reads a MASTER_PORT given by the user
            if "MASTER_PORT" not in os.environ:
                env.master_port = rendezvous_port(int(os.environ["SLURM_JOB_ID"]))
            env.export(set_cuda_visible_devices=False, overwrite=True)
        flag = StopFlag()
        with stop_on_signals(flag):
            summary = execute_run(Path(self.run_dir), self.threads, self.until, flag)
        rank0 = int(os.environ.get("RANK", "0")) == 0
        if summary["status"] == "interrupted" and flag.signal == signal.SIGUSR2:
            if rank0:
                _requeue_self()
            # Leave without a result: submitit would otherwise record the job as finished.
            raise SystemExit(0)
        return summary["status"]


def rendezvous_port(job_id: int) -> int:
    """The TCP port rank 0 listens on for a multi-task job: from the job id (every task agrees
    on it without talking), in 20000-31999, below Linux's ephemeral ports (32768-60999).
    submitit's own choice spans 20000-60000, so it could fall on a port the kernel had handed
    to some connection: rank 0 then failed with EADDRINUSE."""
    return 20000 + job_id % 12000


def _requeue_self() -> None:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job_id = f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")
    if job_id:
        subprocess.run(["scontrol", "requeue", job_id], check=False)


def _check_cluster() -> None:
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        raise LaunchError("launcher=slurm but no SLURM client (sbatch, squeue) is on PATH; "
                          "try scripts/slurm-local.sh start for a local cluster")
    try:
        out = subprocess.run(["squeue", "-h", "--me"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        raise LaunchError("launcher=slurm but the SLURM controller does not answer (squeue timed out)") from None
    if out.returncode != 0:
        raise LaunchError(f"launcher=slurm but no SLURM cluster answers: {out.stderr.strip().splitlines()[0] if out.stderr.strip() else 'squeue failed'}")


class SlurmLauncher:
    def __init__(self, cfg):
        self.cfg = cfg

    def _executor(self, folder: Path, after: Optional[Job] = None):
        """A submitit executor with the launcher's sbatch options; `after`: the job this one
        waits for (--dependency=afterok)."""
        import submitit

        c = self.cfg
        executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
        additional = {"requeue": True}
        if after is not None:
            additional["dependency"] = f"afterok:{after.job_id}"
        params = dict(
            timeout_min=int(c.time_min), nodes=int(c.nodes), tasks_per_node=int(c.tasks_per_node),
            cpus_per_task=int(c.cpus_per_task), slurm_array_parallelism=int(c.array_parallelism),
            slurm_signal_delay_s=int(c.signal_delay_s), name="scaleflow",
            slurm_setup=[str(line) for line in c.setup],
            # A task that fails ends the job: the other ranks would otherwise wait for it (in the
            # rendezvous or a collective) until the time limit.
            slurm_srun_args=["--kill-on-bad-exit=1"],
            slurm_additional_parameters={**additional, **{str(k): v for k, v in dict(c.extra).items()}},
        )
        if c.gpus_per_node:
            params["gpus_per_node"] = int(c.gpus_per_node)
        if c.mem_gb:
            params["mem_gb"] = float(c.mem_gb)
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(c, key):
                params[f"slurm_{key}"] = str(getattr(c, key))
        if c.python:
            executor.update_parameters(slurm_python=str(c.python))
        executor.update_parameters(**params)
        return executor

    def launch(self, jobs: list[Job]) -> LaunchOutcome:
        """Submit every job and return at once: independent jobs as job arrays (chunked
        under max_array_size), dependent ones one by one with --dependency=afterok."""
        from scaleflow.store import write_job

        _check_cluster()
        outcome = LaunchOutcome()
        if not jobs:
            return outcome
        folder = Path(jobs[0].run_dir).parent / "slurm"
        threads = int(self.cfg.cpus_per_task)
        independent = [j for j in jobs if j.after is None]
        chunk = max(1, int(self.cfg.max_array_size))
        try:
            for start in range(0, len(independent), chunk):
                part = independent[start : start + chunk]
                executor = self._executor(folder)
                with executor.batch():
                    handles = [executor.submit(TrainJob(str(j.run_dir), j.until, threads, j.recreate_fork)) for j in part]
                for job, handle in zip(part, handles):
                    job.job_id = handle.job_id
            for job in jobs:  # in plan order, so a job's prerequisite is submitted before it
                if job.after is None:
                    continue
                if job.after.job_id is None:
                    raise LaunchError(f"{job.label}: its prerequisite was not submitted")
                executor = self._executor(folder, after=job.after)
                job.job_id = executor.submit(TrainJob(str(job.run_dir), job.until, threads, job.recreate_fork)).job_id
        except LaunchError:
            raise
        except Exception as exc:  # submitit raises plain errors for sbatch failures
            raise LaunchError(f"sbatch failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
        for job in jobs:
            write_job(Path(job.run_dir), launcher="slurm", job_id=job.job_id, until=job.until)
            outcome.submitted.append(job.job_id)
        return outcome


def queue_states() -> Optional[dict[str, str]]:
    """Job id -> state of this user's queued and running jobs (array tasks as ID_TASK), or
    None when no scheduler answers (then states come from the run directories alone)."""
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-r", "--me", "-o", "%i %T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states
