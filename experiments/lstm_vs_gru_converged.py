"""tanh RNN vs GRU vs LSTM at the protocol of Chung, Gulcehre, Cho & Bengio 2014
("Empirical Evaluation of Gated Recurrent Neural Networks on Sequence Modeling"):
polyphonic music (the Bach chorales as piano rolls, ``rnnlab.data.music``) and
character-level language modelling (tiny Shakespeare), about 20,000 parameters per
model, a learning-rate search per cell chosen on validation only, early stopping on
validation, several seeds at the chosen rate: converged models, not the first
minutes of training (``experiments/lstm_vs_gru.py`` is that study at a fixed, short
budget).

Every trial is a run of the one loop (music: ``rnnlab.tasks.sequence``, next-frame
NLL per step of independent Bernoulli outputs over 88 pitches; text:
``rnnlab.tasks.lm``), its width matched to the budget by
``lstm_vs_gru.matched_width`` (from the model's own init), ending when
``train.early_stop_evals`` evaluations in a row bring no new best validation loss
(or at ``train.num_steps``, a cap); its test numbers are the best validation
checkpoint's.

Grids (``GRIDS``):
  converged_cpu  3 cells x 2 tasks x LRS x SEEDS (54 trials), sized for 2 CPU cores
                 (python -m launch run experiments/lstm_vs_gru_converged.py --grid=converged_cpu
                  --root=runs/lstm_vs_gru_converged --parallel=2; the same command resumes)
  paper          the wider search of PAPER_LRS x PAPER_SEEDS with longer caps, for a cluster:
                  python -m launch run experiments/lstm_vs_gru_converged.py --grid=paper
                  --root=runs/lstm_vs_gru_paper --executor=slurm --cpus=2 --time_min=120   (--dry_run lists it)
  paper_slice    the paper grid's first two trials with a 20-step cap: the cluster path in CI
  smoke          seconds: both tasks, tiny models (the tests)
One trial:
  python -m rnnlab.main --config=experiments/lstm_vs_gru_converged.py:music,cell=gru,lr=0.003,seed=0 --workdir=DIR

Convergence is checked, not hoped for: ``converged(curve)`` flags a trial whose best
validation loss still fell by more than 1% over its last 10% of steps.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

from experiments import lstm_vs_gru as base
from rnnlab import configs

CELLS = ("tanh", "gru", "lstm")  # lstm: forget-gate bias 1 (base.CELLS)
BUDGET = 20_000  # parameters per model, readout and embedding included (Chung et al.: about 20k)
SEEDS = (0, 1, 2)
LRS = (1e-3, 3e-3, 1e-2)  # Adam
PAPER_SEEDS = (0, 1, 2, 3, 4)
PAPER_LRS = (3e-4, 1e-3, 3e-3, 1e-2)
CONVERGED_FRACTION, CONVERGED_GAIN = 0.1, 0.01  # the last 10% of steps may improve the best by at most 1%

# Per task: the loop it runs and its budget. steps: the cap; eval_every: steps between validations;
# patience: evaluations without a new best before the run stops (train.early_stop_evals).
TASKS: dict[str, dict[str, Any]] = {
    "music": dict(trainer=base.TASK_TRAINER, window=64, batch=16, steps=20000, eval_every=100, patience=10),
    "char_lm": dict(trainer=base.LM_TRAINER, batch=16, seq_len=64, steps=60000, eval_every=500, patience=6),
    "smoke_music": dict(trainer=base.TASK_TRAINER, window=16, batch=4, steps=20, eval_every=5, patience=2, budget=3000),
    "smoke_lm": dict(trainer=base.LM_TRAINER, batch=4, seq_len=16, steps=20, eval_every=5, patience=2, budget=3000),
}
PAPER_CAPS = {"music": 40000, "char_lm": 120000}  # the paper grid's step caps (early stopping ends most before)
METRICS = {"music": ("eval_loss", "test_loss", "min", "test NLL per step (nats)"),
           "char_lm": ("valid_bpc", "test_bpc", "min", "test bits per character")}
METRIC = None  # launch: each trial's own validation loss ('eval/loss' or 'valid/nll')
SHORTHAND = {"lr": "optim.lr", "seed": "seed", "steps": "train.num_steps", "patience": "train.early_stop_evals"}


def _set_task(c: ml_collections.ConfigDict, task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown variant {task!r} of lstm_vs_gru_converged; choose one of {sorted(TASKS)}")
    spec = TASKS[task]
    small = task.startswith("smoke")
    c.trainer = spec["trainer"]
    c.study.update(task=task, param_budget=spec.get("budget", BUDGET))
    c.optim.update(name="adam", lr=3e-3, clip_norm=1.0, schedule="constant")
    c.train.update(num_steps=spec["steps"], eval_every=spec["eval_every"], log_every=spec["eval_every"],
                   checkpoint_every=spec["eval_every"], early_stop_evals=spec["patience"], keep_checkpoints=1,
                   tensorboard=False)
    if spec["trainer"] == base.TASK_TRAINER:
        c.task.update(name="music", length=spec["window"], batch_size=spec["batch"], eval_batch_size=64)
        return
    source = "embedded" if small else base.SHAKESPEARE
    c.data.update(source=source, batch_size=spec["batch"], seq_len=spec["seq_len"], eval_batch_size=64 if small else 100,
                  cache_dir="" if small else "~/.cache/rnnlab")
    c.model.update(d_embed=8 if small else 16, num_layers=1)
    c.generate.length = 0


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    variant, overrides = configs.parse_arg(arg)
    c = base.base_config()
    _set_task(c, "music" if variant == "default" else variant)
    c.model.update(cell="lstm", cell_options="forget_bias=1.0")
    for k, v in overrides.items():
        if k == "cell":
            c.model.update(**dict(zip(("cell", "cell_options"), base.CELLS.get(v, (v, "")), strict=True)))
        else:
            configs.set_dotted(c, SHORTHAND.get(k, k), v)
    c.model.d_hidden = base.matched_width(c)
    c.lock()
    return c


# ----------------------------------------------------------------------------- grids


def _add(add, task: str, cell: str, lr: float, seed: int, steps: int | None = None) -> None:
    trial = {"study.task": task, "cell": cell, "optim.lr": lr, "seed": seed}
    if steps is not None:
        trial["train.num_steps"] = steps
    add(**_overrides(trial))


def _overrides(trial: dict) -> dict:
    """The trial as dotted overrides of the default variant: exactly what differs."""
    from rnnlab.train.config import flat

    default = flat(get_config("default").to_dict())
    arg = f"{trial['study.task']},cell={trial['cell']},lr={trial['optim.lr']},seed={trial['seed']}"
    if "train.num_steps" in trial:
        arg += f",steps={trial['train.num_steps']}"
    got = flat(get_config(arg).to_dict())
    return {k: v for k, v in got.items() if v != default[k]}


def converged_cpu(add):
    """CELLS x (music, char_lm) x LRS x SEEDS = 54 trials, early stopping, for 2 CPU cores."""
    for task in ("music", "char_lm"):
        for cell in CELLS:
            for lr in LRS:
                for seed in SEEDS:
                    _add(add, task, cell, lr, seed)


def _paper_trials():
    for task in ("music", "char_lm"):
        for cell in CELLS:
            for lr in PAPER_LRS:
                for seed in PAPER_SEEDS:
                    yield task, cell, lr, seed


def paper(add):
    """CELLS x (music, char_lm) x PAPER_LRS x PAPER_SEEDS = 120 trials, caps PAPER_CAPS: for a cluster."""
    for task, cell, lr, seed in _paper_trials():
        _add(add, task, cell, lr, seed, PAPER_CAPS[task])


def paper_slice(add):
    """The paper grid's first two trials, capped at 20 steps: its cluster path, in CI."""
    for task, cell, lr, seed in list(_paper_trials())[:2]:
        _add(add, task, cell, lr, seed, 20)


def smoke(add):
    for task in ("smoke_music", "smoke_lm"):
        for cell in ("tanh", "gru"):
            _add(add, task, cell, 1e-2, 0)


GRIDS = {"converged_cpu": (converged_cpu, ""), "paper": (paper, ""), "paper_slice": (paper_slice, ""),
         "smoke": (smoke, "")}


describe = base.describe  # a trial's name and facts from its config (launch names the workdirs with it)


# ----------------------------------------------------------------------------- convergence


def converged(curve: list[tuple[int, float]]) -> dict:
    """``curve``: (step, validation loss) in step order. The best loss at the last step and at
    the step 10% of the run earlier; converged when the gain over that last tenth is at most 1%."""
    if not curve:
        return {"converged": False, "gain": math.nan, "why": "no evaluation"}
    last_step = curve[-1][0]
    cut = last_step * (1 - CONVERGED_FRACTION)
    before = [v for s, v in curve if s <= cut]
    if not before:
        return {"converged": False, "gain": math.nan, "why": "no evaluation before the last tenth of the run"}
    best_before, best_end = min(before), min(v for _, v in curve)
    gain = (best_before - best_end) / abs(best_before)
    return {"converged": gain <= CONVERGED_GAIN, "gain": gain, "best_before": best_before, "best_end": best_end,
            "cut_step": cut, "last_step": last_step}
