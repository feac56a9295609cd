"""Launchers: one small interface (`Launcher.launch(jobs)`), local and SLURM behind it."""

from scaleflow.launch.base import Job, Launcher, LaunchOutcome
from scaleflow.launch.registry import make_launcher

__all__ = ["Job", "LaunchOutcome", "Launcher", "make_launcher"]
