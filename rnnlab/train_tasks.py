"""Training loop for the synthetic long-range tasks (adding, copying memory,
temporal order) with a ``models.seq.SeqModel``: a fork of ``train.py``'s loop
for tasks whose batches are generated, not read.

    workdir/config.json, command.txt   written at start (refused on resume if changed)
    workdir/checkpoints/<step>/        periodic, for resume (the latest ``keep_checkpoints``)
    workdir/snapshots/<step>/          at ``train.checkpoint_steps`` (e.g. '0,500,2000'):
                                       kept for good, read back by probes and reports
    workdir/metrics.jsonl              train (loss, grad/param/update norms), eval, summary
    workdir/result.json                the final summary, once the run has finished

Reproducibility: training batches are pure functions of (seed, step), evaluation
batches of (seed, EVAL_STEP0 + i); params, optimizer state and step are in the
checkpoint; the learning rate is a function of the step. So the same command
on the same workdir resumes from the latest periodic checkpoint and continues
bitwise on CPU. A non-finite loss or norm stops the run before anything is saved.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from rnnlab import parallel
from rnnlab.data import digits, synthetic
from rnnlab.models import seq as seq_lib
from rnnlab.train import NonFiniteError, check_and_write_config, make_optimizer, writers
from rnnlab.train import checkpoint as ckpt_lib

EVAL_STEP0 = 10**9  # evaluation batches are drawn at steps EVAL_STEP0 + i: never a training step
TEST_STEP0 = 3 * 10**9  # the final test batches (a stream apart from validation's, for model selection)
PROBE_STEP = 2 * 10**9  # the batch that probes (reports) look at
SCHEDULES = ("constant", "cosine")


# ----------------------------------------------------------------------------- tasks


class TaskSpec(NamedTuple):
    batch: Callable[[int, int, int], synthetic.Batch]  # (seed, step, batch_size) -> Batch
    d_in: int
    d_out: int
    loss: str  # 'mse' | 'ce'
    readout: str  # 'last' | 'all'
    baseline: float  # the loss of the best memoryless predictor
    length: int  # T of every sequence
    split: Callable[[str], synthetic.Batch] | None = None  # finite datasets: 'valid'/'test' -> the whole split


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
    if task.name == "digits":  # sklearn's 8x8 digits; task.length 64: pixel by pixel, 8: row by row
        order = digits.order_for_length(task.length)
        return TaskSpec(lambda s, i, b: digits.digits_batch(s, i, batch_size=b, order=order),
                        64 // task.length, digits.N_CLASSES, "ce", "last", digits.digits_baseline(), task.length,
                        split=functools.partial(digits.digits_split, order=order))
    raise ValueError(f"task.name must be one of {sorted([*synthetic.TASKS, 'digits'])}, got {task.name!r}")


def build(config: ml_collections.ConfigDict) -> tuple[seq_lib.SeqModel, TaskSpec]:
    spec = task_spec(config.task)
    return seq_lib.build(config.model, spec.d_in, spec.d_out, loss=spec.loss, readout=spec.readout), spec


def probe_batch(config: ml_collections.ConfigDict, batch_size: int) -> synthetic.Batch:
    """The fixed batch probes look at: pure in (seed, PROBE_STEP), never trained on."""
    return task_spec(config.task).batch(config.seed, PROBE_STEP, batch_size)


def checkpoint_steps(config: ml_collections.ConfigDict) -> list[int]:
    """``train.checkpoint_steps`` ('0,500,2000') as sorted ints within the run."""
    steps = {int(s) for s in config.train.checkpoint_steps.split(",") if s.strip()}
    return sorted(s for s in steps if 0 <= s <= config.train.num_steps)


# ----------------------------------------------------------------------------- steps


def learning_rate(optim: ml_collections.ConfigDict, step: int, total: int) -> float:
    """Host-side: a function of the step only, so a resumed run sees the same lr."""
    if optim.schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {optim.schedule!r}")
    if optim.schedule == "cosine":
        return optim.lr * 0.5 * (1 + math.cos(math.pi * min(step / max(total, 1), 1.0)))
    return float(optim.lr)


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(2,))
def train_step(model: seq_lib.SeqModel, tx: optax.GradientTransformation, state: dict, batch: dict, lr):
    """One update. ``tx`` clips by global norm first when optim.clip_norm > 0
    (Pascanu et al. 2013, Alg. 1: g <- g * threshold / ||g|| when ||g|| > threshold);
    ``grad_norm`` is logged before clipping."""

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


def _device_batch(b: synthetic.Batch) -> dict:
    return {"xs": b.xs_TxBxD, "targets": b.targets_TxB, "mask": b.mask_TxB}


def evaluate(model: seq_lib.SeqModel, params, config: ml_collections.ConfigDict, spec: TaskSpec,
             split: str = "valid") -> dict:
    """Mean loss (and accuracy) over ``task.eval_batches`` fresh batches (drawn
    from the stream at EVAL_STEP0 for 'valid', TEST_STEP0 for 'test'; a finite
    dataset's whole split instead), next to the baseline and the loss of the
    memoryless predictor on the same batches."""
    t = config.task
    total = {"loss": 0.0, "accuracy": 0.0, "count": 0.0, "memoryless": 0.0}
    step0 = {"valid": EVAL_STEP0, "test": TEST_STEP0}[split]
    batches = ([spec.split(split)] if spec.split is not None else
               (spec.batch(config.seed, step0 + i, t.eval_batch_size) for i in range(t.eval_batches)))
    for b in batches:
        m = {k: float(v) for k, v in eval_step(model, params, _device_batch(b)).items()}
        total["loss"] += m["loss"] * m["count"]
        total["accuracy"] += m.get("accuracy", 0.0) * m["count"]
        total["count"] += m["count"]
        if spec.loss == "mse":  # the memoryless predictor: the target's mean, 1 (adding)
            total["memoryless"] += float(np.sum(b.mask_TxB * (b.targets_TxB - 1.0) ** 2))
    n = max(total["count"], 1.0)
    out = {"loss": total["loss"] / n, "baseline": spec.baseline}
    out["loss_over_baseline"] = out["loss"] / spec.baseline
    if spec.loss == "ce":
        out["accuracy"] = total["accuracy"] / n
    else:
        out["memoryless_loss"] = total["memoryless"] / n
    return out


# ----------------------------------------------------------------------------- snapshots


def _snapshot_manager(workdir: str, async_save: bool) -> ocp.CheckpointManager:
    """Checkpoints at the chosen steps, never deleted (max_to_keep=None); the
    same layout as ``checkpoint.Checkpointer`` (state + meta), so
    ``checkpoint.load_params(workdir/snapshots/<step>, like)`` reads one."""
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "snapshots"),
        options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True, enable_async_checkpointing=async_save),
    )


def snapshot_steps(workdir: str) -> list[int]:
    d = os.path.join(workdir, "snapshots")
    return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def load_snapshot_params(workdir: str, step: int, like_params):
    """The params saved at ``step``, cast to ``like_params``' dtypes (a pytree of
    arrays or ShapeDtypeStructs of the same structure)."""
    with ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "snapshots")) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return jax.tree.map(lambda like, a: jnp.asarray(a, like.dtype), like_params, restored.state["params"])


# ----------------------------------------------------------------------------- loop


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train (or resume) the task model of ``config`` in ``workdir``; returns the
    final summary (also written to workdir/result.json once finished)."""
    t_start = time.time()
    check_and_write_config(config, workdir)
    # first: 'multihost' must initialize jax.distributed before any computation
    mesh = parallel.make_mesh(config.train.data_parallel, config.task.batch_size)
    result_path = os.path.join(workdir, "result.json")
    model, spec = build(config)
    total, tr = config.train.num_steps, config.train
    tx = make_optimizer(config.optim)
    params = model.init(jax.random.key(config.seed))
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.asarray(0, jnp.int32)}
    state = jax.tree.map(jnp.array, state)  # own every buffer: train_step donates them
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    state = parallel.replicate(mesh, state)  # params and optimizer state on every device

    checkpointer = ckpt_lib.Checkpointer(workdir, keep=tr.keep_checkpoints, async_save=tr.async_checkpoint)
    snapshots = _snapshot_manager(workdir, tr.async_checkpoint)
    restored = checkpointer.restore_latest(state)
    start, seconds_before = 0, 0.0
    if restored is not None:
        start, state, meta_in = restored
        seconds_before = meta_in.get("train_seconds", 0.0)
        print(f"resumed from step {start} in {workdir}", flush=True)
    writer = writers.MetricWriter(workdir, tensorboard=tr.tensorboard)
    writer.truncate_after(start)

    if start >= total and (summary := writers.read_finished_result(result_path)) is not None:
        checkpointer.close()
        snapshots.close()
        return summary

    cell = model.stack.cell
    print(f"task {config.task.name} T={spec.length} (baseline {spec.baseline:.4g}); model: "
          f"{model.stack.num_layers}x{model.stack.d_h} {cell.name}{dict(cell.options) or ''}"
          f"{f', recurrent radius {model.recurrent_radius}' if model.recurrent_radius else ''}, "
          f"{n_params:,} parameters; {config.optim.name} lr {config.optim.lr:g}, "
          f"clip {config.optim.clip_norm or 'off'}; {total} steps; {parallel.describe(mesh)}", flush=True)
    progress = writers.Progress(total, start)
    tokens_per_step = config.task.batch_size * spec.length
    snap_at = set(checkpoint_steps(config)) | {total}  # the chosen steps and the end of training
    ckpt_every = tr.checkpoint_every or total
    eval_every = tr.eval_every or total

    def host_copy(tree):  # the next step donates `state`: async saves must own their bytes
        return jax.tree.map(parallel.to_host, tree)

    def meta(step: int) -> dict:  # train_seconds: wall time over every session of this run
        return {"step": step, "train_seconds": seconds_before + time.time() - t_start}

    def snapshot(step: int) -> None:
        if step in snap_at and step not in snapshots.all_steps():
            args = ocp.args.Composite(state=ocp.args.StandardSave(host_copy(state)),
                                      meta=ocp.args.JsonSave(meta(step)))
            snapshots.save(step, args=args)

    def check(step: int, m: dict) -> dict:
        m = {k: float(v) for k, v in m.items()}
        # the loss is of the params before the update; param_norm is of the state we would save
        if not all(math.isfinite(m[k]) for k in ("loss", "grad_norm", "param_norm")):
            checkpointer.wait()
            snapshots.wait_until_finished()
            raise NonFiniteError(
                f"non-finite training loss at step {step} (loss={m['loss']}, grad_norm={m['grad_norm']}, "
                f"param_norm={m['param_norm']}); stopped without saving: the checkpoints in {workdir} "
                "are from before it. Lower optim.lr or set optim.clip_norm."
            )
        return m

    def eval_and_log(step: int) -> dict:
        ev = evaluate(model, state["params"], config, spec)
        writer.write(step, ev, kind="eval")
        print(f"eval at step {step}: loss {ev['loss']:.4g} (baseline {ev['baseline']:.4g}, "
              f"ratio {ev['loss_over_baseline']:.3g})", flush=True)
        return ev

    if start == 0:
        snapshot(0)
    pending = None  # (step, device metrics): fetched after the next step is dispatched
    deadline = t_start + 60 * tr.max_minutes if tr.max_minutes else None
    step, ev = start, None
    while step < total:
        lr = learning_rate(config.optim, step, total)
        batch = parallel.shard_batch(mesh, _device_batch(spec.batch(config.seed, step, config.task.batch_size)), 1)
        state, dev_metrics = train_step(model, tx, state, batch, jnp.float32(lr))
        if pending is not None:  # host sync on the previous step only: keeps the device busy
            _log(writer, progress, check(*pending), pending[0], start, config, tokens_per_step)
        step += 1
        pending = (step, dev_metrics)
        last = step == total or (deadline is not None and time.time() > deadline)
        evaluating, snapping, saving = step % eval_every == 0 or last, step in snap_at, step % ckpt_every == 0 or last
        if evaluating or snapping or saving:  # host sync now: nothing is saved before its check
            _log(writer, progress, check(*pending), step, start, config, tokens_per_step)
            pending = None
        if evaluating:
            ev = eval_and_log(step)
        if snapping:
            snapshot(step)
        if saving:
            checkpointer.save(step, host_copy(state), meta(step))
        if last:
            break
    checkpointer.wait()
    snapshots.wait_until_finished()

    if ev is None:  # resumed at (or past) the end without a result: evaluate what is there
        ev = eval_and_log(step)
    finished = step >= total
    test = evaluate(model, state["params"], config, spec, "test")  # held out from model selection
    evals = writers.read_metrics(workdir, "eval")
    target = spec.baseline / 10
    summary = {
        "step": step, "finished": finished, "parameters": n_params,
        "train_seconds": seconds_before + time.time() - t_start,
        **{f"eval_{k}": v for k, v in ev.items()},
        **{f"test_{k}": v for k, v in test.items() if k in ("loss", "accuracy")},
        "solved": ev["loss"] < target,  # a tenth of the baseline (Arjovsky et al. 2016's bar for adding)
        "first_solved_step": next((r["step"] for r in evals if r["loss"] < target), None),
        "best_eval_loss": min(r["loss"] for r in evals),
    }
    writer.write(step, {k: v for k, v in summary.items() if isinstance(v, (int, float))}, kind="summary")
    writer.close()
    checkpointer.close()
    snapshots.close()
    print("summary: " + json.dumps(summary), flush=True)
    if finished:
        writers.write_json_atomic(result_path, summary)
    return summary


def _log(writer, progress, m: dict, step: int, start: int, config, tokens_per_step: int) -> None:
    """Write the metrics of the update that produced ``step`` when it is due."""
    if step % config.train.log_every and step != start + 1 and step != config.train.num_steps:
        return
    clip = config.optim.clip_norm
    lr = learning_rate(config.optim, step - 1, config.train.num_steps)
    m.update(lr=lr, clipped=float(clip > 0 and m["grad_norm"] > clip))
    writer.write(step, m)
    progress.line(step, {"loss": m["loss"], "grad_norm": m["grad_norm"]}, tokens_per_step)
