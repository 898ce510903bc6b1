"""Real-Gated Linear Recurrent Unit, RG-LRU (De et al. 2024, Griffin,
arXiv:2402.19427, §2.4, eqs. 1-6).

    u_t = x_t W_u + b_u                     the H-wide input of the recurrence
    r_t = sigmoid(x_t W_a + b_a)            recurrence gate        gate order a, x, u
    i_t = sigmoid(x_t W_x + b_x)            input gate
    log a_t = -c * softplus(lambda) * r_t   a_t = a^(c r_t), a = exp(-softplus(lambda)), c = 8
    h_t = a_t * h_{t-1} + sqrt(1 - a_t^2) * (i_t * u_t)

``lambda`` is initialised so that a is uniform in [0.9, 0.999] (the paper's
ring; recurrentgemma's ``rnn_param_init``). The gates see only x_t, so the
recurrence is linear in h: ``scan.run`` runs it as one parallel scan. Griffin
feeds the RG-LRU from a convolution branch and gates its output with a GeLU
branch; those belong to the block around the cell (here: u_t is one linear map).
Carry: h_BxH.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnlab.cells._common import Array, Params, dense_precompute, init_gate_blocks, initializer

N_GATES = 3
C = 8.0  # the paper's fixed scale of the gate exponent


def init(
    key: Array, d_in: int, d_h: int, *, input_init: str = "lecun_normal", bias_init: str = "zeros",
    a_min: float = 0.9, a_max: float = 0.999, dtype=jnp.float32,
) -> Params:
    kx, kb, ka = jax.random.split(key, 3)
    a = jax.random.uniform(ka, (d_h,), jnp.float32, a_min, a_max)
    softplus_inv = lambda y: y + jnp.log(-jnp.expm1(-y))  # softplus(softplus_inv(y)) = y
    return {
        "w_x_DxG": init_gate_blocks(kx, input_init, d_in, d_h, N_GATES, dtype),
        "b_G": initializer(bias_init, d_h)(kb, (N_GATES * d_h,), dtype),
        "lambda_H": softplus_inv(-jnp.log(a)).astype(dtype),
    }


def initial_carry(batch: int, d_h: int) -> Array:
    return jnp.zeros((batch, d_h), jnp.float32)


precompute = dense_precompute


def _gates(params: Params, xp: Array) -> tuple[Array, Array]:
    k_a, k_x, u = jnp.split(xp, N_GATES, axis=-1)
    log_a = -C * jax.nn.softplus(params["lambda_H"]) * jax.nn.sigmoid(k_a)
    # sqrt(1 - a^2), bounded away from 0 so its derivative stays finite as a -> 1
    norm = jnp.sqrt(jnp.maximum(-jnp.expm1(2.0 * log_a), 1e-12))
    return log_a, norm * jax.nn.sigmoid(k_x) * u


def step(params: Params, carry: Array, xp_BxG: Array) -> tuple[Array, Array]:
    log_a, b = _gates(params, xp_BxG)
    h = jnp.exp(log_a) * carry + b
    return h.astype(carry.dtype), h


def linear_coefficients(params: Params, xp_TxBxG: Array) -> tuple[Array, Array]:
    log_a, b = _gates(params, xp_TxBxG)
    return jnp.exp(log_a), b
