"""Long short-term memory (Hochreiter & Schmidhuber 1997, with the forget gate of
Gers et al. 2000), as torch.nn.LSTM and flax.linen.LSTMCell.

    i, f, g, o = split(x_t W_x + h_{t-1} W_h + b)      gate order i, f, g, o
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)

One bias (PyTorch's ``b_ih + b_hh``). The forget-gate bias starts at 1.0 by
default (Jozefowicz et al. 2015: it closes most of the LSTM-GRU gap); pass
``forget_bias=0.0`` for PyTorch/Flax behaviour.
Carry: (c_BxH, h_BxH), the Flax order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnlab.cells._common import (
    Array,
    Params,
    dense_precompute,
    init_dense,
    recurrent_input,
    split_gates,
)

N_GATES = 4


def init(
    key: Array,
    d_in: int,
    d_h: int,
    *,
    input_init: str = "lecun_normal",
    recurrent_init: str = "orthogonal",
    bias_init: str = "zeros",
    forget_bias: float = 1.0,
    dtype=jnp.float32,
) -> Params:
    params = init_dense(key, d_in, d_h, N_GATES, input_init=input_init, recurrent_init=recurrent_init,
                        bias_init=bias_init, dtype=dtype)
    params["b_G"] = params["b_G"].at[d_h : 2 * d_h].add(forget_bias)  # gate order i, f, g, o
    return params


def initial_carry(batch: int, d_h: int) -> tuple[Array, Array]:
    # two distinct buffers: a donated carry must not alias itself
    return (jnp.zeros((batch, d_h), jnp.float32), jnp.zeros((batch, d_h), jnp.float32))


precompute = dense_precompute


def step(
    params: Params, carry: tuple[Array, Array], xp_BxG: Array, h_mask_BxH: Array | None = None
) -> tuple[tuple[Array, Array], Array]:
    c, h = carry
    w_h = params["w_h_HxG"]
    gates = xp_BxG + recurrent_input(h, h_mask_BxH, w_h.dtype) @ w_h
    i, f, g, o = split_gates(gates, N_GATES)
    new_c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)  # float32 when c is
    new_h = jax.nn.sigmoid(o) * jnp.tanh(new_c)
    return (new_c.astype(c.dtype), new_h.astype(h.dtype)), new_h


# ----------------------------------------------------------------------------- fused layer
# rnnlab.fused: the backward loop carries only (dc, dh); W_h's gradient is one GEMM after it.

RECURRENT_PARAMS = ("w_h_HxG",)


def fused_forward(params: Params, carry_in, xp_BxG: Array, hm_BxH: Array):
    c, _ = carry_in
    w_h = params["w_h_HxG"]
    i, f, g, o = split_gates(xp_BxG + hm_BxH.astype(w_h.dtype) @ w_h, N_GATES)
    i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
    new_c = f * c + i * g
    tanh_c = jnp.tanh(new_c)
    new_h = o * tanh_c
    return (new_c, new_h), new_h, (i, f, g, o, tanh_c)


def fused_backward(params: Params, carry_in, acts, h_mask_BxH: Array, d_carry, dy_BxH: Array):
    c, _ = carry_in
    i, f, g, o, tanh_c = acts
    dc, dh = d_carry
    dh = dh + dy_BxH
    dc = dc + dh * o * (1.0 - tanh_c * tanh_c)
    d_gates = jnp.concatenate(  # d loss / d pre-activations, gate order i, f, g, o
        [dc * g * i * (1.0 - i), dc * c * f * (1.0 - f), dc * i * (1.0 - g * g), dh * tanh_c * o * (1.0 - o)],
        axis=-1)
    w_h = params["w_h_HxG"]
    dh_in = (d_gates.astype(w_h.dtype) @ w_h.T) * h_mask_BxH
    return (dc * f, dh_in.astype(dh.dtype)), d_gates, d_gates


def fused_param_grads(params: Params, hm_TxBxH: Array, dhw_TxBxG: Array) -> Params:
    from rnnlab.fused import weight_grad

    return {"w_h_HxG": weight_grad(hm_TxBxH, dhw_TxBxG).astype(params["w_h_HxG"].dtype)}
