"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?", arXiv:2410.01201, §3.1).

    z_t  = sigmoid(x_t W_z + b_z)                       gate order z, h
    h~_t = g(x_t W_h + b_h),   g(v) = v + 1/2 (v >= 0), sigmoid(v) (v < 0)   (positive)
    h_t  = (1 - z_t) * h_{t-1} + z_t * h~_t

The gates see only x_t, so the recurrence is linear in h: ``scan.run`` runs the
whole sequence as one parallel scan, in log space as in the paper (App. B):
log a_t = -softplus(k_z), log b_t = -softplus(-k_z) + log g(k_h), with
log g(v) = log(v + 1/2) (v >= 0), -softplus(-v) (v < 0).
Carry: h_BxH.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnlab.cells._common import Array, Params, dense_precompute, init_gate_blocks, initializer

N_GATES = 2
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


def g(v: Array) -> Array:
    """The paper's positive activation: continuous, v + 1/2 above 0, sigmoid below."""
    return jnp.where(v >= 0, v + 0.5, jax.nn.sigmoid(v))


def log_g(v: Array) -> Array:
    return jnp.where(v >= 0, jnp.log(jax.nn.relu(v) + 0.5), -jax.nn.softplus(-v))


def step(params: Params, carry: Array, xp_BxG: Array) -> tuple[Array, Array]:
    k_z, k_h = jnp.split(xp_BxG, N_GATES, axis=-1)
    z = jax.nn.sigmoid(k_z)
    h = (1.0 - z) * carry + z * g(k_h)
    return h.astype(carry.dtype), h


def linear_coefficients(params: Params, xp_TxBxG: Array) -> tuple[Array, Array]:
    k_z, k_h = jnp.split(xp_TxBxG, N_GATES, axis=-1)
    return -jax.nn.softplus(k_z), -jax.nn.softplus(-k_z) + log_g(k_h)
