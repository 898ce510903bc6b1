"""Coupled input-forget gate LSTM, CIFG (Greff et al. 2017, "LSTM: A Search Space
Odyssey", variant CIFG; the coupling of Cho et al. 2014's GRU applied to the LSTM).

    f, g, o = split(x_t W_x + h_{t-1} W_h + b)       gate order f, g, o
    c_t = sigmoid(f) * c_{t-1} + (1 - sigmoid(f)) * tanh(g)     (i = 1 - f)
    h_t = sigmoid(o) * tanh(c_t)

Three gate blocks instead of four (25% fewer weights than the LSTM). Forget-gate
bias 1.0 (Jozefowicz et al. 2015). Carry: (c_BxH, h_BxH).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnlab.cells._common import Array, Params, dense_precompute, init_dense, recurrent_input, split_gates

N_GATES = 3


def init(
    key: Array, d_in: int, d_h: int, *, input_init: str = "lecun_normal", recurrent_init: str = "orthogonal",
    bias_init: str = "zeros", forget_bias: float = 1.0, dtype=jnp.float32,
) -> Params:
    params = init_dense(key, d_in, d_h, N_GATES, input_init=input_init, recurrent_init=recurrent_init,
                        bias_init=bias_init, dtype=dtype)
    params["b_G"] = params["b_G"].at[:d_h].add(forget_bias)  # gate order f, g, o
    return params


def initial_carry(batch: int, d_h: int) -> tuple[Array, Array]:
    return (jnp.zeros((batch, d_h), jnp.float32), jnp.zeros((batch, d_h), jnp.float32))


precompute = dense_precompute


def step(
    params: Params, carry: tuple[Array, Array], xp_BxG: Array, h_mask_BxH: Array | None = None
) -> tuple[tuple[Array, Array], Array]:
    c, h = carry
    w_h = params["w_h_HxG"]
    f, g, o = split_gates(xp_BxG + recurrent_input(h, h_mask_BxH, w_h.dtype) @ w_h, N_GATES)
    f = jax.nn.sigmoid(f)
    new_c = f * c + (1.0 - f) * jnp.tanh(g)
    new_h = jax.nn.sigmoid(o) * jnp.tanh(new_c)
    return (new_c.astype(c.dtype), new_h.astype(h.dtype)), new_h


def output_of_carry(carry: tuple[Array, Array]) -> Array:
    """The output h (the probes' view of the state): the carry's second part."""
    return carry[1]
