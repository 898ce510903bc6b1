"""Training engine: optimizer, learning-rate schedules, the pure jitted train
and eval steps, and the plain training loop for language models.

The loop is a function, not a framework: a study that needs another loop forks
``train_and_evaluate``. Reproducibility: batches and dropout keys are pure
functions of (seed, step); everything else (params, optimizer state, TBPTT
carries, schedule state) is in the checkpoint, so a resumed run continues
bitwise on CPU.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from rnnlab import parallel
from rnnlab.data import text as text_data
from rnnlab.models import lm as lm_lib
from rnnlab.train import checkpoint as ckpt_lib
from rnnlab.train import writers

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "zaremba", "plateau", "cosine")


class NonFiniteError(FloatingPointError):
    """The loss or gradient norm became NaN/Inf; the run stopped without saving."""


# ----------------------------------------------------------------------------- optimizer


def make_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The update direction; the learning rate is applied by ``train_step`` so a
    host-side schedule (e.g. divide by 4 on a validation plateau) can set it
    every step without recompiling. Clipping is by global norm (Pascanu et al. 2013)."""
    if optim.name not in OPTIMIZERS:
        raise ValueError(f"optim.name must be one of {OPTIMIZERS}, got {optim.name!r}")
    parts = [optax.clip_by_global_norm(optim.clip_norm)] if optim.clip_norm > 0 else []
    if optim.name == "sgd":
        if optim.momentum:
            parts.append(optax.trace(decay=optim.momentum, nesterov=False))
        if optim.weight_decay:
            parts.append(optax.add_decayed_weights(optim.weight_decay))
    else:
        parts.append(optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps))
        if optim.name == "adamw":
            parts.append(optax.add_decayed_weights(optim.weight_decay))
        elif optim.weight_decay:
            raise ValueError("optim.weight_decay: use optim.name='adamw' for decoupled decay with Adam")
    return optax.chain(*parts) if parts else optax.identity()


class LRSchedule:
    """Host-side learning rate. ``constant``; ``zaremba``: lr * decay^max(0, epoch+1-decay_start)
    (Zaremba et al. 2014: constant for decay_start epochs, then decayed every
    epoch); ``cosine`` to 0 over the run; ``plateau``: divide by ``plateau_factor``
    whenever a validation loss is not better than the best so far (PyTorch
    word_language_model). Its state is JSON, saved in every checkpoint."""

    def __init__(self, optim: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int):
        if optim.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {optim.schedule!r}")
        self.cfg, self.total, self.spe = optim, total_steps, steps_per_epoch
        self.state = {"lr": float(optim.lr), "best_val": None}

    def lr(self, step: int) -> float:
        c = self.cfg
        if c.schedule == "zaremba":
            epoch = step // self.spe
            return c.lr * c.decay_factor ** max(0, epoch + 1 - c.decay_start_epoch)
        if c.schedule == "cosine":
            return c.lr * 0.5 * (1 + math.cos(math.pi * min(step / max(self.total, 1), 1.0)))
        return self.state["lr"]

    def observe_validation(self, val_loss: float) -> bool:
        """Record a validation loss; returns True when it is the best so far."""
        best = self.state["best_val"]
        improved = best is None or val_loss < best
        if improved:
            self.state["best_val"] = val_loss
        elif self.cfg.schedule == "plateau":
            self.state["lr"] /= self.cfg.plateau_factor
        return improved


# ----------------------------------------------------------------------------- steps


def _tree_norm(tree) -> jax.Array:
    return optax.tree.norm(tree)


def _token_nll(logits_BxTxV, y_BxT):
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV.astype(jnp.float32), y_BxT)


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(2,))
def train_step(model: lm_lib.LM, tx: optax.GradientTransformation, state: dict, batch: dict, lr, seed: int):
    """One TBPTT window: carries in from the previous window (reset at an epoch
    start and at document starts), gradients through this window only."""
    carries = jax.tree.map(
        lambda init, c: jnp.where(batch["new_epoch"], init, c),
        model.initial_carries(batch["x"].shape[0]), state["carries"],
    )
    rng = jax.random.fold_in(jax.random.key(seed), state["step"])  # pure in (seed, step)

    def loss_fn(params):
        logits, new_carries = model.apply(params, batch["x"], carries, reset_BxT=batch["reset"], rng=rng, train=True)
        return jnp.mean(_token_nll(logits, batch["y"])), new_carries

    (loss, new_carries), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    direction, opt_state = tx.update(grads, state["opt_state"], state["params"])
    updates = jax.tree.map(lambda d: -lr * d, direction)
    params = optax.apply_updates(state["params"], updates)
    metrics = {
        "loss": loss,
        "grad_norm": _tree_norm(grads),
        "param_norm": _tree_norm(params),
        "update_norm": _tree_norm(updates),
    }
    new_state = {"params": params, "opt_state": opt_state, "carries": new_carries, "step": state["step"] + 1}
    return new_state, metrics


@functools.partial(jax.jit, static_argnums=(0,))
def eval_step(model: lm_lib.LM, params, carries, batch: dict):
    carries = jax.tree.map(
        lambda init, c: jnp.where(batch["new_epoch"], init, c), model.initial_carries(batch["x"].shape[0]), carries
    )
    logits, carries = model.apply(params, batch["x"], carries, reset_BxT=batch["reset"])
    nll = _token_nll(logits, batch["y"])
    mask = batch["mask"]
    return carries, jnp.sum(jnp.where(mask, nll, 0.0)), jnp.sum(mask)


def _device_batch(b: text_data.Batch) -> dict:
    return {"x": b.x_BxT, "y": b.y_BxT, "reset": b.reset_BxT, "mask": b.mask_BxT, "new_epoch": np.bool_(b.new_epoch)}


def evaluate(model: lm_lib.LM, params, split: text_data.EncodedSplit, batch_size: int, seq_len: int,
             drop_remainder: bool = False) -> float:
    """Mean next-token NLL (nats) over every target of a split, carries passed
    from window to window."""
    carries = model.initial_carries(batch_size)
    total, count = 0.0, 0
    for b in text_data.eval_batches(split.tokens_N, split.doc_start_N, batch_size=batch_size,
                                    seq_len=seq_len, drop_remainder=drop_remainder):
        carries, s, n = eval_step(model, params, carries, _device_batch(b))
        total += float(s)
        count += int(n)
    return total / max(count, 1)


def nll_metrics(nll: float, level: str) -> dict:
    """Perplexity for words; bits per character for characters (nats / ln 2)."""
    out = {"nll": nll}
    if level == "char":
        out["bpc"] = nll / math.log(2)
    out["ppl"] = math.exp(min(nll, 700))
    return out


# ----------------------------------------------------------------------------- setup


def load_data(config: ml_collections.ConfigDict, workdir: str) -> text_data.Corpus:
    d = config.data
    vocab_path = os.path.join(workdir, "vocab.json")
    saved_vocab = text_data.Vocab.load(vocab_path) if os.path.exists(vocab_path) else None
    splits = {k: v for k, v in (("train", d.train_split), ("valid", d.valid_split), ("test", d.test_split)) if v}
    corpus = text_data.load_corpus(
        d.source, level=d.level, cache_dir=os.path.expanduser(d.cache_dir) if d.cache_dir else None,
        order=d.vocab_order, max_size=d.vocab_size or None, min_count=d.min_count,
        vocab_splits=tuple(d.vocab_splits.split(",")), fractions=tuple(d.fractions),
        splits=splits or None, errors=d.errors, text_column=d.text_column,
        hf_config=d.hf_config or None,
    )
    if saved_vocab is not None:
        saved_vocab.check_same(corpus.vocab, context=f"the vocabulary saved in {workdir}")
    else:
        corpus.vocab.save(vocab_path)
    for split in ("train", "valid"):
        if len(corpus[split]) < 2:
            raise ValueError(f"data: the {split} split of {d.source!r} is empty; check data.source and the split settings")
    return corpus


# Keys that may change between a run and its resumption (they do not change
# what is computed up to the step where the run stopped).
# train.data_parallel: a requeued job may land on another number of devices (equal up to float rounding).
RESUMABLE_CHANGES = ("train.num_epochs", "train.num_steps", "train.log_every", "train.max_minutes",
                     "train.checkpoint_every", "train.data_parallel", "train.member_threads", "generate.",
                     "data.cache_dir", "eval.speaker_prior")  # speaker_prior: decoding only, never training


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_and_write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Write config.json and the command line; on resume, refuse a config that
    would compute something else than the run in this workdir."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    new = json.loads(config.to_json())
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        a, b = _flat(old), _flat(new)
        diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
                and not any(k.startswith(p) for p in RESUMABLE_CHANGES)]
        if diff:
            shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:6])
            raise ValueError(
                f"the config differs from the run in {workdir} ({shown}); resume with the same config, "
                "use a new --workdir, or warm-start a new run with --config.init_from=" + workdir
            )
    writers.write_json_atomic(path, new)
    with open(os.path.join(workdir, "command.txt"), "a") as f:
        f.write(" ".join(sys.argv) + "\n")


# ----------------------------------------------------------------------------- loop


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train (or resume) the language model of ``config`` in ``workdir``; returns the
    final summary (also written to workdir/result.json)."""
    t_start = time.time()
    check_and_write_config(config, workdir)
    # first: 'multihost' must initialize jax.distributed before any computation
    mesh = parallel.make_mesh(config.train.data_parallel, config.data.batch_size)
    result_path = os.path.join(workdir, "result.json")
    corpus = load_data(config, workdir)
    vocab, level = corpus.vocab, config.data.level
    model = lm_lib.build(config.model, len(vocab.itos))
    batcher = text_data.TBPTTBatcher(
        corpus["train"].tokens_N, corpus["train"].doc_start_N if config.data.doc_resets else None,
        batch_size=config.data.batch_size, seq_len=config.data.seq_len, seed=config.seed,
        random_offset=config.data.random_offset,
    )
    spe = batcher.steps_per_epoch
    total = config.train.num_steps or config.train.num_epochs * spe
    tx = make_optimizer(config.optim)
    schedule = LRSchedule(config.optim, total, spe)
    eval_every = config.train.eval_every or spe
    ckpt_every = config.train.checkpoint_every or eval_every

    params = model.init(jax.random.key(config.seed))
    if config.init_from:
        params = ckpt_lib.load_params(config.init_from, params)
        print(f"warm start: parameters from {config.init_from}", flush=True)
    state = {"params": params, "opt_state": tx.init(params),
             "carries": model.initial_carries(config.data.batch_size), "step": jnp.asarray(0, jnp.int32)}
    state = jax.tree.map(jnp.array, state)  # own every buffer: train_step donates them
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    carries = parallel.shard_batch(mesh, state.pop("carries"), 0)  # TBPTT carries: B x H leaves, split on B
    state = {**parallel.replicate(mesh, state), "carries": carries}

    checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.train.keep_checkpoints, async_save=config.train.async_checkpoint)
    restored = checkpointer.restore_latest(state)
    start = 0
    if restored is not None:
        start, state, meta = restored
        schedule.state = meta["schedule"]
        print(f"resumed from step {start} in {workdir}", flush=True)
    writer = writers.MetricWriter(workdir, tensorboard=config.train.tensorboard)
    writer.truncate_after(start)

    if start >= total and (summary := writers.read_finished_result(result_path)) is not None:
        checkpointer.close()
        return summary

    print(f"model: {model.stack.num_layers}x{model.stack.d_h} {model.stack.cell.name}, {n_params:,} parameters; "
          f"vocab {len(vocab.itos)} ({level}); train {len(corpus['train']):,} tokens, {spe} steps/epoch; "
          f"{total} steps; {parallel.describe(mesh)}", flush=True)
    progress = writers.Progress(total, start)
    tokens_per_step = config.data.batch_size * config.data.seq_len

    def host_copy(tree):  # the next step donates `state`: async saves must own their bytes
        return jax.tree.map(parallel.to_host, tree)

    def meta() -> dict:
        return {"schedule": schedule.state, "step": int(state["step"])}

    def check(step: int, m: dict) -> dict:
        m = {k: float(v) for k, v in m.items()}
        # the loss is of the params before the update; param_norm is of the state we would save
        if not all(math.isfinite(m[k]) for k in ("loss", "grad_norm", "param_norm")):
            checkpointer.wait()
            raise NonFiniteError(
                f"non-finite training loss at step {step} (loss={m['loss']}, grad_norm={m['grad_norm']}, "
                f"param_norm={m['param_norm']}); "
                f"stopped without saving: the checkpoints in {workdir} are from before it. "
                "Lower optim.lr or set optim.clip_norm."
            )
        return m

    pending = None  # (step, device metrics): fetched after the next step is dispatched
    deadline = t_start + 60 * config.train.max_minutes if config.train.max_minutes else None
    step = start
    while step < total:
        b = batcher.batch_at(step)
        lr = schedule.lr(step)
        batch = parallel.shard_batch(mesh, _device_batch(b), 0)
        state, dev_metrics = train_step(model, tx, state, batch, jnp.float32(lr), config.seed)
        if pending is not None:  # host sync on the previous step only: keeps the device busy
            m = check(*pending)
            if pending[0] % config.train.log_every == 0 or pending[0] == start + 1:
                m.update(lr=lr, epoch=pending[0] / spe)
                writer.write(pending[0], m)
                shown = {"loss": m["loss"], **({"bpc": m["loss"] / math.log(2)} if level == "char" else
                                                {"ppl": math.exp(min(m["loss"], 700))}), "lr": lr}
                progress.line(pending[0], shown, tokens_per_step)
        step += 1
        pending = (step, dev_metrics)
        last = step == total or (deadline is not None and time.time() > deadline)
        if step % eval_every == 0 or last:
            check(*pending)
            val = nll_metrics(evaluate(model, state["params"], corpus["valid"], config.data.eval_batch_size,
                                       config.data.seq_len), level)
            improved = schedule.observe_validation(val["nll"])
            writer.write(step, {**val, "lr": schedule.lr(step)}, kind="valid")
            print(f"validation at step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in val.items()) +
                  (" (best)" if improved else f" (best {schedule.state['best_val']:.4g}; lr -> {schedule.lr(step):.4g})"),
                  flush=True)
            if improved:
                checkpointer.save(step, host_copy(state), meta(), best=True)
        if step % ckpt_every == 0 or last:
            check(*pending)
            checkpointer.save(step, host_copy(state), meta())
        if last:
            break
    checkpointer.wait()

    finished = step >= total
    summary = {"step": step, "finished": finished, "parameters": n_params, "train_seconds": time.time() - t_start}
    best = checkpointer.restore_latest(state, from_best=True)
    eval_params = best[1]["params"] if best is not None else state["params"]
    for split in ("valid", "test"):
        if len(corpus[split]) >= 2:
            m = nll_metrics(evaluate(model, eval_params, corpus[split], config.data.eval_batch_size, config.data.seq_len), level)
            summary.update({f"{split}_{k}": v for k, v in m.items()})
    writer.write(step, {k: v for k, v in summary.items() if isinstance(v, (int, float))}, kind="summary")
    writer.close()
    checkpointer.close()
    print("summary: " + json.dumps(summary), flush=True)
    if finished:
        writers.write_json_atomic(result_path, summary)
    if config.generate.length > 0:
        _print_sample(config, model, eval_params, vocab)
    return summary


def _print_sample(config, model, params, vocab) -> None:
    from rnnlab import generate

    g = config.generate
    prompt = g.prompt or ("\n" if vocab.level == "char" else "<eos>")
    try:
        ids = generate.sample(model, params, vocab.encode(prompt), length=g.length,
                              temperature=g.temperature, top_k=g.top_k, seed=config.seed)[0]
    except ValueError as e:
        print(f"no sample: {e}", flush=True)
        return
    sep = "" if vocab.level == "char" else " "
    print(f"sample (temperature {g.temperature}):\n{prompt}{sep}{vocab.decode(ids)}", flush=True)
