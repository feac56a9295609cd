"""Helpers for tests that need a real SLURM cluster (see scripts/slurm-local.sh).

Use in a test module::

    ok, reason = cluster_available()
    pytestmark = [pytest.mark.slurm, pytest.mark.skipif(not ok, reason=reason)]
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

#: How long `sinfo` may take before the cluster counts as not answering.
SINFO_TIMEOUT_S = 5.0

_HINT = "start one with: sudo bash scripts/slurm-local.sh start"


@functools.lru_cache(maxsize=1)
def cluster_available() -> tuple[bool, str]:
    """Whether a SLURM cluster answers on this machine, and why not if it does not.

    True when `sinfo` (and `sbatch`, `srun`, `sacct`, which submitit needs) are installed and
    `sinfo` lists at least one partition within a few seconds. The result is cached for the
    test session: a cluster that is down at collection time stays skipped.
    """
    for tool in ("sinfo", "sbatch", "srun", "sacct"):
        if shutil.which(tool) is None:
            return False, f"no SLURM cluster: `{tool}` not found on PATH ({_HINT})"
    try:
        proc = subprocess.run(
            ["sinfo", "--noheader", "--format=%P %a"],
            capture_output=True,
            text=True,
            timeout=SINFO_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return False, f"no SLURM cluster: `sinfo` did not answer within {SINFO_TIMEOUT_S:g} s ({_HINT})"
    except OSError as exc:
        return False, f"no SLURM cluster: cannot run `sinfo`: {exc} ({_HINT})"
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        detail = err[-1] if err else f"exit {proc.returncode}"
        return False, f"no SLURM cluster: `sinfo` failed: {detail} ({_HINT})"
    if not proc.stdout.strip():
        return False, f"no SLURM cluster: `sinfo` lists no partition ({_HINT})"
    return True, "SLURM cluster answers"


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.2) -> None:
    """Polls `predicate` until it is true; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)  # polling a condition, not timing anything


def sacct_records(job_id: str) -> list[tuple[str, str]]:
    """(job id, state) of every accounting record of a job or array task, oldest first: with
    `sacct -D`, a requeued job has a REQUEUED record per requeue before its final one."""
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-D", "-j", job_id.split("_")[0], "-o", "JobID,State"],
                         capture_output=True, text=True, timeout=10, check=True)
    return [tuple(line.split("|", 1)) for line in out.stdout.splitlines() if "|" in line]


def logged_step(run_dir: Path) -> int:
    """The last step a run has logged to metrics.jsonl (0 before its first step)."""
    last = 0
    try:
        text = (Path(run_dir) / "metrics.jsonl").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        try:
            last = max(last, int(json.loads(line)["step"]))
        except (ValueError, KeyError, TypeError):  # a line caught mid-write
            pass
    return last


def job_task_pid(job_id: str, marker: str = "submitit.core._submit") -> Optional[int]:
    """The pid of a running job's task on this node: the process of its step 0 whose command
    line names `marker` (submitit runs the job's function in that process); None while there
    is none (the job is pending, or its task has not started)."""
    own_id = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%A"], capture_output=True, text=True,
                            timeout=10).stdout.strip()  # an array task's own job id
    out = subprocess.run(["scontrol", "listpids", own_id or job_id], capture_output=True, text=True, timeout=10)
    for line in out.stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "0":
            try:
                cmdline = Path(f"/proc/{fields[0]}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if "python" in os.path.basename(cmdline[0].decode()) and marker.encode() in b" ".join(cmdline):
                return int(fields[0])
    return None


def _proc_status(pid: int) -> Optional[dict[str, str]]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None  # it ended
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def is_stopped(pid: int) -> bool:
    status = _proc_status(pid)
    return status is not None and status["State"].startswith(("T", "t"))


def pause(pid: int) -> None:
    """Stops a job's task (SIGSTOP): it makes no progress, so a signal sent to it next lands at
    the step the test chose, however fast the machine. Slurm's warning, requeue and cancel
    signals continue it (slurmstepd sends SIGCONT first); see `continue_once_signalled`."""
    os.kill(pid, signal.SIGSTOP)
    wait_until(lambda: is_stopped(pid) or _proc_status(pid) is None, 30, f"process {pid} to stop")


def continue_once_signalled(pid: int, signum: int, timeout_s: float, what: str) -> None:
    """Waits until the paused process `pid` has been sent `signum` (pending on it) or has been
    continued or has ended (Slurm continues it before signalling), then continues it."""
    bit = 1 << (signum - 1)

    def signalled() -> bool:
        status = _proc_status(pid)
        if status is None or not status["State"].startswith(("T", "t")):
            return True
        return bool((int(status["SigPnd"], 16) | int(status["ShdPnd"], 16)) & bit)

    try:
        wait_until(signalled, timeout_s, what)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
