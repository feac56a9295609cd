"""The local launcher: runs jobs as subprocesses on this machine, `max_parallel` at a time.

Each job is `python -m scaleflow.worker RUN_DIR`. On a GPU machine each job gets one GPU
(CUDA_VISIBLE_DEVICES); on CPU the cores are shared out as torch threads. Ctrl-C asks every
job to checkpoint (SIGTERM), waits for them, and leaves everything resumable.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from scaleflow.launch.base import Job, LaunchOutcome
from scaleflow.store import last_metrics, write_job
from scaleflow.worker import EXIT_BUSY, EXIT_INTERRUPTED

POLL_S = 0.2


def _gpu_count() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU") for line in out.stdout.splitlines()) if out.returncode == 0 else 0


class LocalLauncher:
    def __init__(self, cfg, console=None):
        self.gpus = _gpu_count()
        self.max_parallel = cfg.max_parallel or (self.gpus or 2)
        cores = os.cpu_count() or 1
        self.threads = cfg.threads_per_run or max(1, cores // self.max_parallel)
        self.console = console

    def _start(self, job: Job, slot: int) -> subprocess.Popen:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % self.gpus)
        log = open(Path(job.run_dir) / "worker.log", "a")
        proc = subprocess.Popen(job.command(threads=self.threads), env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # Ctrl-C reaches only us; we pass it on as SIGTERM
        log.close()  # the child keeps its own descriptor
        return proc

    def launch(self, jobs: list[Job]) -> LaunchOutcome:
        outcome = LaunchOutcome()
        pending, running, results = list(jobs), {}, {}
        progress = _Progress(self.console, jobs)
        try:
            while pending or running:
                for job, (proc, slot) in list(running.items()):
                    code = proc.poll()
                    if code is None:
                        continue
                    del running[job]
                    results[job] = code
                    if code != EXIT_BUSY:  # a busy run's record belongs to the process training it
                        write_job(Path(job.run_dir), launcher="local", pid=proc.pid, exit_code=code,
                                  state="stopped" if code == EXIT_INTERRUPTED else ("done" if code == 0 else "failed"))
                    if code == 0:
                        outcome.finished += 1
                    elif code == EXIT_BUSY:
                        outcome.busy.append(job.label)
                    else:
                        outcome.failed.append(job.label)
                for job in list(pending):
                    if job.after is not None and job.after in results and results[job.after] != 0:
                        pending.remove(job)  # its prerequisite failed
                        outcome.failed.append(job.label)
                        continue
                    if len(running) >= self.max_parallel:
                        break
                    if job.after is not None and results.get(job.after) != 0:
                        continue
                    if job.ready is not None and not job.ready():
                        continue
                    pending.remove(job)
                    free = set(range(self.max_parallel)) - {s for _, s in running.values()}
                    slot = min(free)
                    running[job] = (self._start(job, slot), slot)
                if pending and not running and not any(j.ready is None or j.ready() for j in pending):
                    outcome.failed.extend(j.label for j in pending)  # can never start
                    break
                progress.update(running, results)
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            outcome.interrupted = True
            for proc, _ in running.values():
                proc.send_signal(signal.SIGTERM)  # the worker checkpoints at its next step
            for job, (proc, _) in running.items():
                proc.wait()
                write_job(Path(job.run_dir), launcher="local", pid=proc.pid, exit_code=proc.returncode, state="stopped")
        finally:
            progress.close()
        return outcome


class _Progress:
    """A rich progress bar over the steps of every job."""

    def __init__(self, console, jobs: list[Job]):
        self.bar = None
        if console is None:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("steps"), TimeRemainingColumn(), console=console, transient=False)
        self.total = sum(j.steps for j in jobs)
        self.task = self.bar.add_task(f"{len(jobs)} jobs", total=self.total)
        self.jobs = jobs
        self.bar.start()

    def update(self, running: dict, results: dict) -> None:
        if self.bar is None:
            return
        done = sum(j.steps for j in results)
        live = sum(min(j.steps, (last_metrics(Path(j.run_dir)) or {}).get("step", 0)) for j in running)
        self.bar.update(self.task, completed=min(self.total, done + live),
                        description=f"{len(results)}/{len(self.jobs)} jobs done, {len(running)} running")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
