"""Which launcher a config names: the registry, apart from the interface and its backends."""

from __future__ import annotations

from scaleflow.launch.base import Launcher


def make_launcher(cfg, console=None) -> Launcher:
    """The launcher a config names (launcher.name = local | slurm)."""
    if cfg.name == "slurm":
        from scaleflow.launch.slurm import SlurmLauncher

        return SlurmLauncher(cfg)
    from scaleflow.launch.local import LocalLauncher

    return LocalLauncher(cfg, console)
