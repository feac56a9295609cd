"""Exit codes of scaleflow's commands and workers, named once."""

EXIT_OK = 0
EXIT_FAILED = 1  # a run failed (or diverged: `scaleflow train`), or an internal error
EXIT_USAGE = 2  # bad input: a one-line error names it
EXIT_INTERRUPTED = 3  # a worker checkpointed and stopped early; run it again to resume
EXIT_BUSY = 4  # a worker found its run's lock held: another process is training it
EXIT_CTRL_C = 130  # a command stopped by Ctrl-C (or SIGTERM); its runs checkpointed
