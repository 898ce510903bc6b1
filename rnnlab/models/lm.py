"""Recurrent language model as pure functions:

    tokens -> embedding (+ embedding dropout) -> recurrent stack (any registered
    cell; locked/standard/recurrent dropout; optional weight-drop on W_h)
    -> dropout -> logits (optionally tied to the embedding, with a projection
    when the stack's output width differs from the embedding width)

Embedding dropout and weight-drop follow AWD-LSTM (Merity et al. 2017).
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import jax
import jax.numpy as jnp

from rnnlab import cells as cells_lib
from rnnlab import configs
from rnnlab.cells._common import Array, Params, initializer
from rnnlab.layers import Stack


@dataclasses.dataclass(frozen=True)
class LM:
    vocab_size: int
    d_embed: int
    stack: Stack
    tie: bool = False
    input_dropout: float = 0.0  # on the embeddings entering the stack
    output_dropout: float = 0.0  # on the stack output, before the softmax
    dropout_kind: str = "standard"  # of input/output dropout: 'standard' (PyTorch example) or 'variational'
    embed_dropout: float = 0.0  # drops whole words (rows of the embedding)
    weight_drop: float = 0.0  # DropConnect on each layer's recurrent matrix
    init_scale: float = 0.0  # >0: every weight U(-s, s) (Zaremba et al. 2014)

    def __post_init__(self):
        if self.weight_drop and "w_h_HxG" not in jax.eval_shape(
            lambda: self.stack.cell.init(jax.random.key(0), 1, 1)
        ):
            raise ValueError(f"weight_drop: cell {self.stack.cell.name!r} has no recurrent matrix w_h_HxG")
        if self.stack.d_in != self.d_embed:
            raise ValueError(f"stack.d_in={self.stack.d_in} must equal d_embed={self.d_embed}")

    @property
    def needs_projection(self) -> bool:
        return self.tie and self.stack.d_out != self.d_embed

    def init(self, key: Array) -> Params:
        k_emb, k_stack, k_out, k_proj, k_all = jax.random.split(key, 5)
        d_out = self.stack.d_out
        params = {
            "embed_VxE": initializer("uniform:0.1", 1)(k_emb, (self.vocab_size, self.d_embed), jnp.float32),
            "stack": self.stack.init(k_stack),
            "out_b_V": jnp.zeros((self.vocab_size,), jnp.float32),
        }
        if not self.tie:  # PyTorch word_language_model: decoder U(-0.1, 0.1), bias 0
            params["out_w_OxV"] = initializer("uniform:0.1", 1)(k_out, (d_out, self.vocab_size), jnp.float32)
        if self.needs_projection:
            params["proj_OxE"] = initializer("lecun_normal", 1)(k_proj, (d_out, self.d_embed), jnp.float32)
        if self.init_scale > 0:
            leaves, treedef = jax.tree.flatten(params)
            keys = jax.random.split(k_all, len(leaves))
            u = initializer(f"uniform:{self.init_scale}", 1)
            params = jax.tree.unflatten(treedef, [u(k, a.shape, a.dtype) for k, a in zip(keys, leaves, strict=True)])
        return params

    def initial_carries(self, batch: int) -> Params:
        return self.stack.initial_carries(batch)

    def apply(
        self,
        params: Params,
        tokens_BxT: Array,
        carries: Params,
        *,
        reset_BxT: Array | None = None,
        rng: Array | None = None,
        train: bool = False,
    ) -> tuple[Array, Params]:
        """Logits for the next token at every position, and the final carries."""
        key = lambda name: jax.random.fold_in(rng, zlib.crc32(name.encode()))
        emb = params["embed_VxE"]
        if train and self.embed_dropout:
            keep_V = jax.random.bernoulli(key("embed"), 1 - self.embed_dropout, (self.vocab_size, 1))
            emb = emb * keep_V / (1 - self.embed_dropout)
        x_TxBxE = jnp.take(emb, tokens_BxT.T, axis=0)
        if train and self.input_dropout:
            x_TxBxE = self._dropout(key("in"), self.input_dropout, x_TxBxE)
        stack_params = params["stack"]
        if train and self.weight_drop:
            stack_params = _weight_drop(stack_params, self.weight_drop, key("weight_drop"))
        reset_TxB = None if reset_BxT is None else reset_BxT.T
        ys_TxBxO, carries = self.stack.apply(
            stack_params, x_TxBxE, reset_TxB=reset_TxB, carries=carries,
            rng=None if rng is None else key("stack"), train=train,
        )
        if train and self.output_dropout:
            ys_TxBxO = self._dropout(key("out"), self.output_dropout, ys_TxBxO)
        return self.logits(params, jnp.swapaxes(ys_TxBxO, 0, 1)), carries

    def _dropout(self, key: Array, rate: float, x_TxBxD: Array) -> Array:
        """A new mask per element ('standard') or one per sequence ('variational')."""
        shape = x_TxBxD.shape if self.dropout_kind == "standard" else (1,) + x_TxBxD.shape[1:]
        keep = jax.random.bernoulli(key, 1 - rate, shape)
        return x_TxBxD * keep.astype(x_TxBxD.dtype) / (1 - rate)

    def logits(self, params: Params, ys_BxTxO: Array) -> Array:
        """float32 logits; with the stack's compute_dtype (bfloat16) the projections are
        computed in it from the float32 weights."""
        cd = self.stack.compute_dtype
        w = (lambda a: a) if cd is None else (lambda a: a.astype(cd))  # noqa: E731
        if cd is not None:
            ys_BxTxO = ys_BxTxO.astype(cd)
        if self.tie:
            if self.needs_projection:
                ys_BxTxO = ys_BxTxO @ w(params["proj_OxE"])
            out = ys_BxTxO @ w(params["embed_VxE"]).T
        else:
            out = ys_BxTxO @ w(params["out_w_OxV"])
        return (out if cd is None else out.astype(jnp.float32)) + params["out_b_V"]


def _weight_drop(stack_params: Params, rate: float, key: Array) -> Params:
    """DropConnect on every W_h: one mask per forward pass, shared by the batch and
    all time steps (Merity et al. 2017)."""

    def drop(path, w):
        if not any(getattr(k, "key", None) == "w_h_HxG" for k in path):
            return w
        k = jax.random.fold_in(key, zlib.crc32(jax.tree_util.keystr(path).encode()))
        return w * jax.random.bernoulli(k, 1 - rate, w.shape) / (1 - rate)

    return jax.tree_util.tree_map_with_path(drop, stack_params)


def build(model_cfg: Any, vocab_size: int) -> LM:
    """An LM from a config's ``model`` section (see experiments/language_modelling.py)."""
    cell = cells_lib.get(model_cfg.cell, **configs.parse_options(model_cfg.cell_options))
    stack = Stack(
        cell, model_cfg.d_embed, model_cfg.d_hidden, num_layers=model_cfg.num_layers,
        dropout=model_cfg.dropout, dropout_kind=model_cfg.dropout_kind,
        recurrent_dropout=model_cfg.recurrent_dropout, unroll=model_cfg.unroll, remat=model_cfg.remat,
        compute_dtype=configs.compute_dtype(model_cfg.get("compute_dtype", "")),
    )
    return LM(
        vocab_size, model_cfg.d_embed, stack, tie=model_cfg.tie, input_dropout=model_cfg.input_dropout,
        output_dropout=model_cfg.output_dropout, dropout_kind=model_cfg.dropout_kind,
        embed_dropout=model_cfg.embed_dropout, weight_drop=model_cfg.weight_drop,
        init_scale=model_cfg.init_scale,
    )
