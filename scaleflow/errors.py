"""Errors that the CLI turns into a one-line message and exit code 2.

Raise a subclass of ScaleflowError for anything the user can fix (bad config, missing file,
unreachable cluster, a fit the data cannot support). Anything else is a bug and keeps its
traceback.
"""


class ScaleflowError(Exception):
    """Base class: the message is shown to the user as one line."""


class ConfigError(ScaleflowError):
    """A config value, override or study file is invalid."""


class DataError(ScaleflowError):
    """A corpus or token file is missing, empty or unreadable."""


class LaunchError(ScaleflowError):
    """A launcher could not submit or follow jobs (e.g. no reachable cluster)."""


class StoreError(ScaleflowError):
    """A run directory or study directory is unusable (locked, foreign config, full disk)."""


class RunBusyError(StoreError):
    """Another process holds the run's lock: it is training that run."""


class FitError(ScaleflowError):
    """The data cannot support the requested fit (missing columns, too few points...)."""
