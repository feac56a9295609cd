"""Training programs that are not scaleflow's own: a command filled in from each run's
values (template.py), run by the worker with its signals, logs and exit codes (run.py), whose
results are read by the run contract or from what the trainer already writes (readers.py)."""
