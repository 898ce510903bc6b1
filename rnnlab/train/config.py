"""The config sections the loop reads (``optim``, ``train``), declared once with
their meaning, and the workdir's config guard.

A study's ``get_config`` starts from ``optim_config()`` and ``train_config()`` and
sets what it needs (``c.train.update(num_steps=...)``); keys only one study uses
are added there with a comment (e.g. speech's ``train.ema_decay``).
"""

from __future__ import annotations

import json
import os
import sys

import ml_collections

from rnnlab.train import writers


def optim_config() -> ml_collections.ConfigDict:
    """``config.optim``: the optimizer and learning-rate schedule (rnnlab.train.optim)."""
    o = ml_collections.ConfigDict()
    o.name = "adam"  # 'sgd' | 'adam' | 'adamw'
    o.lr = 2e-3
    o.momentum = 0.0  # sgd
    o.weight_decay = 0.0  # sgd (coupled) or adamw (decoupled)
    o.b1 = 0.9
    o.b2 = 0.999
    o.eps = 1e-8
    o.clip_norm = 1.0  # global gradient-norm clipping, Pascanu et al. 2013 (0: off)
    o.schedule = "constant"  # 'constant' | 'cosine' | 'zaremba' | 'plateau'
    o.warmup_steps = 0  # cosine: linear warmup steps
    o.final_lr_fraction = 0.0  # cosine: ends at this fraction of lr
    o.decay_factor = 0.5  # zaremba: per-epoch factor
    o.decay_start_epoch = 4  # zaremba: epochs at the initial lr
    o.plateau_factor = 4.0  # plateau: divide lr by this when an evaluation does not improve
    o.plateau_patience = 1  # plateau: ... after this many evaluations in a row without a new best
    return o


def train_config() -> ml_collections.ConfigDict:
    """``config.train``: length, cadence and checkpointing of the loop (rnnlab.train.loop)."""
    t = ml_collections.ConfigDict()
    t.num_steps = 0  # training steps (tasks with epochs: 0 means num_epochs epochs)
    t.num_epochs = 0  # tasks with epochs (language models), when num_steps is 0
    t.max_minutes = 0.0  # >0: stop (checkpoint, evaluation, status 'stopped') after this wall time
    t.log_every = 50  # steps between logged training metrics (the first and last steps always)
    t.eval_every = 0  # steps between evaluations (0: the task's default, e.g. once an epoch; always at the end)
    t.checkpoint_every = 0  # steps between checkpoints (0: at each evaluation; always at the end)
    t.checkpoint_steps = ()  # snapshots kept for good at these steps (probes read them), e.g. (0, 500, 2000)
    t.keep_checkpoints = 3  # periodic checkpoints kept for resume
    t.async_checkpoint = True
    t.tensorboard = True  # TensorBoard event files beside metrics.jsonl
    t.data_parallel = "auto"  # 'auto' (every local device) | 'off' | 'multihost' (rnnlab.parallel)
    # >0: early stopping: the run ends (finished, result.json 'early_stopped') after this many evaluations
    # in a row without a new best validation loss; tasks with keep_best then report the best checkpoint
    t.early_stop_evals = 0
    return t


# Keys that may change between a run and its resumption: they do not change what
# was computed up to the step where the run stopped. trainer: names code, not numbers;
# train.data_parallel: a requeued job may land on another number of devices (equal up
# to float rounding).
RESUMABLE_CHANGES = ("trainer", "train.num_epochs", "train.num_steps", "train.log_every", "train.max_minutes",
                     "train.checkpoint_every", "train.data_parallel", "train.member_threads", "train.tensorboard",
                     "train.async_checkpoint", "generate.", "data.cache_dir", "eval.speaker_prior")

# Keys added to the configs after runs were made, with the value that computes what those runs
# computed: a workdir whose config.json predates a key resumes when the key keeps that value.
ADDED_KEYS = {"model.compute_dtype": "", "train.early_stop_evals": 0, "optim.plateau_patience": 1}


def flat(d: dict, prefix: str = "") -> dict:
    """A nested config dict as {'section.key': value}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def has_checkpoint(workdir: str) -> bool:
    """Whether ``workdir`` holds a training checkpoint (a run to resume)."""
    d = os.path.join(workdir, "checkpoints")
    return os.path.isdir(d) and any(s.isdigit() for s in os.listdir(d))


def resume_conflicts(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """How ``config`` differs from the run in ``workdir`` in keys a resume may not change
    (all but ``RESUMABLE_CHANGES``), as 'key: old -> new'; [] when the workdir holds no
    checkpoint (a run that failed before its first save takes a new config)."""
    path = os.path.join(workdir, "config.json")
    if not (os.path.exists(path) and has_checkpoint(workdir)):
        return []
    with open(path) as f:
        a = flat(json.load(f))
    b = flat(json.loads(config.to_json()))
    for k, v in ADDED_KEYS.items():
        if k in b and k not in a:
            a[k] = v
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
            and not any(k == p or (p.endswith(".") and k.startswith(p)) for p in RESUMABLE_CHANGES)]


def check_and_write(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Write workdir/config.json and append the command line to command.txt; refuse a
    config with ``resume_conflicts`` (one that would compute something else than the
    run in this workdir)."""
    os.makedirs(workdir, exist_ok=True)
    if diff := resume_conflicts(config, workdir):
        raise ValueError(
            f"the config differs from the run in {workdir} ({', '.join(diff[:6])}); resume with the same config, "
            "use a new --workdir, or warm-start a new run with --config.init_from=" + workdir
        )
    writers.write_json_atomic(os.path.join(workdir, "config.json"), json.loads(config.to_json()))
    with open(os.path.join(workdir, "command.txt"), "a") as f:
        f.write(" ".join(sys.argv) + "\n")
