"""Sequence tasks on the one loop: the generated long-range tasks (adding,
copying memory, temporal order; ``data.synthetic``), sequence classification
(scikit-learn's 8x8 digits; ``data.digits``; MNIST-1D and Japanese Vowels; ``data.seqclass``),
polyphonic music (the Bach chorales as piano rolls, next-frame NLL; ``data.music``) and
forecasting (task.name 'co2' or 'sunspots': the next H values from the last step's readout,
MSE in MASE units, scored by MASE and sMAPE; ``data.forecast``), with a ``models.seq.SeqModel``.

Config: a ``task`` section (name, length, batch_size, eval_batches, eval_batch_size,
n_copy, n_symbols) beside model/optim/train; trainer 'rnnlab.tasks.sequence:train_and_evaluate'
(``experiments/gradient_flow.py``, ``experiments/copy_lengths.py``).

Training batches are pure in (seed, step), evaluation batches in (seed,
EVAL_STEP0 + i) and the test stream in (seed, TEST_STEP0 + i), so they never meet.
Evaluations are logged and pick no checkpoint: the result is the model at the
last step, unless ``train.early_stop_evals`` > 0 (early stopping): then the run
ends after that many evaluations without a new best, and the test numbers are
the best validation checkpoint's. ``train.checkpoint_steps`` keeps snapshots for probes
(``checkpoint.load_snapshot_params``); ``probe_batch`` is the batch they look at.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from rnnlab.data import digits, forecast, music, seqclass, synthetic
from rnnlab.models import seq as seq_lib
from rnnlab.train import loop, writers
from rnnlab.train.optim import make_optimizer

EVAL_STEP0 = 10**9  # evaluation batches are drawn at steps EVAL_STEP0 + i: never a training step
TEST_STEP0 = 3 * 10**9  # the final test batches (a stream apart from validation's, for model selection)
PROBE_STEP = 2 * 10**9  # the batch that probes (reports) look at


class TaskSpec(NamedTuple):
    batch: Callable[[int, int, int], synthetic.Batch]  # (seed, step, batch_size) -> Batch (music: RollBatch)
    d_in: int
    d_out: int
    loss: str  # 'mse' | 'ce'
    readout: str  # 'last' | 'all'
    baseline: float  # the loss of the best memoryless predictor
    length: int  # T of every sequence
    split: Callable[[str], list] | None = None  # finite datasets: 'valid'/'test' -> the whole split's batches


def task_spec(task: ml_collections.ConfigDict) -> TaskSpec:
    """The task of a config's ``task`` section. ``task.length`` is T (for 'copy',
    the delay; T = delay + 2 * n_copy)."""
    if task.name == "adding":
        fn = functools.partial(synthetic.adding_problem, length=task.length)
        return TaskSpec(lambda s, i, b: fn(s, i, batch_size=b), 2, 1, "mse", "last",
                        synthetic.adding_baseline(), task.length)
    if task.name == "copy":
        fn = functools.partial(synthetic.copy_memory, delay=task.length, n_copy=task.n_copy, n_symbols=task.n_symbols)
        n_classes = task.n_symbols + 2
        return TaskSpec(lambda s, i, b: fn(s, i, batch_size=b), n_classes, n_classes, "ce", "all",
                        synthetic.copy_memory_baseline(task.length, task.n_copy, task.n_symbols),
                        task.length + 2 * task.n_copy)
    if task.name == "temporal_order":
        fn = functools.partial(synthetic.temporal_order, length=task.length)
        return TaskSpec(lambda s, i, b: fn(s, i, batch_size=b), len(synthetic.TEMPORAL_ORDER_SYMBOLS),
                        len(synthetic.TEMPORAL_ORDER_CLASSES), "ce", "last",
                        synthetic.temporal_order_baseline(), task.length)
    if task.name == "selective_copy":  # task.length: the region holding the n_copy symbols; T = length + n_copy
        fn = functools.partial(synthetic.selective_copy, length=task.length, n_copy=task.n_copy,
                               n_symbols=task.n_symbols)
        return TaskSpec(lambda s, i, b: fn(s, i, batch_size=b), task.n_symbols + 2, task.n_symbols, "ce", "all",
                        synthetic.selective_copy_baseline(task.n_symbols), task.length + task.n_copy)
    if task.name == "mqar":  # task.length: the number of key-value pairs; T = 3 * length
        fn = functools.partial(synthetic.mqar, n_pairs=task.length, n_symbols=task.n_symbols)
        return TaskSpec(lambda s, i, b: fn(s, i, batch_size=b), 2 * task.n_symbols, task.n_symbols, "ce", "all",
                        synthetic.mqar_baseline(task.n_symbols), 3 * task.length)
    if task.name in ("digits", "permuted_digits"):  # sklearn's 8x8 digits; task.length 64: pixel by pixel, 8: row
        # by row; permuted_digits: pixel by pixel in one fixed permutation (task.length 64)
        if task.name == "permuted_digits" and task.length != 64:
            raise ValueError(f"permuted_digits reads the 64 pixels one by one: task.length must be 64, got {task.length}")
        order = "permuted" if task.name == "permuted_digits" else digits.order_for_length(task.length)
        return TaskSpec(lambda s, i, b: digits.digits_batch(s, i, batch_size=b, order=order),
                        64 // task.length, digits.N_CLASSES, "ce", "last", digits.digits_baseline(), task.length,
                        split=lambda split: [digits.digits_split(split, order=order)])
    if task.name in seqclass.DATASETS:  # sequence classification sets shipped in packages (task.length unused)
        name = task.name
        return TaskSpec(lambda s, i, b: seqclass.batch(name, s, i, batch_size=b), seqclass.n_features(name),
                        seqclass.n_classes(name), "ce", "all", seqclass.baseline(name), seqclass.max_length(name),
                        split=lambda split: [seqclass.split(name, split)])
    if task.name in forecast.SERIES:  # the next H values at the last step (task.length unused: the series' window)
        name, spec = task.name, forecast.SPECS[task.name]
        no_change = forecast.windows(name, "valid").targets_BxH  # the naive 'no change' forecast's MSE
        return TaskSpec(lambda s, i, b: _vector_batch(forecast.batch(name, s, i, batch_size=b)), 1, spec["horizon"],
                        "mse", "last", float(np.mean(no_change ** 2)), spec["window"],
                        split=lambda split: [_vector_batch(forecast.windows(name, split))])
    if task.name == "music":  # Bach chorales as piano rolls (data.music); task.length: training window, 0: whole pieces
        max_len = task.length or None
        length = task.length or max(len(r) for r in music.load_split("train")) - 1
        return TaskSpec(lambda s, i, b: music.batch(s, i, b, max_len), music.N_PITCHES, music.N_PITCHES, "bce",
                        "all", music.marginal_nll(), length,
                        split=lambda split: music.split_batches(split, task.eval_batch_size))
    raise ValueError(f"task.name must be one of {sorted([*synthetic.TASKS, *seqclass.DATASETS, *forecast.SERIES, 'digits', 'permuted_digits', 'music'])}, "
                     f"got {task.name!r}")


SEQCLASS_IO = {"mnist1d": (1, 10), "japanese_vowels": (12, 9)}  # (d_in, classes); tests check them against the data


class VectorBatch(NamedTuple):
    """A batch whose target at a step is a vector (forecasting: the next H values at the last step)."""
    xs_TxBxD: np.ndarray
    targets_TxBxD: np.ndarray
    mask_TxB: np.ndarray


def _vector_batch(w: forecast.Windows) -> VectorBatch:
    t, b = w.xs_TxBxD.shape[:2]
    targets = np.zeros((t, *w.targets_BxH.shape), np.float32)
    targets[-1] = w.targets_BxH
    mask = np.zeros((t, b), np.float32)
    mask[-1] = 1.0
    return VectorBatch(w.xs_TxBxD, targets, mask)


def forecast_scores(model: seq_lib.SeqModel, params, name: str, region: str) -> dict:
    """MASE and sMAPE (``data.forecast.score``) of the model's forecasts from every origin of ``region``."""
    w = forecast.windows(name, region)
    z = np.asarray(model.apply(params, jnp.asarray(w.xs_TxBxD))[-1], np.float64)
    return forecast.score(name, region, forecast.unscale(name, z, w.level_B))


def model_io(task: ml_collections.ConfigDict) -> tuple[int, int, str, str]:
    """(d_in, d_out, loss, readout) of a task, without reading its data (parameter counts, dry runs)."""
    if task.name == "music":
        return music.N_PITCHES, music.N_PITCHES, "bce", "all"
    if task.name in SEQCLASS_IO:  # known sizes: no need to build the data set
        return (*SEQCLASS_IO[task.name], "ce", "all")
    if task.name in forecast.SERIES:
        return 1, forecast.SPECS[task.name]["horizon"], "mse", "last"
    spec = task_spec(task)
    return spec.d_in, spec.d_out, spec.loss, spec.readout


def build_model(config: ml_collections.ConfigDict) -> seq_lib.SeqModel:
    """The model of ``config`` alone (``build`` adds the task's data)."""
    d_in, d_out, loss, readout = model_io(config.task)
    return seq_lib.build(config.model, d_in, d_out, loss=loss, readout=readout)


def build(config: ml_collections.ConfigDict) -> tuple[seq_lib.SeqModel, TaskSpec]:
    return build_model(config), task_spec(config.task)


def probe_batch(config: ml_collections.ConfigDict, batch_size: int) -> synthetic.Batch:
    """The fixed batch probes look at: pure in (seed, PROBE_STEP), never trained on."""
    return task_spec(config.task).batch(config.seed, PROBE_STEP, batch_size)


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(2,))
def train_step(model: seq_lib.SeqModel, tx: optax.GradientTransformation, state: dict, batch: dict, lr):
    """One update. ``tx`` clips by global norm first when optim.clip_norm > 0
    (Pascanu et al. 2013, Alg. 1); ``grad_norm`` is logged before clipping."""

    def loss_fn(params):
        return model.loss_and_metrics(params, batch["xs"], batch["targets"], batch["mask"])

    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    direction, opt_state = tx.update(grads, state["opt_state"], state["params"])
    updates = jax.tree.map(lambda d: -lr * d, direction)
    params = optax.apply_updates(state["params"], updates)
    metrics = {
        **{k: v for k, v in aux.items() if k != "count"},
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(params),
        "update_norm": optax.tree.norm(updates),
    }
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics


@functools.partial(jax.jit, static_argnums=(0,))
def eval_step(model: seq_lib.SeqModel, params, batch: dict) -> dict:
    _, m = model.loss_and_metrics(params, batch["xs"], batch["targets"], batch["mask"])
    return m


def device_batch(b) -> dict:
    """A Batch (targets T x B) or a music RollBatch (targets T x B x 88) as the step's dict."""
    targets = b.targets_TxBxD if hasattr(b, "targets_TxBxD") else b.targets_TxB
    return {"xs": b.xs_TxBxD, "targets": targets, "mask": b.mask_TxB}


def evaluate(model: seq_lib.SeqModel, params, config: ml_collections.ConfigDict, spec: TaskSpec,
             split: str = "valid") -> dict:
    """Mean loss (and accuracy) over ``task.eval_batches`` fresh batches (drawn
    from the stream at EVAL_STEP0 for 'valid', TEST_STEP0 for 'test'; a finite
    dataset's whole split instead), next to the baseline and the loss of the
    memoryless predictor on the same batches."""
    t = config.task
    total = {"loss": 0.0, "accuracy": 0.0, "count": 0.0, "memoryless": 0.0}
    step0 = {"valid": EVAL_STEP0, "test": TEST_STEP0}[split]
    batches = (spec.split(split) if spec.split is not None else
               (spec.batch(config.seed, step0 + i, t.eval_batch_size) for i in range(t.eval_batches)))
    for b in batches:
        m = {k: float(v) for k, v in eval_step(model, params, device_batch(b)).items()}
        total["loss"] += m["loss"] * m["count"]
        total["accuracy"] += m.get("accuracy", 0.0) * m["count"]
        total["count"] += m["count"]
        if spec.loss == "mse" and hasattr(b, "targets_TxB"):  # the memoryless predictor: the mean, 1 (adding)
            total["memoryless"] += float(np.sum(b.mask_TxB * (b.targets_TxB - 1.0) ** 2))
    n = max(total["count"], 1.0)
    out = {"loss": total["loss"] / n, "baseline": spec.baseline}
    out["loss_over_baseline"] = out["loss"] / spec.baseline
    if spec.loss == "ce":
        out["accuracy"] = total["accuracy"] / n
    elif spec.loss == "mse" and t.name in forecast.SERIES:
        out.update(forecast_scores(model, params, t.name, split))
    elif spec.loss == "mse":
        out["memoryless_loss"] = total["memoryless"] / n
    return out


def make_task(config: ml_collections.ConfigDict, workdir: str) -> loop.Task:
    """The sequence task of ``config`` (see the module docstring)."""
    model, spec = build(config)
    tx = make_optimizer(config.optim)
    params = model.init(jax.random.key(config.seed))
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.asarray(0, jnp.int32)}
    if config.train.num_epochs:
        raise ValueError("train.num_epochs: sequence tasks have no epochs; set train.num_steps")

    def finish(state: dict, step: int, ev: dict, best: dict | None) -> dict:
        # held out from model selection; with early stopping, the best validation checkpoint's
        test = evaluate(model, (best if best is not None else state)["params"], config, spec, "test")
        evals = writers.read_metrics(workdir, "eval")
        target = spec.baseline / 10
        return {**{f"eval_{k}": v for k, v in ev.items()},
                **{f"test_{k}": v for k, v in test.items() if k in ("loss", "accuracy", "mase", "smape")},
                "solved": ev["loss"] < target,  # a tenth of the baseline (Arjovsky et al. 2016's bar for adding)
                "first_solved_step": next((r["step"] for r in evals if r["loss"] < target), None),
                "best_eval_loss": min(r["loss"] for r in evals)}

    cell, b = model.stack.cell, config.task.batch_size
    return loop.Task(
        name=f"task {config.task.name}", state=state,
        train_step=lambda s, batch, lr: train_step(model, tx, s, batch, lr),
        batch=lambda i: device_batch(spec.batch(config.seed, i, b)),
        evaluate=lambda s, step: evaluate(model, s["params"], config, spec), finish=finish,
        total_steps=config.train.num_steps, baseline=spec.baseline, keep_best=config.train.early_stop_evals > 0,
        banner=(f"T={spec.length} (baseline {spec.baseline:.4g}); model {model.stack.num_layers}x{model.stack.d_h} "
                f"{cell.name}{dict(cell.options) or ''}"
                f"{f', recurrent radius {model.recurrent_radius}' if model.recurrent_radius else ''}"),
        batch_size=b, units=lambda _: b * spec.length, batch_axis=1,
        describe_eval=lambda ev: (f": loss {ev['loss']:.4g} (baseline {ev['baseline']:.4g}, "
                                  f"ratio {ev['loss_over_baseline']:.3g})"))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """``loop.run`` of this task (the function tests and notebooks call)."""
    return loop.run(config, workdir, make_task)
