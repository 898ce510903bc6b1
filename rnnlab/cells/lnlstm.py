"""Layer-normalised LSTM (Ba, Kiros & Hinton 2016, "Layer Normalization", §3.1 and
eqs. 20-22).

    i, f, g, o = LN(x_t W_x; alpha_x) + LN(h_{t-1} W_h; alpha_h) + b      gate order i, f, g, o
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(LN(c_t; alpha_c, beta_c))

LN(z; alpha) = alpha * (z - mean(z)) / sqrt(var(z) + eps), each gate block
normalised on its own (as TensorFlow's LayerNormBasicLSTMCell; the paper
normalises the 4H vector). The two input LNs' biases are merged into b; gains
start at 1. The x part is normalised for all t at once in ``precompute``.
Forget-gate bias 1.0 as our LSTM. Carry: (c_BxH, h_BxH).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnlab.cells import lstm
from rnnlab.cells._common import Array, Params, recurrent_input, split_gates

N_GATES = 4
EPS = 1e-5  # LN variance floor


def init(
    key: Array, d_in: int, d_h: int, *, input_init: str = "lecun_normal", recurrent_init: str = "orthogonal",
    bias_init: str = "zeros", forget_bias: float = 1.0, dtype=jnp.float32,
) -> Params:
    params = lstm.init(key, d_in, d_h, input_init=input_init, recurrent_init=recurrent_init,
                       bias_init=bias_init, forget_bias=forget_bias, dtype=dtype)
    ones = lambda n: jnp.ones((n,), dtype)
    params.update(ln_x_G=ones(N_GATES * d_h), ln_h_G=ones(N_GATES * d_h), ln_c_H=ones(d_h),
                  ln_c_bias_H=jnp.zeros((d_h,), dtype))
    return params


initial_carry = lstm.initial_carry


def layer_norm(z: Array, n_blocks: int) -> Array:
    """Normalise each of ``n_blocks`` equal blocks of the last axis (no gain)."""
    blocks = z.reshape(*z.shape[:-1], n_blocks, z.shape[-1] // n_blocks)
    mean = blocks.mean(-1, keepdims=True)
    var = jnp.square(blocks - mean).mean(-1, keepdims=True)
    return ((blocks - mean) * jax.lax.rsqrt(var + EPS)).reshape(z.shape)


def precompute(params: Params, x_TxBxD: Array) -> Array:
    """LN(x W_x) * alpha_x + b for every step: parallel in time."""
    w = params["w_x_DxG"]
    xw = jnp.einsum("tbd,dg->tbg", x_TxBxD.astype(w.dtype), w)
    return layer_norm(xw, N_GATES) * params["ln_x_G"] + params["b_G"]


def step(
    params: Params, carry: tuple[Array, Array], xp_BxG: Array, h_mask_BxH: Array | None = None
) -> tuple[tuple[Array, Array], Array]:
    c, h = carry
    w_h = params["w_h_HxG"]
    hw = recurrent_input(h, h_mask_BxH, w_h.dtype) @ w_h
    i, f, g, o = split_gates(xp_BxG + layer_norm(hw, N_GATES) * params["ln_h_G"], N_GATES)
    new_c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    c_norm = layer_norm(new_c, 1) * params["ln_c_H"] + params["ln_c_bias_H"]
    new_h = jax.nn.sigmoid(o) * jnp.tanh(c_norm)
    return (new_c.astype(c.dtype), new_h.astype(h.dtype)), new_h


def output_of_carry(carry: tuple[Array, Array]) -> Array:
    """The output h (the probes' view of the state): the carry's second part."""
    return carry[1]
