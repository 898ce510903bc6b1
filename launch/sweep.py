"""The one trial runner as a Python function, for studies and notebooks:

    import launch
    outcomes = launch.run_sweep("experiments/gradient_flow.py", "runs/gradient_flow", grid="full", parallel=2)

is ``python -m launch run experiments/gradient_flow.py --root=runs/gradient_flow
--grid=full --parallel=2``: every trial's config is built and checked first (a bad
one refuses the whole sweep before anything starts), finished trials are skipped,
interrupted ones resume, a failing trial does not stop the others.
"""

from __future__ import annotations

from launch import local
from launch import status as status_lib
from launch import trials as trials_lib


def run_trials(trials: list[trials_lib.Trial], root: str, *, executor: str = "local", parallel: int = 0,
               wait: bool = True, **slurm_resources) -> list[dict]:
    """Run expanded ``trials`` locally (``parallel`` at once; 0: one per GPU, 2 on CPU), inline
    (one after another in this process: a debugger sees them; no start-up per trial) or
    on SLURM as one array job (``slurm_resources``: partition, account, gpus, cpus, mem_gb,
    time_min); returns one outcome per trial (name, state, ...; [] when SLURM and not ``wait``)."""
    if executor == "local":
        return local.run_local(trials, parallel)
    if executor == "inline":
        return local.run_inline(trials)
    if executor != "slurm":
        raise ValueError(f"executor {executor!r}: use 'local', 'inline' or 'slurm'")
    from launch import slurm  # submitit only when SLURM is asked for

    jobs, submitted, folder = slurm.submit(trials, root, parallelism=parallel or 256, **slurm_resources)
    print(f"submitit folder: {folder}", flush=True)
    if not wait:
        return []
    if jobs:
        slurm.wait(jobs, submitted)
    return status_lib.table(trials)


def run_sweep(experiment: str, root: str, grid: str = "sweep", variant: str | None = None, *,
              executor: str = "local", parallel: int = 0, wait: bool = True, cells=None,
              **slurm_resources) -> list[dict]:
    """Expand ``grid`` of the ``experiment`` file into trials under ``root`` (refusing bad
    configs before anything runs; ``cells``: see ``trials.expand``) and run them with ``run_trials``."""
    trials = trials_lib.expand(experiment, root, grid, variant, cells)
    return run_trials(trials, root, executor=executor, parallel=parallel, wait=wait, **slurm_resources)
