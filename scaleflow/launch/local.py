"""The local launcher: runs jobs as processes on this machine, `max_parallel` at a time.

Each job is `python -m scaleflow.worker RUN_DIR`, forked from a fork server that has already
imported torch (multiprocessing's "forkserver": it imports, it never computes), so a job starts
in a fraction of a second rather than the ~3 s of CPU a fresh interpreter spends importing
torch; a job of several processes is a `torchrun` subprocess. On a GPU machine each job gets
one GPU (CUDA_VISIBLE_DEVICES, set before the job touches CUDA); on CPU the cores are shared
out as torch threads. Ctrl-C, or SIGTERM to the launching process, asks every job to
checkpoint (SIGTERM), waits for them, and leaves everything resumable.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import types
from contextlib import contextmanager
from pathlib import Path

from scaleflow.launch.base import Job, LaunchOutcome
from scaleflow.store import last_metrics, write_job
from scaleflow.exit_codes import EXIT_BUSY, EXIT_INTERRUPTED

POLL_S = 0.05


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
        self.parallel_given = cfg.max_parallel is not None
        cores = os.cpu_count() or 1
        self.threads = cfg.threads_per_run or max(1, cores // self.max_parallel)
        self.console = console

    def _start(self, job: Job, slot: int):
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        if self.gpus:  # slot k of max_parallel holds GPUs k*g .. k*g+g-1 (g GPUs per job)
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str((slot * job.gpus + i) % self.gpus) for i in range(job.gpus))
        if job.world_size == 1:
            command = job.command(threads=self.threads)
            assert command[1:3] == ["-m", "scaleflow.worker"], command
            process = _fork_server().Process(target=_forked_worker,
                                             args=(command[3:], env, str(Path(job.run_dir) / "worker.log")))
            with _main_module_left_alone():
                process.start()
            return _ForkedJob(process)
        log = open(Path(job.run_dir) / "worker.log", "a")
        proc = subprocess.Popen(job.command(threads=self.threads), env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # Ctrl-C reaches only us; we pass it on as SIGTERM
        log.close()  # the child keeps its own descriptor
        return proc

    def launch(self, jobs: list[Job]) -> LaunchOutcome:
        outcome = LaunchOutcome()
        if self.gpus and not self.parallel_given and jobs:  # jobs of g GPUs each: GPUs / g at a time
            self.max_parallel = max(1, self.gpus // max(job.gpus for job in jobs))
        pending, running, results = list(jobs), {}, {}
        progress = _Progress(self.console, jobs)
        restore_sigterm = _sigterm_as_ctrl_c()
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
                    pending.remove(job)
                    free = set(range(self.max_parallel)) - {s for _, s in running.values()}
                    slot = min(free)
                    running[job] = (self._start(job, slot), slot)
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
            restore_sigterm()
            progress.close()
        return outcome


def _sigterm_as_ctrl_c():
    """Until the returned function is called, SIGTERM to this process (`kill`, a container's
    stop, the end of an allocation) stops the launch as Ctrl-C does: each job checkpoints first.
    Its jobs run in sessions of their own, so nothing else would pass the signal on to them."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # only the main thread may set handlers; its owner handles signals
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def _fork_server():
    """multiprocessing's fork server, importing what a worker needs once (torch._dynamo too:
    torch's optimizers import it on first use, 1.4 s of the ~3 s)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["scaleflow.worker", "scaleflow.train", "torch._dynamo"])
    return context


@contextmanager
def _main_module_left_alone():
    """multiprocessing would run the launching program's main module again in each forked job
    (its "safe importing of the main module" rule): a user's script that calls
    `scaleflow.sweep.sweep` without an `if __name__ == "__main__"` guard would start its study
    again in every job. A job needs nothing from that module: show multiprocessing a bare one
    while it records what the job should prepare."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _forked_worker(argv: list[str], env: dict[str, str], log_path: str) -> None:
    """In the forked process: what `python -m scaleflow.worker ARGV` does, in its own session
    (a terminal's Ctrl-C reaches the launcher alone, which passes it on), with the launcher's
    environment of now and its output appended to the run's worker.log."""
    os.setsid()
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    from scaleflow.worker import main

    sys.exit(main(argv))


class _ForkedJob:
    """The part of subprocess.Popen the launcher uses, over a forked multiprocessing.Process."""

    def __init__(self, process: multiprocessing.Process):
        self.process, self.pid = process, process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode  # like Popen: -N when signal N ended it

    def poll(self) -> int | None:
        return self.process.exitcode

    def send_signal(self, signum: int) -> None:
        if self.process.exitcode is None:
            os.kill(self.pid, signum)

    def wait(self) -> int:
        self.process.join()
        return self.process.exitcode


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
