"""Independently recurrent neural network, IndRNN (Li et al. 2018, "Independently
Recurrent Neural Network (IndRNN): Building A Longer and Deeper RNN", eq. 2).

    h_t = act(x_t W_x + u * h_{t-1} + b)        u: one recurrent weight per unit; act = relu (default) or tanh

Units are independent in time (the recurrent "matrix" is diagonal), so
dh_T/dh_t = prod u * act' per unit and |u| controls memory directly (the paper
keeps |u| <= 2^(1/T) for relu). ``u`` starts uniform in [0, recurrent_max]
(the paper's U(0, 1) for short tasks). Carry: h_BxH.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnlab.cells._common import Array, Params, dense_precompute, initializer

N_GATES = 1
_ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}
OPTION_CHOICES = {"nonlinearity": tuple(_ACTIVATIONS)}  # checked by cells.get


def init(
    key: Array, d_in: int, d_h: int, *, input_init: str = "lecun_normal", bias_init: str = "zeros",
    recurrent_max: float = 1.0, dtype=jnp.float32,
) -> Params:
    kx, ku, kb = jax.random.split(key, 3)
    return {
        "w_x_DxG": initializer(input_init, d_h)(kx, (d_in, d_h), dtype),
        "u_H": jax.random.uniform(ku, (d_h,), dtype, 0.0, recurrent_max),
        "b_G": initializer(bias_init, d_h)(kb, (d_h,), dtype),
    }


def initial_carry(batch: int, d_h: int) -> Array:
    return jnp.zeros((batch, d_h), jnp.float32)


precompute = dense_precompute


def step(
    params: Params, carry: Array, xp_BxG: Array, h_mask_BxH: Array | None = None, *, nonlinearity: str = "relu"
) -> tuple[Array, Array]:
    if nonlinearity not in _ACTIVATIONS:
        raise ValueError(f"nonlinearity must be one of {sorted(_ACTIVATIONS)}, got {nonlinearity!r}")
    h_in = carry if h_mask_BxH is None else carry * h_mask_BxH
    h = _ACTIVATIONS[nonlinearity](xp_BxG + params["u_H"] * h_in)
    return h.astype(carry.dtype), h
