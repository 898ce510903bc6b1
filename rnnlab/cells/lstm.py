"""Long short-term memory (Hochreiter & Schmidhuber 1997, with the forget gate of
Gers et al. 2000), as torch.nn.LSTM and flax.linen.LSTMCell.

    i, f, g, o = split(x_t W_x + h_{t-1} W_h + b)      gate order i, f, g, o
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)

One bias (PyTorch's ``b_ih + b_hh``). The forget-gate bias starts at 1.0 by
default (Jozefowicz et al. 2015: it closes most of the LSTM-GRU gap); pass
``forget_bias=0.0`` for PyTorch/Flax behaviour. ``chrono=T_MAX`` (> 2) uses the
chrono initialisation of Tallec & Ollivier 2018 (eq. 13) instead: per unit
b_f = log(u), u ~ U(1, T_MAX - 1), and b_i = -b_f, so the units' forgetting times
1/(1 - sigmoid(b_f)) spread over 2 .. T_MAX steps (in the gradient-flow study it
keeps ||dL/d(c,h)_t|| within one order of magnitude over 100 steps at
initialisation, which forget bias 1 does not).
Carry: (c_BxH, h_BxH), the Flax order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnlab.cells._common import (
    Array,
    Params,
    chrono_bias,
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
    chrono: int = 0,
    dtype=jnp.float32,
) -> Params:
    params = init_dense(key, d_in, d_h, N_GATES, input_init=input_init, recurrent_init=recurrent_init,
                        bias_init=bias_init, dtype=dtype)
    if chrono:
        b_f = chrono_bias(key, d_h, chrono, params["b_G"].dtype, "lstm")
        return {**params, "b_G": params["b_G"].at[:d_h].set(-b_f).at[d_h : 2 * d_h].set(b_f)}  # i, f, g, o
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


def gates(params: Params, carry: tuple[Array, Array], xp_BxG: Array):
    """The probes' view of the step from ``carry``: i, f, o (sigmoid), g and tanh(c_t) (tanh); f keeps memory."""
    c, h = carry
    i, f, g, o = split_gates(xp_BxG + h @ params["w_h_HxG"], N_GATES)
    i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
    return {"i": ("sigmoid", i), "f": ("sigmoid", f), "g": ("tanh", g), "o": ("sigmoid", o),
            "tanh_c": ("tanh", jnp.tanh(f * c + i * g))}, "f"


# ----------------------------------------------------------------------------- fused layer
# rnnlab.fused: the backward loop carries only (dc, dh); W_h's gradient is one GEMM after it.

RECURRENT_PARAMS = ("w_h_HxG",)


def _gate_affine(d_h: int, dtype):
    """Per-column constants so that ONE tanh gives all four gate activations:
    sigmoid(z) = 0.5 * tanh(0.5 * z) + 0.5 (i, f, o), tanh(z) (g): act = a * tanh(a * z) + c."""
    half, one = jnp.full((d_h,), 0.5, dtype), jnp.ones((d_h,), dtype)
    a = jnp.concatenate([half, half, one, half])
    return a, jnp.concatenate([half, half, jnp.zeros((d_h,), dtype), half])


def fused_forward(params: Params, carry_in, xp_BxG: Array, hm_BxH: Array):
    c, _ = carry_in
    w_h = params["w_h_HxG"]
    z = xp_BxG + hm_BxH.astype(w_h.dtype) @ w_h
    a, b = _gate_affine(c.shape[-1], z.dtype)
    acts = a * jnp.tanh(a * z) + b  # i, f, g, o activations in one elementwise pass
    i, f, g, o = split_gates(acts, N_GATES)
    new_c = f * c + i * g
    new_h = o * jnp.tanh(new_c)
    return (new_c, new_h), new_h, acts


def fused_backward(params: Params, carry_in, acts, h_mask_BxH: Array, d_carry, dy_BxH: Array):
    c, _ = carry_in
    i, f, g, o = split_gates(acts, N_GATES)
    tanh_c = jnp.tanh(f * c + i * g)  # recomputed: cheaper than storing it
    dc, dh = d_carry
    dh = dh + dy_BxH
    dc = dc + dh * o * (1.0 - tanh_c * tanh_c)
    a, b = _gate_affine(c.shape[-1], acts.dtype)
    t = (acts - b) / a  # tanh(a * z): d act / dz = a * a * (1 - t^2), i.e. s(1-s) or 1-g^2
    d_acts = jnp.concatenate([dc * g, dc * c, dc * i, dh * tanh_c], axis=-1)
    d_gates = d_acts * (a * a) * (1.0 - t * t)  # d loss / d pre-activations, gate order i, f, g, o
    w_h = params["w_h_HxG"]
    dh_in = (d_gates.astype(w_h.dtype) @ w_h.T) * h_mask_BxH
    return (dc * f, dh_in.astype(dh.dtype)), d_gates, None


def fused_param_grads(params: Params, hm_TxBxH: Array, dhw_TxBxG: Array) -> Params:
    from rnnlab.fused import weight_grad

    return {"w_h_HxG": weight_grad(hm_TxBxH, dhw_TxBxG).astype(params["w_h_HxG"].dtype)}
