"""Language modelling on the one loop: a recurrent LM (``models.lm``) on a
corpus (``data.text``), trained with truncated BPTT, validated in nats (bits per
character, perplexity), the best validation kept, tested at the end and sampled
from.

Config: ``experiments/language_modelling.py`` (trainer 'rnnlab.tasks.lm:make_task').
Batches are pure in (seed, step); the TBPTT carries are part of the state (reset at
an epoch's start and at document starts), so a resumed run continues bitwise.
"""

from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from rnnlab.data import text as text_data
from rnnlab.models import lm as lm_lib
from rnnlab.train import checkpoint as ckpt_lib
from rnnlab.train import loop
from rnnlab.train.optim import make_optimizer


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
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(params),
               "update_norm": optax.tree.norm(updates)}
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


def device_batch(b: text_data.Batch) -> dict:
    return {"x": b.x_BxT, "y": b.y_BxT, "reset": b.reset_BxT, "mask": b.mask_BxT, "new_epoch": np.bool_(b.new_epoch)}


def evaluate(model: lm_lib.LM, params, split: text_data.EncodedSplit, batch_size: int, seq_len: int,
             drop_remainder: bool = False) -> float:
    """Mean next-token NLL (nats) over every target of a split, carries passed
    from window to window."""
    carries = model.initial_carries(batch_size)
    total, count = 0.0, 0
    for b in text_data.eval_batches(split.tokens_S, split.doc_start_S, batch_size=batch_size,
                                    seq_len=seq_len, drop_remainder=drop_remainder):
        carries, s, n = eval_step(model, params, carries, device_batch(b))
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


def load_data(config: ml_collections.ConfigDict, workdir: str) -> text_data.Corpus:
    """The corpus of config.data; its vocabulary is saved in the workdir (and checked
    against the saved one on resume)."""
    d = config.data
    vocab_path = os.path.join(workdir, "vocab.json")
    saved_vocab = text_data.Vocab.load(vocab_path) if os.path.exists(vocab_path) else None
    splits = {k: v for k, v in (("train", d.train_split), ("valid", d.valid_split), ("test", d.test_split)) if v}
    corpus = text_data.load_corpus(
        d.source, level=d.level, cache_dir=os.path.expanduser(d.cache_dir) if d.cache_dir else None,
        order=d.vocab_order, max_size=d.vocab_size or None, min_count=d.min_count,
        vocab_splits=tuple(d.vocab_splits), fractions=tuple(d.fractions),
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


def make_task(config: ml_collections.ConfigDict, workdir: str) -> loop.Task:
    """The language-modelling task of ``config`` (see the module docstring)."""
    corpus = load_data(config, workdir)
    vocab, level, d = corpus.vocab, config.data.level, config.data
    model = lm_lib.build(config.model, len(vocab.itos))
    batcher = text_data.TBPTTBatcher(
        corpus["train"].tokens_S, corpus["train"].doc_start_S if d.doc_resets else None,
        batch_size=d.batch_size, seq_len=d.seq_len, seed=config.seed, random_offset=d.random_offset)
    spe = batcher.steps_per_epoch
    if not (config.train.num_steps or config.train.num_epochs):
        raise ValueError("train.num_steps and train.num_epochs are both 0: set one of them")
    tx = make_optimizer(config.optim)
    params = model.init(jax.random.key(config.seed))
    if config.init_from:
        params = ckpt_lib.load_params(config.init_from, params)
        print(f"warm start: parameters from {config.init_from}", flush=True)
    state = {"params": params, "opt_state": tx.init(params),
             "carries": model.initial_carries(d.batch_size), "step": jnp.asarray(0, jnp.int32)}

    def valid(state: dict, step: int) -> dict:
        nll = evaluate(model, state["params"], corpus["valid"], d.eval_batch_size, d.seq_len)
        return {"loss": nll, **nll_metrics(nll, level)}

    def finish(state: dict, step: int, last_eval: dict, best: dict | None) -> dict:
        params = (best or state)["params"]
        out = {}
        for split in ("valid", "test"):  # with the best validation's parameters
            if len(corpus[split]) >= 2:
                m = nll_metrics(evaluate(model, params, corpus[split], d.eval_batch_size, d.seq_len), level)
                out.update({f"{split}_{k}": v for k, v in m.items()})
        return out

    def shown(m: dict) -> dict:
        return {"bpc": m["loss"] / math.log(2)} if level == "char" else {"ppl": math.exp(min(m["loss"], 700))}

    return loop.Task(
        name="language model", state=state,
        train_step=lambda s, b, lr: train_step(model, tx, s, b, lr, config.seed),
        batch=lambda i: device_batch(batcher.batch_at(i)), evaluate=valid, finish=finish,
        total_steps=config.train.num_steps or config.train.num_epochs * spe,
        baseline=math.log(len(vocab.itos)),  # a uniform guess over the vocabulary
        banner=(f"{model.stack.num_layers}x{model.stack.d_h} {model.stack.cell.name}; vocab {len(vocab.itos)} "
                f"({level}); train {len(corpus['train']):,} tokens, {spe} steps/epoch"),
        batch_size=d.batch_size, units=lambda b: d.batch_size * d.seq_len, batch_axis=0,
        sharded_state=("carries",), steps_per_epoch=spe, eval_every=spe, eval_kind="valid",
        eval_label="validation", keep_best=True, shown=shown,
        describe_eval=lambda ev: ": " + ", ".join(f"{k} {ev[k]:.4g}" for k in ("nll", "bpc", "ppl") if k in ev),
        on_end=lambda state, summary: print_sample(config, model, state["params"], vocab))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """``loop.run`` of this task (the function tests and notebooks call)."""
    return loop.run(config, workdir, make_task)


def print_sample(config, model, params, vocab) -> None:
    """config.generate.length tokens sampled from the model (nothing when 0)."""
    from rnnlab import generate

    g = config.generate
    if g.length <= 0:
        return
    prompt = g.prompt or ("\n" if vocab.level == "char" else "<eos>")
    try:
        ids = generate.sample(model, params, vocab.encode(prompt), length=g.length,
                              temperature=g.temperature, top_k=g.top_k, seed=config.seed)[0]
    except ValueError as e:
        print(f"no sample: {e}", flush=True)
        return
    sep = "" if vocab.level == "char" else " "
    print(f"sample (temperature {g.temperature}):\n{prompt}{sep}{vocab.decode(ids)}", flush=True)
