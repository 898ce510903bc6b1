"""Mogrifier LSTM (Melis, Kocisky & Blunsom 2020, "Mogrifier LSTM", ICLR, eqs. 1-2).

Before each LSTM step, x and h gate each other for ``rounds`` rounds
(x^{-1} = x_t, h^0 = h_{t-1}; i = 1 .. rounds):

    odd i:   x^i = 2 * sigmoid(h^{i-1} Q^i) * x^{i-2}          Q^i: H x D
    even i:  h^i = 2 * sigmoid(x^{i-1} R^i) * h^{i-2}          R^i: D x H

then the LSTM (gate order i, f, g, o; forget bias 1.0) runs on the last x and h.
``rank`` > 0 factorises each Q, R as a product of k-wide matrices (the paper's
low-rank variant, Q = Q_l Q_r); 0 is full rank. The paper's best: 5 rounds.
``rounds=0`` is the plain LSTM. Because x is modulated by h, x W_x cannot be
hoisted out of the loop: ``precompute`` is the identity (xp = x).
Carry: (c_BxH, h_BxH).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rnnlab.cells import lstm
from rnnlab.cells._common import Array, Params, recurrent_input, split_gates

N_GATES = 4


def init(
    key: Array, d_in: int, d_h: int, *, rounds: int = 5, rank: int = 0, input_init: str = "lecun_normal",
    recurrent_init: str = "orthogonal", bias_init: str = "zeros", forget_bias: float = 1.0, dtype=jnp.float32,
) -> Params:
    if rounds < 0 or rank < 0:
        raise ValueError(f"rounds and rank must be >= 0, got rounds={rounds}, rank={rank}")
    k_lstm, *k_rounds = jax.random.split(key, rounds + 1)
    params = lstm.init(k_lstm, d_in, d_h, input_init=input_init, recurrent_init=recurrent_init,
                       bias_init=bias_init, forget_bias=forget_bias, dtype=dtype)
    for i, k in enumerate(k_rounds, start=1):
        d_from, d_to = (d_h, d_in) if i % 2 else (d_in, d_h)  # odd rounds gate x from h
        kl, kr = jax.random.split(k)
        normal = lambda kk, shape, fan_in: (jax.random.normal(kk, shape) / math.sqrt(fan_in)).astype(dtype)
        if rank:
            params[f"round_{i}"] = {"left": normal(kl, (d_from, rank), d_from), "right": normal(kr, (rank, d_to), rank)}
        else:
            params[f"round_{i}"] = {"full": normal(kl, (d_from, d_to), d_from)}
    return params


initial_carry = lstm.initial_carry


def _project(m: dict, v: Array) -> Array:
    return v @ m["full"] if "full" in m else (v @ m["left"]) @ m["right"]


def mogrify(params: Params, x_BxD: Array, h_BxH: Array) -> tuple[Array, Array]:
    """The rounds of mutual gating; their number is the number of ``round_i`` entries."""
    i = 1
    while f"round_{i}" in params:
        if i % 2:
            x_BxD = 2.0 * jax.nn.sigmoid(_project(params[f"round_{i}"], h_BxH)) * x_BxD
        else:
            h_BxH = 2.0 * jax.nn.sigmoid(_project(params[f"round_{i}"], x_BxD)) * h_BxH
        i += 1
    return x_BxD, h_BxH


def step(
    params: Params, carry: tuple[Array, Array], xp_BxG: Array, h_mask_BxH: Array | None = None
) -> tuple[tuple[Array, Array], Array]:
    c, h = carry
    w_x, w_h = params["w_x_DxG"], params["w_h_HxG"]
    x, h_in = mogrify(params, xp_BxG.astype(w_x.dtype), recurrent_input(h, h_mask_BxH, w_h.dtype))
    i, f, g, o = split_gates(x @ w_x + h_in @ w_h + params["b_G"], N_GATES)
    new_c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    new_h = jax.nn.sigmoid(o) * jnp.tanh(new_c)
    return (new_c.astype(c.dtype), new_h.astype(h.dtype)), new_h


def output_of_carry(carry: tuple[Array, Array]) -> Array:
    """The output h (the probes' view of the state): the carry's second part."""
    return carry[1]
