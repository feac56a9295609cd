"""Helpers for tests that need a real SLURM cluster (see scripts/slurm-local.sh).

Use in a test module::

    ok, reason = cluster_available()
    pytestmark = [pytest.mark.slurm, pytest.mark.skipif(not ok, reason=reason)]
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import time
from typing import Callable

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
