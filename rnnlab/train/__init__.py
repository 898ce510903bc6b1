"""Training: THE loop and what it owns.

    loop.py        ``run(config, workdir, make_task)`` and the ``Task`` record a study brings
                   (resume, cadence, deadline, preemption, the non-finite stop, divergence,
                   result.json)
    optim.py       the optax optimizer and the learning-rate schedule (optax's, plus the
                   host-side plateau rule)
    config.py      the optim/train config sections every study shares and the workdir's
                   config guard
    checkpoint.py  Orbax checkpoints (latest, best, snapshots) and parameter loading; knows
                   no model and no data
    writers.py     metrics.jsonl, TensorBoard, console progress, atomic JSON
    status.py      status.json, the run's machine-readable state (what ``launch`` reads)

A study's trainer is a ``module:function(config, workdir)`` named by its config's
``trainer`` key, e.g. ``rnnlab.tasks.lm:train_and_evaluate``, which calls ``loop.run``.
"""
