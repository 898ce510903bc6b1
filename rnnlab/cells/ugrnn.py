"""Update-gate RNN, UGRNN (Collins, Sohl-Dickstein & Sussillo 2017, "Capacity and
Trainability in Recurrent Neural Networks", §A.1; TensorFlow's UGRNNCell).

    c_t = tanh(x_t W_x[c] + h_{t-1} W_h[c] + b[c])              gate order c, g
    g_t = sigmoid(x_t W_x[g] + h_{t-1} W_h[g] + b[g])          b[g] starts at gate_bias = 1.0
    h_t = g_t * h_{t-1} + (1 - g_t) * c_t

A tanh RNN with one update gate: between the vanilla RNN and the GRU. The gate
bias of 1.0 (TF's ``forget_bias``) starts it remembering. Carry: h_BxH.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnlab.cells._common import Array, Params, dense_precompute, init_dense, recurrent_input, split_gates

N_GATES = 2


def init(
    key: Array, d_in: int, d_h: int, *, input_init: str = "lecun_normal", recurrent_init: str = "orthogonal",
    bias_init: str = "zeros", gate_bias: float = 1.0, dtype=jnp.float32,
) -> Params:
    params = init_dense(key, d_in, d_h, N_GATES, input_init=input_init, recurrent_init=recurrent_init,
                        bias_init=bias_init, dtype=dtype)
    params["b_G"] = params["b_G"].at[d_h:].add(gate_bias)
    return params


def initial_carry(batch: int, d_h: int) -> Array:
    return jnp.zeros((batch, d_h), jnp.float32)


precompute = dense_precompute


def step(
    params: Params, carry: Array, xp_BxG: Array, h_mask_BxH: Array | None = None
) -> tuple[Array, Array]:
    h = carry
    w_h = params["w_h_HxG"]
    c, g = split_gates(xp_BxG + recurrent_input(h, h_mask_BxH, w_h.dtype) @ w_h, N_GATES)
    g = jax.nn.sigmoid(g)
    new_h = g * h + (1.0 - g) * jnp.tanh(c)
    return new_h.astype(h.dtype), new_h
