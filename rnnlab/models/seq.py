"""Sequence model for synthetic long-range tasks, as pure functions:

    xs_TxBxD -> recurrent stack (any registered cell) -> linear readout
    y_t = h_t @ W + b, at every step ('all') or at the last step only ('last')

trained with a loss mask: mean squared error for regression (the adding
problem), cross-entropy for classification (copying memory, temporal order),
and for multi-label frames (piano rolls) the negative log-likelihood of
independent Bernoulli outputs summed over the labels ('bce').
A loss over a batch is ``sum(mask * loss_TxB) / sum(mask)``, the form of the
baselines in ``rnnlab.data.synthetic``.

``recurrent_radius`` rescales every recurrent matrix after the cell's own
initialiser (orthogonal, identity, ...) to a chosen spectral radius: the
knob that moves a tanh RNN between vanishing and exploding gradients (Pascanu
et al. 2013), without touching the cells.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from rnnlab import cells as cells_lib
from rnnlab import configs
from rnnlab.cells._common import Array, Params, initializer
from rnnlab.layers import Stack

LOSSES = ("mse", "ce", "bce")
READOUTS = ("all", "last")


def spectral_radius(w_HxH: Array) -> Array:
    """max |eigenvalue| (``jnp.linalg.eigvals``: CPU only, fine at init time)."""
    return jnp.max(jnp.abs(jnp.linalg.eigvals(w_HxH)))


def rescale_recurrent(stack_params: Params, radius: float, d_h: int) -> Params:
    """Scale each H x H gate block of every ``w_h_HxG`` in a Stack's params so its
    spectral radius is ``radius`` (an orthogonal or identity block has radius 1,
    so this multiplies it by ``radius``). LSTM/GRU: each gate's block separately."""

    def scale(path, w):
        if not any(getattr(k, "key", None) == "w_h_HxG" for k in path):
            return w
        blocks = jnp.split(w, w.shape[1] // d_h, axis=1)
        return jnp.concatenate([b * (radius / spectral_radius(b)).astype(w.dtype) for b in blocks], axis=1)

    return jax.tree_util.tree_map_with_path(scale, stack_params)


@dataclasses.dataclass(frozen=True)
class SeqModel:
    """A Stack and a linear readout. Hashable: a static argument of ``jax.jit``.

    Attributes:
      stack: the recurrent layers (forward direction; any registered cell).
      d_out: readout width: 1 for regression, the number of classes for 'ce'.
      loss: 'mse' (targets float, T x B, or T x B x O: the mean over O), 'ce' (targets int class ids, T x B) or 'bce'
        (targets 0/1 float, T x B x d_out: independent sigmoid outputs, summed over d_out).
      readout: 'all' reads out every step; 'last' only step T-1 (the mask's other
        steps must then be zero: last-step tasks).
      recurrent_radius: > 0: rescale each recurrent gate block to this spectral
        radius after init (0: keep the cell's initialiser).
    """

    stack: Stack
    d_out: int
    loss: str = "mse"
    readout: str = "all"
    recurrent_radius: float = 0.0

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")
        if self.stack.bidirectional:
            raise ValueError("SeqModel reads out causally; use a forward-only Stack")

    def init(self, key: Array) -> Params:
        k_stack, k_out = jax.random.split(key)
        stack_params = self.stack.init(k_stack)
        if self.recurrent_radius > 0:
            stack_params = rescale_recurrent(stack_params, self.recurrent_radius, self.stack.d_h)
        d_h = self.stack.d_out
        return {
            "stack": stack_params,
            "out_w_HxO": initializer("lecun_normal", d_h)(k_out, (d_h, self.d_out), jnp.float32),
            "out_b_O": jnp.zeros((self.d_out,), jnp.float32),
        }

    def apply(self, params: Params, xs_TxBxD: Array) -> Array:
        """Readout ys_TxBxO ('all') or ys_1xBxO ('last')."""
        hs_TxBxH, _ = self.stack.apply(params["stack"], xs_TxBxD)
        if self.readout == "last":
            hs_TxBxH = hs_TxBxH[-1:]
        ys = hs_TxBxH @ params["out_w_HxO"].astype(hs_TxBxH.dtype)
        return (ys if self.stack.compute_dtype is None else ys.astype(jnp.float32)) + params["out_b_O"]

    def per_step_loss(self, ys_TxBxO: Array, targets_TxB: Array) -> Array:
        if self.loss == "mse":  # targets T x B (one value), or T x B x O (a vector: the mean over O)
            if targets_TxB.ndim == ys_TxBxO.ndim:
                return jnp.mean((ys_TxBxO.astype(jnp.float32) - targets_TxB) ** 2, axis=-1)
            return (ys_TxBxO[..., 0].astype(jnp.float32) - targets_TxB) ** 2
        if self.loss == "bce":  # targets_TxBxO
            return optax.sigmoid_binary_cross_entropy(ys_TxBxO.astype(jnp.float32), targets_TxB).sum(-1)
        return optax.softmax_cross_entropy_with_integer_labels(ys_TxBxO.astype(jnp.float32), targets_TxB)

    def loss_and_metrics(
        self, params: Params, xs_TxBxD: Array, targets_TxB: Array, mask_TxB: Array
    ) -> tuple[Array, dict[str, Array]]:
        """(masked mean loss, {'loss', 'count', and for 'ce' 'accuracy'})."""
        ys_TxBxO = self.apply(params, xs_TxBxD)
        if self.readout == "last":
            targets_TxB, mask_TxB = targets_TxB[-1:], mask_TxB[-1:]
        mask_TxB = mask_TxB.astype(jnp.float32)
        count = jnp.maximum(jnp.sum(mask_TxB), 1.0)
        loss = jnp.sum(mask_TxB * self.per_step_loss(ys_TxBxO, targets_TxB)) / count
        metrics = {"loss": loss, "count": jnp.sum(mask_TxB)}
        if self.loss == "ce":
            correct_TxB = (jnp.argmax(ys_TxBxO, axis=-1) == targets_TxB).astype(jnp.float32)
            metrics["accuracy"] = jnp.sum(mask_TxB * correct_TxB) / count
        return loss, metrics


def build(model_cfg: Any, d_in: int, d_out: int, *, loss: str, readout: str) -> SeqModel:
    """A SeqModel from a config's ``model`` section (see experiments/gradient_flow.py)."""
    cell = cells_lib.get(model_cfg.cell, **configs.parse_options(model_cfg.cell_options))
    stack = Stack(cell, d_in, model_cfg.d_hidden, num_layers=model_cfg.num_layers, unroll=model_cfg.unroll,
                  compute_dtype=configs.compute_dtype(model_cfg.get("compute_dtype", "")))
    return SeqModel(stack, d_out, loss=loss, readout=readout, recurrent_radius=model_cfg.recurrent_radius)
