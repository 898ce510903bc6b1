"""Sweeps: an experiment's grid expanded into trials, run locally (N at once, a GPU
each) or on SLURM (one array job through submitit, requeued on preemption), their
status, and a report over seeds. Launchers know nothing about models: a trial is
the `python -m rnnlab.main` command a user would type. See `python -m launch -h`;
from Python, ``launch.run_sweep(experiment, root, grid=..., parallel=...)`` is the
one trial runner every study uses."""

from launch.sweep import run_sweep, run_trials

__all__ = ["run_sweep", "run_trials"]
