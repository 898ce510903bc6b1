"""LSTM with a recurrent projection layer, LSTMP (Sak, Senior & Beaufays 2014, "Long
Short-Term Memory Recurrent Neural Network Architectures for Large Scale Acoustic
Modeling", eqs. 1-7 without peepholes), as torch.nn.LSTM(proj_size=H).

    i, f, g, o = split(x_t W_x + r_{t-1} W_h + b)      gate order i, f, g, o; each N wide
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)  c: N = cell_size units
    r_t = (sigmoid(o) * tanh(c_t)) W_p                 W_p: N x H, the projection
    output: r_t (H wide), which is also the recurrent input

The recurrent matrix is H x 4N instead of N x 4N: a large cell with a small
recurrent state. The output width is d_h (the projection), so stacks chain as
with any cell; ``cell_size`` (0: 2 * d_h) sets N. Forget-gate bias 1.0.
Carry: (c_BxN, r_BxH) - the contract allows carry leaves of any width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnlab.cells._common import (
    Array,
    Params,
    dense_precompute,
    init_gate_blocks,
    initializer,
    recurrent_input,
    split_gates,
)

N_GATES = 4


def _cell_size(d_h: int, cell_size: int) -> int:
    if cell_size < 0:
        raise ValueError(f"cell_size must be >= 0 (0: 2 * d_h), got {cell_size}")
    return cell_size or 2 * d_h


def init(
    key: Array, d_in: int, d_h: int, *, cell_size: int = 0, input_init: str = "lecun_normal",
    recurrent_init: str = "orthogonal", proj_init: str = "lecun_normal", bias_init: str = "zeros",
    forget_bias: float = 1.0, dtype=jnp.float32,
) -> Params:
    n = _cell_size(d_h, cell_size)
    kx, kh, kb, kp = jax.random.split(key, 4)
    b = initializer(bias_init, n)(kb, (N_GATES * n,), dtype)
    return {
        "w_x_DxG": init_gate_blocks(kx, input_init, d_in, n, N_GATES, dtype),
        "w_h_HxG": init_gate_blocks(kh, recurrent_init, d_h, n, N_GATES, dtype),
        "b_G": b.at[n : 2 * n].add(forget_bias),
        "w_p_NxH": initializer(proj_init, d_h)(kp, (n, d_h), dtype),
    }


def initial_carry(batch: int, d_h: int, *, cell_size: int = 0) -> tuple[Array, Array]:
    n = _cell_size(d_h, cell_size)
    return (jnp.zeros((batch, n), jnp.float32), jnp.zeros((batch, d_h), jnp.float32))


precompute = dense_precompute


def step(
    params: Params, carry: tuple[Array, Array], xp_BxG: Array, h_mask_BxH: Array | None = None
) -> tuple[tuple[Array, Array], Array]:
    c, r = carry
    w_h = params["w_h_HxG"]
    i, f, g, o = split_gates(xp_BxG + recurrent_input(r, h_mask_BxH, w_h.dtype) @ w_h, N_GATES)
    new_c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    new_r = (jax.nn.sigmoid(o) * jnp.tanh(new_c)) @ params["w_p_NxH"]
    return (new_c.astype(c.dtype), new_r.astype(r.dtype)), new_r


def output_of_carry(carry: tuple[Array, Array]) -> Array:
    """The output h (the probes' view of the state): the carry's second part."""
    return carry[1]
