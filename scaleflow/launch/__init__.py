"""Launchers: one small interface (`Launcher.launch(jobs)`), local and SLURM behind it."""

from scaleflow.launch.base import Job, Launcher, make_launcher

__all__ = ["Job", "Launcher", "make_launcher"]
