"""Elman / vanilla RNN (Elman 1990), as torch.nn.RNN.

    h_t = act(x_t W_x + h_{t-1} W_h + b),   act = tanh (default) or relu

One bias: PyTorch's ``b_ih + b_hh`` (they only ever appear summed).
Carry: h_BxH.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnlab.cells._common import Array, Params, dense_precompute, init_dense, recurrent_input

N_GATES = 1
_ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}
OPTION_CHOICES = {"nonlinearity": tuple(_ACTIVATIONS)}  # checked by cells.get


def init(
    key: Array,
    d_in: int,
    d_h: int,
    *,
    input_init: str = "lecun_normal",
    recurrent_init: str = "orthogonal",
    bias_init: str = "zeros",
    dtype=jnp.float32,
) -> Params:
    return init_dense(key, d_in, d_h, N_GATES, input_init=input_init, recurrent_init=recurrent_init,
                      bias_init=bias_init, dtype=dtype)


def initial_carry(batch: int, d_h: int) -> Array:
    return jnp.zeros((batch, d_h), jnp.float32)


precompute = dense_precompute


def step(
    params: Params,
    carry: Array,
    xp_BxG: Array,
    h_mask_BxH: Array | None = None,
    *,
    nonlinearity: str = "tanh",
) -> tuple[Array, Array]:
    if nonlinearity not in _ACTIVATIONS:
        raise ValueError(f"nonlinearity must be one of {sorted(_ACTIVATIONS)}, got {nonlinearity!r}")
    w_h = params["w_h_HxG"]
    h_in = recurrent_input(carry, h_mask_BxH, w_h.dtype)
    h = _ACTIVATIONS[nonlinearity](xp_BxG + h_in @ w_h)
    return h.astype(carry.dtype), h


def gates(params: Params, carry: Array, xp_BxG: Array, *, nonlinearity: str = "tanh"):
    """The probes' view of the step from ``carry``: the new h (its activation's kind); no memory gate."""
    h = _ACTIVATIONS[nonlinearity](xp_BxG + carry @ params["w_h_HxG"])
    return {"h": ("tanh" if nonlinearity == "tanh" else "relu", h)}, None
