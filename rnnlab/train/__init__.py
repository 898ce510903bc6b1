"""Training: THE loop and what it owns.

    loop.py        ``run(config, workdir, make_task)`` and the ``Task`` record a study brings
    optim.py       the optax optimizer and the learning-rate schedule
    config.py      the optim/train config sections and the workdir's config guard
    checkpoint.py  Orbax checkpoints (latest, best, snapshots) and parameter loading
    writers.py     metrics.jsonl, TensorBoard, console progress
    status.py      status.json, the run's machine-readable state
"""
