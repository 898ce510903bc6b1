"""Minimal gated unit, MGU (Zhou et al. 2016, "Minimal Gated Unit for Recurrent
Neural Networks", eq. 8): a GRU whose one forget gate also plays the reset gate.

    f_t  = sigmoid(x_t W_x[f] + h_{t-1} W_h[f] + b[f])              gate order f, n
    h~_t = tanh(x_t W_x[n] + (f_t * h_{t-1}) W_h[n] + b[n])
    h_t  = (1 - f_t) * h_{t-1} + f_t * h~_t

Two gate blocks (two thirds of a GRU's weights). Carry: h_BxH.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnlab.cells._common import Array, Params, dense_precompute, init_dense, recurrent_input, split_gates

N_GATES = 2


def init(
    key: Array, d_in: int, d_h: int, *, input_init: str = "lecun_normal", recurrent_init: str = "orthogonal",
    bias_init: str = "zeros", dtype=jnp.float32,
) -> Params:
    return init_dense(key, d_in, d_h, N_GATES, input_init=input_init, recurrent_init=recurrent_init,
                      bias_init=bias_init, dtype=dtype)


def initial_carry(batch: int, d_h: int) -> Array:
    return jnp.zeros((batch, d_h), jnp.float32)


precompute = dense_precompute


def step(
    params: Params, carry: Array, xp_BxG: Array, h_mask_BxH: Array | None = None
) -> tuple[Array, Array]:
    h = carry
    w_h, d_h = params["w_h_HxG"], h.shape[-1]
    h_in = recurrent_input(h, h_mask_BxH, w_h.dtype)
    x_f, x_n = split_gates(xp_BxG, N_GATES)
    f = jax.nn.sigmoid(x_f + h_in @ w_h[:, :d_h])
    n = jnp.tanh(x_n + (f * h_in) @ w_h[:, d_h:])  # f gates h before the n matmul, as GRU reset-before
    new_h = (1.0 - f) * h + f * n
    return new_h.astype(h.dtype), new_h
