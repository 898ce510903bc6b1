"""Gated recurrent unit (Cho et al. 2014), as torch.nn.GRU and flax.linen.GRUCell.

    r, z = sigmoid(x_t W_x[r,z] + h_{t-1} W_h[r,z] + b[r,z])      gate order r, z, n
    reset_after=True  (default; PyTorch, cuDNN, Flax):
        n = tanh(x_t W_x[n] + b[n] + r * (h_{t-1} W_h[n] + b_hn))
    reset_after=False (Cho et al. 2014, "reset before"):
        n = tanh(x_t W_x[n] + b[n] + (r * h_{t-1}) W_h[n] + b_hn)
    h_t = (1 - z) * n + z * h_{t-1}

Biases: ``b_G`` holds PyTorch's b_ih plus the r,z parts of b_hh (summed, they
only ever appear together); ``b_hn_H`` is b_hh's n part, which r multiplies.
``chrono=T_MAX`` (> 2): chrono initialisation (Tallec & Ollivier 2018), the GRU
form: b_z = log(u), u ~ U(1, T_MAX - 1), so each unit keeps its state for about
1 + u steps at initialisation (z = sigmoid(b_z) = u / (1 + u) is the keep gate here).
Carry: h_BxH.
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
    initializer,
    recurrent_input,
    split_gates,
)

N_GATES = 3


def init(
    key: Array,
    d_in: int,
    d_h: int,
    *,
    input_init: str = "lecun_normal",
    recurrent_init: str = "orthogonal",
    bias_init: str = "zeros",
    chrono: int = 0,
    dtype=jnp.float32,
) -> Params:
    k_dense, k_n = jax.random.split(key)
    params = init_dense(k_dense, d_in, d_h, N_GATES, input_init=input_init, recurrent_init=recurrent_init,
                        bias_init=bias_init, dtype=dtype)
    params["b_hn_H"] = initializer(bias_init, d_h)(k_n, (d_h,), dtype)
    if chrono:
        params["b_G"] = params["b_G"].at[d_h : 2 * d_h].set(chrono_bias(key, d_h, chrono, params["b_G"].dtype, "gru"))
    return params


def initial_carry(batch: int, d_h: int) -> Array:
    return jnp.zeros((batch, d_h), jnp.float32)


precompute = dense_precompute


def step(
    params: Params,
    carry: Array,
    xp_BxG: Array,
    h_mask_BxH: Array | None = None,
    *,
    reset_after: bool = True,
) -> tuple[Array, Array]:
    h = carry
    w_h, d_h = params["w_h_HxG"], h.shape[-1]
    h_in = recurrent_input(h, h_mask_BxH, w_h.dtype)
    x_r, x_z, x_n = split_gates(xp_BxG, N_GATES)
    if reset_after:  # one GEMM for all three gates
        h_r, h_z, h_n = split_gates(h_in @ w_h, N_GATES)
        r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
        n = jnp.tanh(x_n + r * (h_n + params["b_hn_H"]))
    else:  # r gates h before the n-gate matmul, so that matmul waits for r
        h_r, h_z = split_gates(h_in @ w_h[:, : 2 * d_h], 2)
        r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
        n = jnp.tanh(x_n + (r * h_in) @ w_h[:, 2 * d_h :] + params["b_hn_H"])
    new_h = (1.0 - z) * n + z * h
    return new_h.astype(h.dtype), new_h


def gates(params: Params, carry: Array, xp_BxG: Array, *, reset_after: bool = True):
    """The probes' view of the step from ``carry``: r, z (sigmoid), n (tanh); z keeps h_{t-1}."""
    h, w_h = carry, params["w_h_HxG"]
    d_h = h.shape[-1]
    x_r, x_z, x_n = split_gates(xp_BxG, N_GATES)
    if reset_after:
        h_r, h_z, h_n = split_gates(h @ w_h, N_GATES)
        r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
        n = jnp.tanh(x_n + r * (h_n + params["b_hn_H"]))
    else:
        h_r, h_z = split_gates(h @ w_h[:, : 2 * d_h], 2)
        r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
        n = jnp.tanh(x_n + (r * h) @ w_h[:, 2 * d_h :] + params["b_hn_H"])
    return {"r": ("sigmoid", r), "z": ("sigmoid", z), "n": ("tanh", n)}, "z"


# ----------------------------------------------------------------------------- fused layer
# rnnlab.fused: the backward loop carries only dh; W_h's and b_hn's gradients come after it.

RECURRENT_PARAMS = ("w_h_HxG", "b_hn_H")


def fused_available(*, reset_after: bool = True) -> bool:
    """Reset-before multiplies h by r before the n-gate matmul, so its W_h gradient
    is not one GEMM against h: only reset-after (the default) is fused."""
    return reset_after


def fused_forward(params: Params, carry_in: Array, xp_BxG: Array, hm_BxH: Array):
    h = carry_in
    w_h = params["w_h_HxG"]
    x_r, x_z, x_n = split_gates(xp_BxG, N_GATES)
    h_r, h_z, h_n = split_gates(hm_BxH.astype(w_h.dtype) @ w_h, N_GATES)
    r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
    hn = h_n + params["b_hn_H"]
    n = jnp.tanh(x_n + r * hn)
    new_h = (1.0 - z) * n + z * h
    return new_h.astype(h.dtype), new_h, jnp.concatenate([r, z, n, hn], axis=-1)


def fused_backward(params: Params, carry_in: Array, acts, h_mask_BxH: Array, d_carry: Array, dy_BxH: Array):
    h = carry_in
    r, z, n, hn = jnp.split(acts, 4, axis=-1)
    dh = d_carry + dy_BxH
    dn = dh * (1.0 - z) * (1.0 - n * n)
    dr = dn * hn * r * (1.0 - r)
    dz = dh * (h - n) * z * (1.0 - z)
    dxp = jnp.concatenate([dr, dz, dn], axis=-1)
    dhw = jnp.concatenate([dr, dz, dn * r], axis=-1)  # w.r.t. hm @ W_h: r scales the n block
    w_h = params["w_h_HxG"]
    dh_in = dh * z + (dhw.astype(w_h.dtype) @ w_h.T) * h_mask_BxH
    return dh_in.astype(h.dtype), dxp, dhw


def fused_param_grads(params: Params, hm_TxBxH: Array, dhw_TxBxG: Array) -> Params:
    from rnnlab.fused import weight_grad

    d_h = hm_TxBxH.shape[-1]
    return {"w_h_HxG": weight_grad(hm_TxBxH, dhw_TxBxG).astype(params["w_h_HxG"].dtype),
            "b_hn_H": jnp.sum(dhw_TxBxG[..., 2 * d_h:], axis=(0, 1)).astype(params["b_hn_H"].dtype)}
