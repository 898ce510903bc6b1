"""sLSTM, the scalar-memory cell of xLSTM (Beck et al. 2024, "xLSTM: Extended Long
Short-Term Memory", §2.2, eqs. 8-17), with its stabilised exponential gating.

    i~, f~, z~, o~ = split(x_t W_x + h_{t-1} W_h + b)      gate order i, f, z, o
    log i_t = i~                                 exponential input gate
    log f_t = log sigmoid(f~)  (forget_gate='sigmoid', default)  or  f~ ('exp')
    m_t  = max(log f_t + m_{t-1}, log i_t)       stabiliser state (eq. 15)
    i'_t = exp(log i_t - m_t),  f'_t = exp(log f_t + m_{t-1} - m_t)   (both <= 1)
    c_t  = f'_t * c_{t-1} + i'_t * tanh(z~)      cell
    n_t  = f'_t * n_{t-1} + i'_t                 normaliser
    h_t  = sigmoid(o~) * c_t / n_t

The stabiliser rescales c and n together, so h is what the unstabilised
exp-gated recurrence gives, without overflow. One head (the paper's
block-diagonal multi-head W_h is a later option). Forget bias 1.0.
Carry: (c_BxH, n_BxH, m_BxH, h_BxH).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnlab.cells._common import Array, Params, dense_precompute, init_dense, recurrent_input, split_gates

N_GATES = 4
_FORGET = ("sigmoid", "exp")
OPTION_CHOICES = {"forget_gate": tuple(_FORGET)}  # checked by cells.get


def init(
    key: Array, d_in: int, d_h: int, *, input_init: str = "lecun_normal", recurrent_init: str = "orthogonal",
    bias_init: str = "zeros", forget_bias: float = 1.0, dtype=jnp.float32,
) -> Params:
    params = init_dense(key, d_in, d_h, N_GATES, input_init=input_init, recurrent_init=recurrent_init,
                        bias_init=bias_init, dtype=dtype)
    params["b_G"] = params["b_G"].at[d_h : 2 * d_h].add(forget_bias)
    return params


def initial_carry(batch: int, d_h: int) -> tuple[Array, Array, Array, Array]:
    return tuple(jnp.zeros((batch, d_h), jnp.float32) for _ in range(4))


precompute = dense_precompute


def step(
    params: Params, carry: tuple[Array, Array, Array, Array], xp_BxG: Array, h_mask_BxH: Array | None = None,
    *, forget_gate: str = "sigmoid",
) -> tuple[tuple[Array, Array, Array, Array], Array]:
    if forget_gate not in _FORGET:
        raise ValueError(f"forget_gate must be one of {_FORGET}, got {forget_gate!r}")
    c, n, m, h = carry
    w_h = params["w_h_HxG"]
    log_i, f, z, o = split_gates(xp_BxG + recurrent_input(h, h_mask_BxH, w_h.dtype) @ w_h, N_GATES)
    log_f = jax.nn.log_sigmoid(f) if forget_gate == "sigmoid" else f
    new_m = jnp.maximum(log_f + m, log_i)
    i_s, f_s = jnp.exp(log_i - new_m), jnp.exp(log_f + m - new_m)
    new_c = f_s * c + i_s * jnp.tanh(z)
    new_n = f_s * n + i_s
    new_h = jax.nn.sigmoid(o) * new_c / new_n
    return tuple(v.astype(h.dtype) for v in (new_c, new_n, new_m, new_h)), new_h


def output_of_carry(carry: tuple[Array, Array, Array, Array]) -> Array:
    """The output h (the probes' view of the state): the carry's last part."""
    return carry[3]
