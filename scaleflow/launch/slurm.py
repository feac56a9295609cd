"""The SLURM launcher (submitit). Placeholder for queue queries until the launcher lands."""

from __future__ import annotations

import shutil
import subprocess
from typing import Optional


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
