"""LSTM with peephole connections (Gers & Schmidhuber 2000, "Recurrent nets that
time and count"; the form of Graves 2013, eq. 7-11).

    i = sigmoid(x_t W_x[i] + h_{t-1} W_h[i] + p_i * c_{t-1} + b[i])    gate order i, f, g, o
    f = sigmoid(x_t W_x[f] + h_{t-1} W_h[f] + p_f * c_{t-1} + b[f])
    c_t = f * c_{t-1} + i * tanh(x_t W_x[g] + h_{t-1} W_h[g] + b[g])
    o = sigmoid(x_t W_x[o] + h_{t-1} W_h[o] + p_o * c_t + b[o])         (o peeks at the NEW cell)
    h_t = o * tanh(c_t)

Peepholes p_i, p_f, p_o are diagonal (one weight per unit), start at zero (a
plain LSTM at initialisation). Forget-gate bias 1.0 as our LSTM.
Carry: (c_BxH, h_BxH).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnlab.cells import lstm
from rnnlab.cells._common import Array, Params, dense_precompute, initializer, recurrent_input, split_gates

N_GATES = 4


def init(
    key: Array, d_in: int, d_h: int, *, input_init: str = "lecun_normal", recurrent_init: str = "orthogonal",
    bias_init: str = "zeros", forget_bias: float = 1.0, peephole_init: str = "zeros", dtype=jnp.float32,
) -> Params:
    k_lstm, k_p = jax.random.split(key)
    params = lstm.init(k_lstm, d_in, d_h, input_init=input_init, recurrent_init=recurrent_init,
                       bias_init=bias_init, forget_bias=forget_bias, dtype=dtype)
    params["p_3xH"] = initializer(peephole_init, d_h)(k_p, (3, d_h), dtype)  # rows: i, f, o
    return params


initial_carry = lstm.initial_carry
precompute = dense_precompute


def step(
    params: Params, carry: tuple[Array, Array], xp_BxG: Array, h_mask_BxH: Array | None = None
) -> tuple[tuple[Array, Array], Array]:
    c, h = carry
    w_h, p = params["w_h_HxG"], params["p_3xH"]
    i, f, g, o = split_gates(xp_BxG + recurrent_input(h, h_mask_BxH, w_h.dtype) @ w_h, N_GATES)
    new_c = jax.nn.sigmoid(f + p[1] * c) * c + jax.nn.sigmoid(i + p[0] * c) * jnp.tanh(g)
    new_h = jax.nn.sigmoid(o + p[2] * new_c) * jnp.tanh(new_c)
    return (new_c.astype(c.dtype), new_h.astype(h.dtype)), new_h


def output_of_carry(carry: tuple[Array, Array]) -> Array:
    """The output h (the probes' view of the state): the carry's second part."""
    return carry[1]
