"""tanh RNN vs LSTM vs GRU: at matched parameter counts, which cell learns best (Chung et
al. 2014), and does a forget-gate bias of 1 close the LSTM's gap to the GRU (Jozefowicz et
al. 2015)? On character-level language modelling, the adding and copy tasks at two lengths
each, and sequential (pixel-by-pixel) digits. The zoo asks the first question of every
registered cell on adding T=100.

Every cell gets the width whose total parameter count (readout and embeddings
included) is closest to the task's budget: computed by ``matched_width`` from
the model's own ``init`` (``jax.eval_shape``), never hand-picked, so any cell
file dropped into rnnlab/cells is matched the same way. Each (task, cell) is
trained at every learning rate of LRS and every seed of SEEDS; the report picks
each cell's learning rate on the validation metric (mean over seeds) and
reports the test metric at that rate: mean, std and a 95% Student-t CI over
seeds, the winner per task and whether its CI overlaps the others'.

Run the study and write the report into docs/lstm_vs_gru (trials through launch, each a
process of rnnlab.main, --parallel at once; the same command reuses finished trials):
  nice -n 5 python experiments/lstm_vs_gru.py --run --parallel=2 --root=runs/lstm_vs_gru --out=docs/lstm_vs_gru
Regenerate the report only:
  python experiments/lstm_vs_gru.py --root=runs/lstm_vs_gru --out=docs/lstm_vs_gru
With the launcher (each trial a process of rnnlab.main; grids: sweep = the study, zoo, smoke):
  python -m launch run experiments/lstm_vs_gru.py --root=runs/lstm_vs_gru [--grid=zoo] [--executor=slurm]
  python -m launch status experiments/lstm_vs_gru.py --root=runs/lstm_vs_gru
Zoo: nice -n 10 python experiments/lstm_vs_gru.py --run --grid=zoo --root=runs/lstm_vs_gru_zoo --out=runs/lstm_vs_gru_zoo/report
(the study's report takes ROOT_zoo's trials into its zoo table when that folder exists; when ROOT holds
no study trials but OUT already has the study's report, it replaces only OUT's zoo section, figure and
trials.csv lines, keeping the study's tables).
One trial:
  python -m rnnlab.main --config=experiments/lstm_vs_gru.py:adding100,cell=gru,lr=0.01,seed=1 --workdir=DIR

Variants (get_config's arg; keys after commas):
  default            = adding100 with the LSTM
  adding50, adding100, copy5, copy20, digits, char_lm: one task of TASKS
  zoo_adding100      the zoo's adding T=100: adding100's setting, LRU and IndRNN with 2 layers (ZOO_LAYERS)
  smoke              seconds: adding T=20, tiny model, 20 steps (tests run it)
  smoke_lm           seconds: char LM on the embedded corpus, tiny model (the zoo's LM task; ZOO_LAYERS too)
  smoke_digits       seconds: digits row by row (T=8), tiny model
Shorthand keys: cell=tanh|lstm|lstm_fb0|gru|<any registered cell>, lr=, seed=, steps=,
budget= (parameter budget; the width follows), H= (a hand-picked width instead), layers= (the width follows).

Sizes: budget 20,000 parameters for the char LM (tiny Shakespeare, 500 steps of 16 x 64 characters,
embedding 16), 4,000 for the others (adding T=50/100: 600 steps of 50; copy with 5 symbols to recall
after delays 5 and 20, 8 symbols: 800 steps of 50; digits pixel by pixel, T=64: 600 steps of 32, ~15
epochs). Adam, clipping 1.0, lrs {3e-3, 1e-2}, seeds {0, 1, 2}.

Results, with every number beside its artifact: docs/lstm_vs_gru/ (README.md is the generated
report; notes.md what it does not say: the matched widths, the runs' size, the zoo's diagnostics).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
from typing import Any

import jax
import ml_collections
import numpy as np

if __name__ == "__main__":  # run as a file: the rnnlab next to it, whatever else is installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import gradient_flow as gf_exp  # noqa: E402
from experiments import language_modelling as lm_exp  # noqa: E402
from rnnlab import cells, configs  # noqa: E402
from rnnlab.data import synthetic  # noqa: E402
from rnnlab.report import curves, stats, style, tables  # noqa: E402
from rnnlab.train.config import flat  # noqa: E402

THIS_FILE = os.path.abspath(__file__)
REPO_ROOT = os.path.dirname(os.path.dirname(THIS_FILE))
SHAKESPEARE = "../shared/data/tinyshakespeare/input.txt"  # relative to the repository root, as language_modelling
LM_TRAINER = "rnnlab.tasks.lm:train_and_evaluate"
TASK_TRAINER = "rnnlab.tasks.sequence:train_and_evaluate"

# The three cells of the study (label -> model.cell, model.cell_options). LSTM with
# forget bias 1 (Jozefowicz et al. 2015; rnnlab's default); tanh RNN with orthogonal W_h.
CELLS = {"tanh": ("elman", ""), "lstm": ("lstm", "forget_bias=1.0"), "gru": ("gru", ""),
         "lstm_fb0": ("lstm", "forget_bias=0.0")}
STUDY_CELLS = ("tanh", "lstm", "gru")  # on every task
FB0_TASKS = ("adding100", "copy20", "digits")  # lstm_fb0 too: does the bias of 1 matter (Jozefowicz et al.)?
SEEDS = (0, 1, 2)
LRS = (3e-3, 1e-2)  # the same small Adam learning-rate search for every cell and task

# Per task: what each trial trains. budget: total parameters (embedding and readout included).
TASKS: dict[str, dict[str, Any]] = {
    "char_lm": dict(trainer=LM_TRAINER, budget=20_000, steps=500),
    "adding50": dict(trainer=TASK_TRAINER, name="adding", length=50, batch=50, budget=4_000, steps=600),
    "adding100": dict(trainer=TASK_TRAINER, name="adding", length=100, batch=50, budget=4_000, steps=600),
    "copy5": dict(trainer=TASK_TRAINER, name="copy", length=5, batch=50, budget=4_000, steps=800),
    "copy20": dict(trainer=TASK_TRAINER, name="copy", length=20, batch=50, budget=4_000, steps=800),
    "digits": dict(trainer=TASK_TRAINER, name="digits", length=64, batch=32, budget=4_000, steps=600),
    # the zoo (every registered cell): adding T=100 exactly as the study's adding100
    "zoo_adding100": dict(trainer=TASK_TRAINER, name="adding", length=100, batch=50, budget=4_000, steps=600),
    # the smoke variants (smoke_lm is also the zoo's LM task)
    "smoke": dict(trainer=TASK_TRAINER, name="adding", length=20, batch=8, budget=300, steps=20),
    "smoke_digits": dict(trainer=TASK_TRAINER, name="digits", length=8, batch=8, budget=600, steps=20),
    "smoke_lm": dict(trainer=LM_TRAINER, budget=3_000, steps=20),
}
STUDY_TASKS = ("char_lm", "adding50", "adding100", "copy5", "copy20", "digits")
ZOO_TASKS = ("zoo_adding100", "smoke_lm")  # the zoo grid: every registered cell on both, at every lr of LRS
# Layers per cell in the zoo (others: 1), as the cells' papers run the adding task: a single
# LRU's h_T is linear in its inputs, so it cannot form sum_t v_t m_t (Orvieto et al. 2023 stack
# LRU blocks with a nonlinearity between); IndRNN solves the adding task with 2 layers (Li et al.
# 2018, sec. 4.1: one layer of independent ReLU units cannot both gate by the marker and
# accumulate). The width is matched to the budget for that many layers.
ZOO_LAYERS = {"lru": 2, "indrnn": 2}
ADDING_BASELINE = 1 / 6  # MSE of always predicting 1 = E[v_1 + v_2], v ~ U(0, 1)
# Sampling error of a test MSE near the baseline: the test stream has eval_batches x
# eval_batch_size = 500 sequences; for a predictor of 1 the squared error e^2, e = v_1 + v_2 - 1
# (triangular on [-1, 1]), has variance E[e^4] - E[e^2]^2 = 1/15 - 1/36. "Below the baseline"
# means by more than 2 standard errors (test MSE < 0.895 x baseline), not a hair under it.
ADDING_TEST_SEQUENCES = 500
BELOW_BASELINE = ADDING_BASELINE - 2 * float(np.sqrt((1 / 15 - 1 / 36) / ADDING_TEST_SEQUENCES))

# Per task: (validation key, test key, 'min'|'max', label). Keys of the trial's result.json:
# the task loop's eval_* is its validation stream (fresh batches, or the digits' valid split),
# test_* a separate stream / split; the LM's valid_*/test_* come from its best checkpoint.
METRICS = {
    "char_lm": ("valid_bpc", "test_bpc", "min", "test bits per character"),
    "adding50": ("eval_loss", "test_loss", "min", "test MSE (baseline 1/6)"),
    "adding100": ("eval_loss", "test_loss", "min", "test MSE (baseline 1/6)"),
    "copy5": ("eval_loss", "test_loss", "min", "test cross-entropy, nats/step (memoryless baseline "
              f"{synthetic.copy_memory_baseline(5, 5, 8):.3f})"),
    "copy20": ("eval_loss", "test_loss", "min", "test cross-entropy, nats/step (memoryless baseline "
               f"{synthetic.copy_memory_baseline(20, 5, 8):.3f})"),
    "digits": ("eval_loss", "test_accuracy", "max", "test accuracy (pixel by pixel, T=64; chance 0.1)"),
    "zoo_adding100": ("eval_loss", "test_loss", "min", "test MSE (baseline 1/6)"),
    "smoke": ("eval_loss", "test_loss", "min", "test MSE"),
    "smoke_digits": ("eval_loss", "test_accuracy", "max", "test accuracy"),
    "smoke_lm": ("valid_bpc", "test_bpc", "min", "test bits per character"),
}
# For launch/ (one 'KIND/KEY' for a whole sweep): None lets it take each trial's own
# validation loss, 'eval/loss' (task loops) or 'valid/nll' (the LM); METRICS holds the per-task ones.
METRIC = None


def base_config() -> ml_collections.ConfigDict:
    """The keys of both tasks: gradient_flow's (rnnlab.tasks.sequence) with
    language_modelling's (rnnlab.tasks.lm) added where missing, plus ``study``.
    ``trainer`` picks the task; each reads only its own sections (sequence: task,
    model, optim, train; lm: data, model, optim, train, generate, init_from)."""
    c = gf_exp.base_config()
    _add_missing(c, lm_exp.base_config())
    c.study = s = ml_collections.ConfigDict()
    s.task = "adding100"  # a key of TASKS: names and reports only, the loops do not read it
    s.param_budget = 4_000  # total parameters the width was matched to (0: model.d_hidden as given)
    return c


def _add_missing(dst: ml_collections.ConfigDict, src: ml_collections.ConfigDict) -> None:
    for k, v in src.items():
        if k not in dst:
            dst[k] = v
        elif isinstance(v, ml_collections.ConfigDict):
            _add_missing(dst[k], v)


def _set_task(c: ml_collections.ConfigDict, task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task/variant {task!r} of lstm_vs_gru; choose default, smoke or one of {sorted(TASKS)}")
    spec = TASKS[task]
    c.trainer = spec["trainer"]
    c.study.update(task=task, param_budget=spec["budget"])
    c.optim.update(name="adam", lr=1e-2, clip_norm=1.0, schedule="constant")
    c.train.update(num_steps=spec["steps"], log_every=max(spec["steps"] // 6, 1), keep_checkpoints=1,
                   tensorboard=False)
    if spec["trainer"] == TASK_TRAINER:
        c.task.update(name=spec["name"], length=spec["length"], batch_size=spec["batch"], n_copy=5, n_symbols=8,
                      eval_batches=2, eval_batch_size=250)
        c.train.update(eval_every=max(spec["steps"] // 6, 1), checkpoint_every=max(spec["steps"] // 2, 1),
                       checkpoint_steps=())
        return
    small = task.startswith("smoke")
    source = SHAKESPEARE if os.path.exists(os.path.join(REPO_ROOT, SHAKESPEARE)) and not small else "embedded"
    c.data.update(source=source, batch_size=4 if small else 16, seq_len=16 if small else 64,
                  eval_batch_size=64 if small else 100, cache_dir="" if small else "~/.cache/rnnlab")
    c.model.update(d_embed=8 if small else 16, num_layers=1)
    c.train.update(eval_every=max(spec["steps"] // 3, 1), checkpoint_every=0)
    c.generate.length = 0


SHORTHAND = {"lr": "optim.lr", "seed": "seed", "steps": "train.num_steps", "budget": "study.param_budget",
             "layers": "model.num_layers"}


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    variant, overrides = configs.parse_arg(arg)
    c = base_config()
    _set_task(c, "adding100" if variant == "default" else variant)
    c.model.update(cell="lstm", cell_options="forget_bias=1.0")
    hand_picked = None
    for k, v in overrides.items():
        if k == "cell":  # a study label (tanh, lstm, gru) or any registered cell with its defaults
            name, options = CELLS.get(v, (v, ""))
            c.model.update(cell=name, cell_options=options)
        elif k == "H":
            hand_picked = int(v)
        else:
            configs.set_dotted(c, SHORTHAND.get(k, k), v)
    if variant in ZOO_TASKS and not {"layers", "model.num_layers"} & set(overrides):
        c.model.num_layers = ZOO_LAYERS.get(c.model.cell, 1)  # the cell as its paper runs it (ZOO_LAYERS)
    if hand_picked is not None:
        c.model.d_hidden, c.study.param_budget = hand_picked, 0
    elif c.study.param_budget > 0:
        c.model.d_hidden = matched_width(c)
    c.lock()
    return c


# ----------------------------------------------------------------------------- matched widths


def parameter_count(config: ml_collections.ConfigDict, d_hidden: int) -> int:
    """Total parameters of the trial's model at width ``d_hidden``, from its init
    traced abstractly (jax.eval_shape: no arrays, ~10 ms)."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.model.d_hidden = d_hidden
    if config.trainer == LM_TRAINER:
        from rnnlab.models import lm as lm_lib

        model = lm_lib.build(c.model, _vocab_size(c.data.source, c.data.level))
    else:
        from rnnlab.tasks import sequence

        model = sequence.build_model(c)  # no data read: a dry run of a music grid parses no chorale
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes))


def matched_width(config: ml_collections.ConfigDict) -> int:
    """The width whose parameter count is closest to ``study.param_budget`` (ties:
    the smaller). Counts grow with the width, so a binary search finds it."""
    what = {k: config[k].to_dict() for k in ("model", "task", "data")}  # not seed/lr: one search per model
    return _matched_width(json.dumps({**what, "trainer": config.trainer}), config.study.param_budget)


@functools.cache
def _matched_width(config_json: str, budget: int) -> int:
    config = ml_collections.ConfigDict(json.loads(config_json))  # the sections models are built from
    # a cell with heads (mlstm) takes widths that are multiples of them: search over those
    unit = int(configs.parse_options(config.model.cell_options).get("heads", 1))
    count = lambda k: parameter_count(config, k * unit)  # noqa: E731
    lo, hi = 1, 2
    while count(hi) < budget:
        lo, hi = hi, hi * 2
        if hi * unit > 1 << 16:
            raise ValueError(f"study.param_budget={budget} needs a width above 65536; lower the budget")
    while lo < hi:  # smallest multiple with count >= budget
        mid = (lo + hi) // 2
        if count(mid) >= budget:
            hi = mid
        else:
            lo = mid + 1
    if lo > 1 and budget - count(lo - 1) <= count(lo) - budget:
        return (lo - 1) * unit
    return lo * unit


@functools.cache
def _vocab_size(source: str, level: str) -> int:
    """The LM's vocabulary size for ``source`` (train split, all characters), as the loop builds it."""
    from rnnlab.tasks import lm

    c = lm_exp.get_config("smoke")
    c.unlock()
    c.data.update(source=source, level=level)
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(REPO_ROOT)  # relative sources are relative to the repository root
        try:
            return len(lm.load_data(c, tmp).vocab.itos)
        finally:
            os.chdir(cwd)


# ----------------------------------------------------------------------------- grids


def overrides(task: str, cell: str, lr: float, seed: int) -> dict:
    """The trial as dotted overrides of the default variant: exactly what differs."""
    default = flat(get_config("default").to_dict())
    trial = flat(get_config(f"{task},cell={cell},lr={lr},seed={seed}").to_dict())
    return {k: v for k, v in trial.items() if v != default[k]}


def sweep(add, cells=STUDY_CELLS):
    """The study: STUDY_TASKS x STUDY_CELLS x LRS x SEEDS (6 x 3 x 2 x 3 = 108 trials),
    and the LSTM with forget bias 0 on FB0_TASKS (18 more). ``cells`` (launch --cells=lstm,gru,mycell):
    other cells, by label (tanh, lstm, gru, lstm_fb0) or registered name."""
    for task in STUDY_TASKS:
        for cell in tuple(cells) + (("lstm_fb0",) if task in FB0_TASKS and "lstm" in cells else ()):
            for lr in LRS:
                for seed in SEEDS:
                    add(**overrides(task, cell, lr, seed))


def zoo(add):
    """Every registered cell (rnnlab.cells.available(), found by listing the package:
    a new cell file joins with no edit here) on adding T=100 (as the study's adding100:
    600 steps, clipping 1.0) and the char-LM smoke, at every lr of LRS (the report picks
    each cell's on validation), one seed; LRU and IndRNN with ZOO_LAYERS layers.
    16 cells x 2 tasks x 2 lrs = 64 trials."""
    for cell in cells.available():
        for task in ZOO_TASKS:
            for lr in LRS:
                add(**overrides(task, cell, lr, 0))


def smoke(add):
    """Seconds: the pipeline end to end (tests run it): two cells, two seeds, two tasks."""
    for task in ("smoke", "smoke_digits"):
        for cell in ("tanh", "gru"):
            for seed in (0, 1):
                add(**overrides(task, cell, 1e-2, seed))


GRIDS = {"sweep": (sweep, ""), "zoo": (zoo, ""), "smoke": (smoke, "")}


# ----------------------------------------------------------------------------- trial names


def describe(config: Any) -> dict:
    """What a trial is, from its config (a ConfigDict or config.json's dict)."""
    get = functools.partial(_get, config)
    cell, opts = get("model.cell"), configs.parse_options(get("model.cell_options"))
    label = cell
    if cell == "elman":
        label = "tanh" if opts.get("nonlinearity", "tanh") == "tanh" else f"elman_{opts['nonlinearity']}"
    elif cell == "lstm" and float(opts.get("forget_bias", 1.0)) != 1.0:
        label = f"lstm_fb{float(opts['forget_bias']):g}"
    task, lr, seed = get("study.task"), float(get("optim.lr")), int(get("seed"))
    return {"name": f"{task}_{label}_lr{lr:g}_seed{seed}", "task": task, "cell": label, "lr": lr, "seed": seed,
            "d_hidden": int(get("model.d_hidden")), "layers": int(get("model.num_layers")),
            "budget": int(get("study.param_budget")),
            "num_steps": int(get("train.num_steps"))}


def name(trial_overrides: dict) -> str:
    """The trial's name (its workdir under the sweep's root), from its overrides."""
    return describe(resolve(trial_overrides))["name"]


def resolve(trial_overrides: dict, variant: str = "") -> ml_collections.ConfigDict:
    c = get_config(variant)
    c.unlock()
    for k, v in trial_overrides.items():
        configs.set_dotted(c, k, str(v))
    c.lock()
    return c


def _get(config: Any, dotted: str) -> Any:
    node = config
    for p in dotted.split("."):
        node = node[p]
    return node


# ----------------------------------------------------------------------------- running


def run_study(root: str, grid: str = "sweep", parallel: int = 1) -> list[dict]:
    """Every trial of ``grid`` in root/<name>, through launch's one runner (each trial a
    process of rnnlab.main, ``parallel`` at once). A finished trial is skipped, an
    unfinished one resumes, one that fails is recorded and the rest go on. Returns
    launch's outcome per trial (name, state, ...)."""
    import launch

    return launch.run_sweep(THIS_FILE, root, grid=grid, parallel=parallel)


# ----------------------------------------------------------------------------- report


def gather(root: str) -> list[dict]:
    """One row per trial workdir under ``root``: what it is, its state, result and curve."""
    from rnnlab.train import writers

    rows = []
    for entry in sorted(os.listdir(root)):
        wd = os.path.join(root, entry)
        if not os.path.isfile(os.path.join(wd, "config.json")):
            continue
        with open(os.path.join(wd, "config.json")) as f:
            config = json.load(f)
        if "study" not in config:
            continue
        info = describe(config)
        result_path = os.path.join(wd, "result.json")
        result = json.load(open(result_path)) if os.path.exists(result_path) else None  # written once finished
        metrics = writers.read_metrics(wd) if os.path.exists(os.path.join(wd, "metrics.jsonl")) else []
        kind, key = ("valid", "bpc") if config["trainer"] == LM_TRAINER else ("eval", "loss")
        curve = [(r["step"], r[key]) for r in metrics if r.get("kind") == kind and key in r]
        train_rows = [r for r in metrics if r.get("kind") == "train"]
        tokens_per_step = (config["data"]["batch_size"] * config["data"]["seq_len"] if config["trainer"] == LM_TRAINER
                           else config["task"]["batch_size"] * (config["task"]["length"] + (
                               2 * config["task"]["n_copy"] if config["task"]["name"] == "copy" else 0)))
        rows.append({**info, "workdir": wd, "finished": result is not None, "result": result or {},
                     "curve": curve, "curve_metric": f"{kind} {key}",
                     "nonfinite": not result and any(r.get("loss") != r.get("loss") for r in train_rows),
                     "parameters": (result or {}).get("parameters"),
                     "tokens_per_s": _throughput(train_rows, tokens_per_step)})
    return rows


def _throughput(train_rows: list[dict], tokens_per_step: int) -> float | None:
    """Tokens per second between the first and the last logged training step: after
    the first step's compilation, with any evaluation in between included."""
    rows = [r for r in train_rows if "time" in r]
    if len(rows) < 2 or rows[-1]["time"] <= rows[0]["time"]:
        return None
    return (rows[-1]["step"] - rows[0]["step"]) * tokens_per_step / (rows[-1]["time"] - rows[0]["time"])


def summarize(rows: list[dict], metrics: dict | None = None) -> dict:
    """Per task: per cell, the best lr (lowest/highest mean validation metric over
    seeds, among lrs where every seed finished) and the test metric's stats at it;
    the winner and which cells' 95% CIs overlap the winner's. ``metrics``: task ->
    (validation key, test key, 'min'|'max', label) of result.json (default METRICS)."""
    out: dict[str, Any] = {}
    for task in sorted({r["task"] for r in rows}):
        val_key, test_key, direction, label = (metrics or METRICS)[task]
        sign = 1.0 if direction == "min" else -1.0
        cells_out = {}
        for cell in sorted({r["cell"] for r in rows if r["task"] == task}):
            by_lr = {}
            for lr in sorted({r["lr"] for r in rows if r["task"] == task and r["cell"] == cell}):
                trials = [r for r in rows if r["task"] == task and r["cell"] == cell and r["lr"] == lr]
                ok = [r for r in trials if r["finished"] and val_key in r["result"]]
                val = stats.mean_ci([r["result"][val_key] for r in ok], nonnegative=stats.nonnegative(val_key))
                test = stats.mean_ci([r["result"][test_key] for r in ok], nonnegative=stats.nonnegative(test_key))
                by_lr[lr] = {"lr": lr, "seeds": len(trials), "finished": len(ok), "valid": val, "test": test,
                             "parameters": ok[0]["parameters"] if ok else None,
                             "d_hidden": trials[0]["d_hidden"], "layers": trials[0]["layers"],
                             "trials": [r["name"] for r in trials],
                             "tokens_per_s": float(np.mean([r["tokens_per_s"] for r in ok])) if ok else None}
            complete = [b for b in by_lr.values() if b["finished"] == b["seeds"] and b["finished"] > 0]
            pool = complete or [b for b in by_lr.values() if b["finished"]]
            best = min(pool, key=lambda b: b["valid"]["mean"]) if pool else None  # validation: a loss, lower wins
            cells_out[cell] = {"best": best, "by_lr": by_lr}
        ranked = sorted((c for c in cells_out if cells_out[c]["best"]), key=lambda c: sign * cells_out[c]["best"]["test"]["mean"])
        winner = ranked[0] if ranked else None
        overlap = []
        if winner:
            w = cells_out[winner]["best"]["test"]
            for c in ranked[1:]:
                o = cells_out[c]["best"]["test"]
                if not (o["ci_low"] > w["ci_high"] or o["ci_high"] < w["ci_low"]):
                    overlap.append(c)
        out[task] = {"metric": label, "test_key": test_key, "valid_key": val_key, "direction": direction,
                     "cells": cells_out, "ranking": ranked, "winner": winner, "overlapping": overlap}
    return out


_fmt = tables.fmt
_ci_text = tables.ci_text


def plot_curves(rows: list[dict], summary: dict, out_dir: str) -> list[str]:
    """Per task: the validation curve of each cell at its best lr, mean over seeds
    (shaded: min..max over seeds). Writes curves_<task>.png; returns the file names."""
    plt = style.pyplot()
    files = []
    for task, s in summary.items():
        many = len(s["cells"]) > 10  # the zoo: 20 distinct colours, a wider figure, the legend beside it
        fig, ax = plt.subplots(figsize=(9, 5) if many else (6, 4))
        if many:
            ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)
        kind = next(r["curve_metric"] for r in rows if r["task"] == task)
        for cell, c in s["cells"].items():
            if not c["best"]:
                continue
            seeds_curves = [r["curve"] for r in rows if r["name"] in c["best"]["trials"] and r["finished"] and r["curve"]]
            if not seeds_curves:
                continue
            steps = sorted(set.intersection(*(set(st for st, _ in cv) for cv in seeds_curves)))
            vals = np.array([[dict(cv)[st] for st in steps] for cv in seeds_curves])
            line = curves.plot_curve(ax, list(zip(steps, vals.mean(0), strict=True)), marker="o", ms=3,
                                     label=f"{cell} (lr {c['best']['lr']:g}, {c['best']['parameters']} params)")
            ax.fill_between(steps, vals.min(0), vals.max(0), color=line.get_color(), alpha=0.15)
        seeds = max((len(c["best"]["trials"]) for c in s["cells"].values() if c["best"]), default=0)
        ax.set_title(f"{task}: validation, " + ("mean over seeds (band: min..max)" if seeds > 1 else "one seed"))
        ax.set_xlabel("step")
        ax.set_ylabel(kind)
        if s["test_key"] == "test_loss" and task.startswith(("adding", "zoo_adding")):
            ax.set_yscale("log")
            ax.axhline(ADDING_BASELINE, color="gray", ls="--", lw=1, label="baseline 1/6")
        ax.legend(fontsize=7 if many else 8, **(dict(loc="center left", bbox_to_anchor=(1.01, 0.5)) if many else {}))
        name = f"curves_{task}.png"
        style.save(fig, os.path.join(out_dir, name))
        files.append(name)
    return files


def write_csv(rows: list[dict], summary: dict, out_dir: str) -> None:
    import csv

    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "metric", "cell", "best_lr", "parameters", "d_hidden", "seeds_finished", "valid_mean",
                    "test_mean", "test_std", "test_ci95_low", "test_ci95_high", "winner", "ci_overlaps_winner"])
        for task, s in summary.items():
            for cell, c in s["cells"].items():
                b = c["best"]
                if b is None:
                    w.writerow([task, s["test_key"], cell] + [""] * 11)
                    continue
                w.writerow([task, s["test_key"], cell, b["lr"], b["parameters"], b["d_hidden"], b["finished"],
                            b["valid"]["mean"], b["test"]["mean"], b["test"]["std"], b["test"]["ci_low"],
                            b["test"]["ci_high"], cell == s["winner"], cell in s["overlapping"]])
    _write_trials_csv(os.path.join(out_dir, "trials.csv"), [_trial_record(r) for r in rows])


TRIAL_KEYS = ["name", "task", "cell", "lr", "seed", "layers", "d_hidden", "parameters", "finished", "tokens_per_s"]


def _trial_record(row: dict) -> dict:
    """One line of trials.csv: what the trial is, then its result's numbers."""
    numbers = {k: v for k, v in row["result"].items() if isinstance(v, (int, float)) and k not in TRIAL_KEYS}
    return {**{k: row[k] for k in TRIAL_KEYS}, **numbers}


def _write_trials_csv(path: str, records: list[dict]) -> None:
    result_keys = sorted({k for r in records for k in r if k not in TRIAL_KEYS})
    tables.write_csv(path, records, TRIAL_KEYS + result_keys)


def comparison_paragraph(summary: dict) -> str:
    """The outcome set beside Chung et al. 2014 and Jozefowicz et al. 2015, from the numbers."""

    def better(task, a, b):  # (a beats b on mean, CIs separate)
        s = summary[task]
        ca, cb = s["cells"].get(a, {}).get("best"), s["cells"].get(b, {}).get("best")
        if not ca or not cb:
            return None
        sign = 1 if s["direction"] == "min" else -1
        a, b = ca["test"]["mean"], cb["test"]["mean"]
        wins = sign * a < sign * b and abs(a - b) > 1e-6 * max(abs(a), abs(b))  # equal means (digits: 302/360) tie
        sep = ca["test"]["ci_high"] < cb["test"]["ci_low"] or cb["test"]["ci_high"] < ca["test"]["ci_low"]
        return wins, sep

    tasks = list(summary)
    gated_sep, gated_mean, tanh_best = [], [], []
    gru_lstm = {"GRU": [], "LSTM": []}
    overlap_gl = []
    for t in tasks:
        best_gated = min((c for c in ("lstm", "gru") if summary[t]["cells"].get(c, {}).get("best")),
                         key=lambda c: (1 if summary[t]["direction"] == "min" else -1)
                         * summary[t]["cells"][c]["best"]["test"]["mean"], default=None)
        r = better(t, best_gated, "tanh") if best_gated else None
        if r:
            (gated_sep if r[0] and r[1] else gated_mean if r[0] else tanh_best).append(t)
        r = better(t, "gru", "lstm")
        if r:
            gru_lstm["GRU" if r[0] else "LSTM"].append(t)
            if not r[1]:
                overlap_gl.append(t)
    j = lambda xs: ", ".join(xs) or "none"  # noqa: E731
    return (
        f"**Against the literature.** Chung et al. (2014) found gated units (LSTM, GRU) clearly better than tanh "
        f"units, and GRU comparable to LSTM with the better of the two depending on the data set. Here the best "
        f"gated cell beat the tanh RNN with separate 95% CIs on {len(gated_sep)} of {len(tasks)} tasks "
        f"({j(gated_sep)}), on the mean only on {j(gated_mean)}, and the tanh RNN was best or tied on "
        f"{j(tanh_best)}. GRU had the better mean on {j(gru_lstm['GRU'])}, LSTM on {j(gru_lstm['LSTM'])}; their CIs "
        f"overlap on {len(overlap_gl)} of {len(tasks)} tasks ({j(overlap_gl)}). Jozefowicz et al. (2015) found that "
        f"a forget-gate bias of 1 closes most of the gap between LSTM and GRU. The LSTM above ('lstm') has that bias "
        f"(rnnlab's default), so overlapping LSTM/GRU intervals are what their result predicts. "
        f"{_fb_sentence(summary, better)} Caveats: one small parameter budget per task, "
        f"short training (hundreds of steps), {len(SEEDS)} seeds and {len(LRS)} learning rates, so a CI over "
        f"{len(SEEDS)} seeds is wide (t_2 = 4.30) and 'overlap' is weak evidence of equality."
    )


def _fb_sentence(summary: dict, better) -> str:
    """LSTM forget bias 1 against 0 (and each against the GRU) where both ran."""
    parts = []
    for t in summary:
        if "lstm_fb0" not in summary[t]["cells"] or not summary[t]["cells"]["lstm_fb0"]["best"]:
            continue
        fb1, fb0 = (summary[t]["cells"][c]["best"]["test"]["mean"] for c in ("lstm", "lstm_fb0"))
        r1, r0 = better(t, "lstm", "lstm_fb0"), better(t, "gru", "lstm_fb0")
        gap1, gap0 = better(t, "gru", "lstm"), r0
        parts.append(f"{t}: fb 1 {_fmt(fb1)} vs fb 0 {_fmt(fb0)} ("
                     f"{'fb 1 better' if r1[0] else 'fb 0 better'}, CIs {'separate' if r1[1] else 'overlap'}; "
                     f"GRU vs fb 0: CIs {'separate' if gap0[1] else 'overlap'}, GRU vs fb 1: "
                     f"{'separate' if gap1[1] else 'overlap'})")
    if not parts:
        return ""
    return "With forget bias 0 as well (same widths, lrs and seeds): " + "; ".join(parts) + "."


def markdown(rows: list[dict], summary: dict, figures: list[str], zoo_rows: list[dict]) -> str:
    lines = ["# tanh RNN vs LSTM vs GRU at matched parameter counts", "",
             "Generated by `python experiments/lstm_vs_gru.py --root=runs/lstm_vs_gru --out=docs/lstm_vs_gru` "
             "(see the experiment's docstring). Each cell's width is computed to match the task's parameter "
             "budget; its learning rate is chosen on the validation metric (mean over seeds); the table gives the "
             "test metric at that rate: mean ± std [95% Student-t CI] over seeds.", ""]
    order = [t for t in STUDY_TASKS if t in summary] + sorted(t for t in summary if t not in STUDY_TASKS)
    study = {t: summary[t] for t in order}
    for task, s in study.items():
        lines += [f"## {task}: {s['metric']} ({'lower' if s['direction'] == 'min' else 'higher'} is better)", "",
                  f"| cell | params (width) | lr (chosen) | seeds | validation ({s['valid_key']}) | test: mean ± std [95% CI] | "
                  "per lr: validation mean (finished/seeds) |",
                  "|---|---|---|---|---|---|---|"]
        for cell, c in s["cells"].items():
            b = c["best"]
            per_lr = ", ".join(f"{lr:g}: {_fmt(x['valid']['mean'])} ({x['finished']}/{x['seeds']})"
                               for lr, x in c["by_lr"].items())
            if b is None:
                lines.append(f"| {cell} | - | - | 0 | - | no finished trial | {per_lr} |")
                continue
            mark = " **winner**" if cell == s["winner"] else ""
            lines.append(f"| {cell}{mark} | {b['parameters']} ({b['d_hidden']}) | {b['lr']:g} | {b['finished']} | "
                         f"{_fmt(b['valid']['mean'])} | {_ci_text(b['test'])} | {per_lr} |")
        lines += tables.footnotes([c["best"]["test"] for c in s["cells"].values() if c["best"]])
        ov = s["overlapping"]
        lines += ["", f"Winner: **{s['winner']}**; " + (f"its CI overlaps {', '.join(ov)}'s (not separated)." if ov
                                                         else "its CI overlaps no other cell's."), ""]
    lines += [comparison_paragraph(study), ""] if study else []
    lines += zoo_markdown(zoo_table(zoo_rows), _zoo_run_info(zoo_rows)) if zoo_rows else []
    if figures:
        lines += ["## Learning curves", ""] + [f"![{f}]({f})" for f in figures] + [""]
    lines += ["Files: `results.csv` (per task and cell), `trials.csv` (per trial), `report.json`.", ""]
    return "\n".join(lines)


def zoo_table(zoo_rows: list[dict]) -> list[dict]:
    """Per registered cell, per zoo task: the lr chosen on validation (summarize: eval_loss,
    valid_bpc; never the test metric) and, at it, the test metric, layers, width, parameters
    and tokens/s; on adding, the ratio to the baseline and whether it is below it (BELOW_BASELINE)."""
    summary = summarize(zoo_rows)
    out = []
    for cell in sorted({r["cell"] for r in zoo_rows}):
        entry: dict[str, Any] = {"cell": cell}
        for task, part in (("zoo_adding100", "adding"), ("smoke_lm", "lm")):
            c = summary.get(task, {}).get("cells", {}).get(cell)
            b = c["best"] if c else None
            entry[part] = None if c is None else {
                "lr": b and b["lr"], "layers": b and b["layers"], "d_hidden": b and b["d_hidden"],
                "parameters": b and b["parameters"], "valid": b and b["valid"]["mean"], "test": b and b["test"]["mean"],
                "tokens_per_s": b and b["tokens_per_s"],
                "valid_by_lr": {lr: (x["valid"]["mean"] if x["finished"] else None) for lr, x in c["by_lr"].items()}}
        a = entry["adding"]
        if a and a["test"] is not None:
            a.update(ratio=a["test"] / ADDING_BASELINE, below_baseline=bool(a["test"] < BELOW_BASELINE))
        out.append(entry)
    return out


def _zoo_run_info(zoo_rows: list[dict]) -> dict:
    """The zoo grid's run record from its trials: states and training seconds (result.json)."""
    return {"runs": [{"state": "finished" if r["finished"] else "not finished",
                      "seconds": (r["result"] or {}).get("train_seconds")} for r in zoo_rows]}


def zoo_markdown(table: list[dict], run_info: dict) -> list[str]:
    """The zoo section of the report: one line per registered cell, adding T=100 and the LM smoke."""
    lrs = sorted({lr for e in table if e["adding"] for lr in e["adding"]["valid_by_lr"]})
    lines = ["## Zoo: every registered cell", "",
             f"Every cell in rnnlab/cells (found by listing the package) on adding T=100 exactly as the study's "
             f"adding100 ({TASKS['zoo_adding100']['steps']} steps of batch 50, Adam, clipping 1.0, width matched to "
             f"{TASKS['zoo_adding100']['budget']:,} parameters for the cell's layer count) and on the char-LM smoke "
             f"(embedded corpus, {TASKS['smoke_lm']['steps']} steps, {TASKS['smoke_lm']['budget']:,} parameters), "
             f"one seed, at every lr of {', '.join(f'{x:g}' for x in LRS)}; each cell's lr is chosen per task on "
             f"the validation metric (eval MSE, valid bpc), never on test. "
             + ", ".join(f"{k.upper() if k == 'lru' else 'IndRNN' if k == 'indrnn' else k} {v} layers"
                         for k, v in ZOO_LAYERS.items())
             + " as their papers run this task (ZOO_LAYERS in the experiment); every other cell 1 layer. "
             f"Baseline MSE 1/6 = {ADDING_BASELINE:.4f} (always predict 1); 'below' means a test MSE under "
             f"{BELOW_BASELINE:.3f} = 1/6 - 2 standard errors of the {ADDING_TEST_SEQUENCES}-sequence test "
             f"estimate ({BELOW_BASELINE / ADDING_BASELINE:.3f} x baseline), so a hair under 1/6 is not counted. "
             "tokens/s: training tokens between the first and the last logged step over the wall time between "
             "them (after compilation; evaluations in between and the other jobs on the shared 2-core machine "
             "included: compare ratios, not absolute speed).", ""]
    if run_info.get("runs"):
        secs = sum(r.get("seconds") or 0 for r in run_info["runs"])
        states = [r["state"] for r in run_info["runs"]]
        lines += [f"Run: {len(states)} trials, {states.count('finished')} finished; {secs / 60:.1f} min of "
                  "training (result.json's train_seconds).", ""]
    lines += ["| cell | layers x width | params | lr (chosen) | validation MSE at lr "
              + " / ".join(f"{x:g}" for x in lrs) + " | adding T=100 test MSE | / baseline | below baseline | "
              "tokens/s | LM smoke lr | LM test bpc | LM params (layers x width) | LM tokens/s |",
              "|---|---|---:|---:|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for e in table:
        a, m = e["adding"], e["lm"]
        if a and a["test"] is not None:
            per_lr = " / ".join(_fmt(a["valid_by_lr"].get(x)) if a["valid_by_lr"].get(x) is not None else "failed"
                                for x in lrs)
            cols = [f"{a['layers']}x{a['d_hidden']}", f"{a['parameters']:,}", f"{a['lr']:g}", per_lr, _fmt(a["test"]),
                    f"{a['ratio']:.3f}", "yes" if a["below_baseline"] else "**no**", _fmt(a["tokens_per_s"], ",.0f")]
        else:
            cols = ["-", "-", "-", "failed" if a else "not run", "-", "-", "**no**", "-"]
        if m and m["test"] is not None:
            cols += [f"{m['lr']:g}", _fmt(m["test"]), f"{m['parameters']:,} ({m['layers']}x{m['d_hidden']})",
                     _fmt(m["tokens_per_s"], ",.0f")]
        else:
            cols += ["-", "failed" if m else "not run", "-", "-"]
        lines.append(f"| {e['cell']} | " + " | ".join(cols) + " |")
    below = [e["cell"] for e in table if e["adding"] and e["adding"].get("below_baseline")]
    not_below = [f"{e['cell']} ({_fmt(e['adding']['ratio'], '.3f')} x baseline)" if e["adding"] and
                 e["adding"].get("ratio") is not None else f"{e['cell']} (no finished trial)"
                 for e in table if e["cell"] not in below]
    lm_ok = [e["cell"] for e in table if e["lm"] and e["lm"]["test"] is not None]
    lines += ["", f"Below the baseline on adding T=100: {len(below)} of {len(table)} cells"
              + (f"; not: {', '.join(not_below)}." if not_below else ".")
              + f" LM smoke finished: {len(lm_ok)} of {len(table)}. Why each cell passes or fails (steps, depth, "
              "width), with the single-trial checks: [notes.md](notes.md#zoo).", ""]
    return lines


def _zoo_curves(zoo_rows: list[dict], out_dir: str) -> list[str]:
    summary = {t: s for t, s in summarize(zoo_rows).items() if t == "zoo_adding100"}
    return plot_curves(zoo_rows, summary, out_dir) if summary else []


def _zoo_json(zoo_rows: list[dict], table: list[dict]) -> dict:
    return {"zoo": [{k: r[k] for k in ("name", "cell", "task", "lr", "layers", "d_hidden", "parameters", "tokens_per_s",
                                       "finished", "result")} for r in zoo_rows],
            "zoo_table": table}


def report(root: str, out_dir: str, zoo_root: str = "") -> dict:
    """Gather the trials under ``root`` (and ``zoo_root``; zoo tasks found under ``root``
    count as the zoo), write README.md, results.csv, trials.csv, curves_<task>.png and
    report.json into ``out_dir``. With zoo trials only and a study report already in
    ``out_dir`` (report.json with a summary), update only its zoo section (update_zoo)."""
    from rnnlab.train import writers

    os.makedirs(out_dir, exist_ok=True)
    gathered = gather(root) if os.path.isdir(root) else []
    rows = [r for r in gathered if r["task"] not in ZOO_TASKS]
    zoo_rows = [r for r in gathered if r["task"] in ZOO_TASKS]
    if zoo_root and os.path.isdir(zoo_root) and os.path.abspath(zoo_root) != os.path.abspath(root):
        zoo_rows += gather(zoo_root)
    if not rows and not zoo_rows:
        raise ValueError(f"no trials of lstm_vs_gru under {root}; run them first (--run)")
    old = os.path.join(out_dir, "report.json")
    if not rows and os.path.exists(old) and json.load(open(old)).get("summary"):
        print(f"no study trials under {root}: updating only the zoo section of {out_dir} (the study's tables kept)",
              flush=True)
        return update_zoo(out_dir, zoo_rows)
    summary = summarize(rows)
    figures = plot_curves(rows, summary, out_dir) + _zoo_curves(zoo_rows, out_dir)
    write_csv(rows + zoo_rows, summary, out_dir)
    text = markdown(rows, summary, figures, zoo_rows)
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(text)
    rep = {"summary": summary, "figures": figures, **_zoo_json(zoo_rows, zoo_table(zoo_rows))}
    writers.write_json_atomic(os.path.join(out_dir, "report.json"), rep)
    print(text, flush=True)
    return rep


def update_zoo(out_dir: str, zoo_rows: list[dict]) -> dict:
    """Regenerate the report in ``out_dir`` with a new zoo, for a zoo rerun when the
    study's trials are not on this machine: the study's tables are rendered again
    from report.json's summary (the artifact of the study's own run), the zoo from
    ``zoo_rows``; README.md is written whole, never edited in place."""
    from rnnlab.train import writers

    with open(os.path.join(out_dir, "report.json")) as f:
        rep = json.load(f)
    summary = {task: _summary_from_json(s) for task, s in rep["summary"].items()}
    zoo_figures = _zoo_curves(zoo_rows, out_dir)
    figures = [f for f in rep.get("figures", []) if f not in zoo_figures] + zoo_figures
    text = markdown([], summary, figures, zoo_rows)
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(text)
    rep.update(_zoo_json(zoo_rows, zoo_table(zoo_rows)), figures=figures)
    writers.write_json_atomic(os.path.join(out_dir, "report.json"), rep)
    path = os.path.join(out_dir, "trials.csv")
    kept = []
    if os.path.exists(path):
        import csv

        with open(path, newline="") as f:
            kept = [r for r in csv.DictReader(f) if r["task"] not in ZOO_TASKS]  # repeated columns: equal values
    _write_trials_csv(path, kept + [_trial_record(r) for r in zoo_rows])
    print(text, flush=True)
    return rep


def _summary_from_json(s: dict) -> dict:
    """A task's summary read back from report.json: learning rates were dict keys, JSON made them strings."""
    cells_ = {cell: {**c, "by_lr": {float(lr): x for lr, x in c["by_lr"].items()}} for cell, c in s["cells"].items()}
    return {**s, "cells": cells_}


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="folder of trial workdirs (one per trial)")
    p.add_argument("--out", default="", help="report folder (default: ROOT/report)")
    p.add_argument("--run", action="store_true", help="run (or resume) the grid's trials first (through launch)")
    p.add_argument("--parallel", type=int, default=1, help="with --run: trials at once")
    p.add_argument("--grid", default="sweep", choices=sorted(GRIDS))
    p.add_argument("--zoo_root", default="", help="the zoo grid's root (default: ROOT_zoo when it exists)")
    args = p.parse_args(argv)
    if args.run:
        run_study(args.root, args.grid, args.parallel)
    zoo_root = args.zoo_root or os.path.normpath(args.root) + "_zoo"
    report(args.root, args.out or os.path.join(args.root, "report"), zoo_root if args.grid != "zoo" else "")


if __name__ == "__main__":
    main()
