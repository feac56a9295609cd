"""The defaults of the fits' settings, one place each (imported by the fitters, FitOptions and
the CLI; this module imports nothing, so `scaleflow fit --help` stays light)."""

#: Huber delta on the log-loss residuals (Hoffmann et al. 2022, approach 3; docs/science.md).
HUBER_DELTA = 1e-3
#: Bootstrap replicates of `scaleflow fit` and of a fitter asked for intervals.
N_BOOTSTRAP = 200
