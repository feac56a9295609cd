"""Helpers for tests that need a real SLURM cluster (see scripts/slurm-local.sh).

Use in a test module::

    ok, reason = cluster_available()
    pytestmark = [pytest.mark.slurm, pytest.mark.skipif(not ok, reason=reason)]
"""

from __future__ import annotations

import functools
import shutil
import subprocess

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
