"""The launcher interface. A Job trains (part of) one run directory with scaleflow.worker."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Protocol


@dataclass(eq=False)
class Job:
    run_dir: Path
    label: str = ""
    steps: int = 0  # steps this job trains, for progress
    until: int = 0  # stop, checkpointed, after this many steps (a trunk segment); 0 = to the end
    after: Optional["Job"] = None  # start only once this job has succeeded (SLURM afterok)
    recreate_fork: int = 0  # re-create the run's missing checkpoint at this step, no more (a decay-branch trunk)
    world_size: int = 1  # data-parallel processes of scaleflow's trainer (trainer.world_size), run by torchrun
    gpus: int = 1  # GPUs the job is given on a GPU machine (an external command starts its own processes)
    job_id: Optional[str] = field(default=None)  # set by the SLURM launcher

    def command(self, python: str = "", threads: int = 0) -> list[str]:
        """The worker command; several processes go through torchrun's local spawning."""
        python = python or sys.executable
        cmd = [python, "-m", "scaleflow.worker", str(self.run_dir)]
        if self.world_size > 1:
            cmd = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.world_size}",
                   "-m", "scaleflow.worker", str(self.run_dir)]
            threads = max(1, threads // self.world_size) if threads else 0
        if threads:
            cmd += ["--threads", str(threads)]
        if self.until:
            cmd += ["--until", str(self.until)]
        if self.recreate_fork:
            cmd += ["--recreate-fork", str(self.recreate_fork)]
        return cmd


@dataclass
class LaunchOutcome:
    finished: int = 0  # jobs that ended successfully
    failed: list[str] = field(default_factory=list)  # labels of jobs that failed
    busy: list[str] = field(default_factory=list)  # runs another process was already training
    submitted: list[str] = field(default_factory=list)  # SLURM job ids (returns at once)
    interrupted: bool = False


class Launcher(Protocol):
    def launch(self, jobs: list[Job]) -> LaunchOutcome: ...
