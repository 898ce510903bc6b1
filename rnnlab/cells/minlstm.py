"""minLSTM (Feng et al. 2024, "Were RNNs All We Needed?", arXiv:2410.01201, §3.2).

    f_t  = sigmoid(x_t W_f + b_f),  i_t = sigmoid(x_t W_i + b_i)      gate order f, i, h
    h~_t = g(x_t W_h + b_h)         (g as in minGRU: positive)
    f'_t = f_t / (f_t + i_t),       i'_t = i_t / (f_t + i_t)          (time-independent scale)
    h_t  = f'_t * h_{t-1} + i'_t * h~_t

Linear in h, so ``scan.run`` can run it as one parallel scan in log space
(paper App. B), with log f - log i = softplus(-k_i) - softplus(-k_f):
log f' = -softplus(log i - log f), log i' = -softplus(log f - log i).
Carry: h_BxH.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnlab.cells._common import Array, Params, dense_precompute, init_gate_blocks, initializer
from rnnlab.cells.mingru import g, log_g

N_GATES = 3
LOG_SPACE = True  # linear_coefficients returns (log a, log b)


def init(
    key: Array, d_in: int, d_h: int, *, input_init: str = "lecun_normal", bias_init: str = "zeros",
    dtype=jnp.float32,
) -> Params:
    kx, kb = jax.random.split(key)
    return {
        "w_x_DxG": init_gate_blocks(kx, input_init, d_in, d_h, N_GATES, dtype),
        "b_G": initializer(bias_init, d_h)(kb, (N_GATES * d_h,), dtype),
    }


def initial_carry(batch: int, d_h: int) -> Array:
    return jnp.zeros((batch, d_h), jnp.float32)


precompute = dense_precompute


def step(params: Params, carry: Array, xp_BxG: Array) -> tuple[Array, Array]:
    k_f, k_i, k_h = jnp.split(xp_BxG, N_GATES, axis=-1)
    # f / (f + i) = sigmoid(log f - log i): no 0/0 when both gates underflow
    log_f_over_i = jax.nn.softplus(-k_i) - jax.nn.softplus(-k_f)
    h = jax.nn.sigmoid(log_f_over_i) * carry + jax.nn.sigmoid(-log_f_over_i) * g(k_h)
    return h.astype(carry.dtype), h


def linear_coefficients(params: Params, xp_TxBxG: Array) -> tuple[Array, Array]:
    k_f, k_i, k_h = jnp.split(xp_TxBxG, N_GATES, axis=-1)
    log_i_over_f = jax.nn.softplus(-k_f) - jax.nn.softplus(-k_i)  # log i - log f
    return -jax.nn.softplus(log_i_over_f), -jax.nn.softplus(-log_i_over_f) + log_g(k_h)
