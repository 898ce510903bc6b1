"""Shared vocabulary for cells: the shape legend, type aliases, initialisers.

Shape legend (names carry shapes, e.g. ``h_BxH``, ``xs_TxBxD``):
  T  time steps          B  batch            D  input features
  H  hidden units        G  gate pre-activations (n_gates * H)
  L  layers              V  vocabulary size

Conventions fixed for every cell in this package (tested against PyTorch/Flax):
  * time-major sequences: ``xs_TxBxD``;
  * weights are stored input-major (``w_x_DxG``, ``w_h_HxG``: ``x @ w``), the
    transpose of PyTorch's ``weight_ih`` / ``weight_hh``;
  * gate blocks inside G follow PyTorch's order (LSTM i,f,g,o; GRU r,z,n);
  * biases that enter a sum linearly are merged into one (PyTorch's
    ``b_ih + b_hh``); a bias that a gate multiplies stays separate (GRU ``b_hn``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Params = Any  # a pytree (dict) of arrays
Carry = Any  # an array or a tuple of arrays, each B x H, float32
Initializer = Callable[[Array, tuple, Any], Array]  # (key, shape, dtype) -> array

INITIALIZERS = (
    "orthogonal", "lecun_normal", "glorot_uniform", "glorot_normal", "pytorch",
    "identity", "zeros", "uniform:<scale>", "normal:<stddev>",
)


def initializer(name: str, d_h: int) -> Initializer:
    """An initialiser by name.

    ``pytorch`` is U(-1/sqrt(H), 1/sqrt(H)) as in torch.nn.RNN/LSTM/GRU;
    ``identity`` is the IRNN init (Le et al. 2015); ``uniform:0.1`` is
    U(-0.1, 0.1) (Zaremba et al. 2014); ``normal:0.01`` is N(0, 0.01^2).
    """
    nn_init = jax.nn.initializers
    if name == "orthogonal":
        return nn_init.orthogonal()
    if name == "lecun_normal":
        return nn_init.lecun_normal()
    if name == "glorot_uniform":
        return nn_init.glorot_uniform()
    if name == "glorot_normal":
        return nn_init.glorot_normal()
    if name == "zeros":
        return nn_init.zeros
    if name == "pytorch":
        return _uniform(1.0 / math.sqrt(d_h))
    if name == "identity":
        return lambda key, shape, dtype=jnp.float32: jnp.eye(*shape, dtype=dtype)
    if name.startswith("uniform:"):
        return _uniform(float(name.split(":", 1)[1]))
    if name.startswith("normal:"):
        return nn_init.normal(float(name.split(":", 1)[1]))
    raise ValueError(f"unknown initializer {name!r}; expected one of {INITIALIZERS}")


def _uniform(scale: float) -> Initializer:
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


def init_gate_blocks(
    key: Array, name: str, d_rows: int, d_h: int, n_gates: int, dtype=jnp.float32
) -> Array:
    """A ``d_rows x (n_gates*d_h)`` matrix initialised one H-wide gate block at a
    time, so ``orthogonal`` makes each gate's recurrent matrix orthogonal (as
    Flax and Keras do) rather than the fused rectangle."""
    init = initializer(name, d_h)
    keys = jax.random.split(key, n_gates)
    return jnp.concatenate([init(k, (d_rows, d_h), dtype) for k in keys], axis=1)


def init_dense(
    key: Array, d_in: int, d_h: int, n_gates: int, *, input_init: str, recurrent_init: str,
    bias_init: str, dtype=jnp.float32,
) -> dict[str, Array]:
    """The parameters every dense-gated cell has: ``w_x_DxG``, ``w_h_HxG``, ``b_G``
    (G = n_gates * H), each initialised gate block by gate block."""
    kx, kh, kb = jax.random.split(key, 3)
    return {
        "w_x_DxG": init_gate_blocks(kx, input_init, d_in, d_h, n_gates, dtype),
        "w_h_HxG": init_gate_blocks(kh, recurrent_init, d_h, d_h, n_gates, dtype),
        "b_G": initializer(bias_init, d_h)(kb, (n_gates * d_h,), dtype),
    }


def chrono_bias(key: Array, d_h: int, t_max: int, dtype, cell: str) -> Array:
    """Chrono initialisation (Tallec & Ollivier 2018, eq. 13): log(u), u ~ U(1, t_max - 1)
    per unit, the bias of the gate that keeps the state (LSTM forget, GRU keep), so the
    units' memory times spread over 2 .. t_max steps. Drawn from its own stream of
    ``key``: the weights stay those of the same key without chrono."""
    if t_max <= 2:
        raise ValueError(f"{cell} chrono={t_max}: give the longest dependency to expect, T_MAX > 2 steps")
    u = jax.random.uniform(jax.random.fold_in(key, 0x6368726F), (d_h,), jnp.float32, 1.0, t_max - 1.0)
    return jnp.log(u).astype(dtype)


def split_gates(g_BxG: Array, n_gates: int) -> list[Array]:
    """Split gate pre-activations into ``n_gates`` blocks of H along the last axis."""
    return jnp.split(g_BxG, n_gates, axis=-1)


def recurrent_input(h_BxH: Array, h_mask_BxH: Array | None, w_dtype) -> Array:
    """h as it enters the recurrent matmul: masked by the per-sequence recurrent
    dropout mask (Gal & Ghahramani 2016) when one is given, cast to the weights'
    dtype (bfloat16 compute keeps a float32 carry)."""
    if h_mask_BxH is not None:
        h_BxH = h_BxH * h_mask_BxH
    return h_BxH.astype(w_dtype)


def dense_precompute(params: Params, x_TxBxD: Array) -> Array:
    """x @ W_x + b for every time step as ONE matmul: parallel in time, hoisted
    out of the sequential loop."""
    w = params["w_x_DxG"]
    return jnp.einsum("tbd,dg->tbg", x_TxBxD.astype(w.dtype), w) + params["b_G"]
