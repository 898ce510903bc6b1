"""Linear Recurrent Unit, LRU (Orvieto et al. 2023, "Resurrecting Recurrent Neural
Networks for Long Sequences", arXiv:2303.06349, §3 and App. A).

    lambda = exp(-exp(nu) + i exp(theta))            complex diagonal, |lambda| < 1 always
    h_t = lambda * h_{t-1} + gamma * (x_t B)         B: D x N complex
    y_t = act(Re(h_t C) + x_t W_d + b)               C: N x H complex; act = gelu (default) or none

Ring initialisation: |lambda| uniform on the ring [r_min, r_max] (area-uniform, as
the paper's code), phase uniform in [0, max_phase]. Normalisation:
gamma = exp(gamma_log), initialised to sqrt(1 - |lambda|^2) and trained, so an
input's contribution to h has about unit scale whatever |lambda|.
The paper's D x_t is diagonal (D = H there); here D != H, so it is a dense
W_d. The paper puts a position-wise MLP/GLU after each LRU; ``act`` folds a GeLU
in, so a stack of LRU cells is a deep nonlinear model (a single linear layer
cannot represent the adding task's products).

The complex state is carried as two float32 arrays (Re h, Im h), each B x N
(N = ``state_size``, default H), so the carry contract stays float32.
Gate-block layout of xp: [Re(x B), Im(x B), x W_d + b] (G = 2N + H).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rnnlab.cells._common import Array, Params

_ACTS = {"gelu": jax.nn.gelu, "none": lambda v: v}
OPTION_CHOICES = {"activation": tuple(_ACTS)}  # checked by cells.get


def init(
    key: Array, d_in: int, d_h: int, *, state_size: int = 0, r_min: float = 0.9, r_max: float = 0.999,
    max_phase: float = 2 * math.pi, dtype=jnp.float32,
) -> Params:
    n = state_size or d_h
    k_nu, k_th, k_b, k_c, k_d = jax.random.split(key, 5)
    u1, u2 = jax.random.uniform(k_nu, (n,)), jax.random.uniform(k_th, (n,))
    nu_log = jnp.log(-0.5 * jnp.log(u1 * (r_max**2 - r_min**2) + r_min**2))
    theta_log = jnp.log(max_phase * u2)
    modulus = jnp.exp(-jnp.exp(nu_log))
    b = jax.random.normal(k_b, (2, d_in, n)) / math.sqrt(2 * d_in)  # Glorot-like, as the paper
    c = jax.random.normal(k_c, (2, n, d_h)) / math.sqrt(n)
    return jax.tree.map(lambda a: a.astype(dtype), {
        "nu_log_N": nu_log, "theta_log_N": theta_log, "gamma_log_N": 0.5 * jnp.log(1 - modulus**2),
        "w_x_DxG": jnp.concatenate([b[0], b[1], jax.nn.initializers.lecun_normal()(k_d, (d_in, d_h))], 1),
        "b_H": jnp.zeros((d_h,)), "c_re_NxH": c[0], "c_im_NxH": c[1],
    })


def initial_carry(batch: int, d_h: int, *, state_size: int = 0) -> tuple[Array, Array]:
    n = state_size or d_h
    return (jnp.zeros((batch, n), jnp.float32), jnp.zeros((batch, n), jnp.float32))


def precompute(params: Params, x_TxBxD: Array) -> Array:
    """[Re(x B), Im(x B), x W_d + b] for every step as ONE matmul."""
    w = params["w_x_DxG"]
    n = params["nu_log_N"].shape[0]
    bias = jnp.concatenate([jnp.zeros((2 * n,), w.dtype), params["b_H"]])
    return jnp.einsum("tbd,dg->tbg", x_TxBxD.astype(w.dtype), w) + bias


def _lambda(params: Params) -> Array:
    return jnp.exp(jax.lax.complex(-jnp.exp(params["nu_log_N"]), jnp.exp(params["theta_log_N"])))


def _input(params: Params, xp: Array) -> Array:
    n = params["nu_log_N"].shape[0]
    return jnp.exp(params["gamma_log_N"]) * jax.lax.complex(xp[..., :n], xp[..., n : 2 * n])


def to_state(carry: tuple[Array, Array]) -> Array:
    return jax.lax.complex(*carry)


def from_state(h_BxN: Array) -> tuple[Array, Array]:
    return (jnp.real(h_BxN), jnp.imag(h_BxN))


def readout(params: Params, h_TxBxN: Array, xp_TxBxG: Array, *, activation: str = "gelu") -> Array:
    if activation not in _ACTS:
        raise ValueError(f"activation must be one of {sorted(_ACTS)}, got {activation!r}")
    n = params["nu_log_N"].shape[0]
    y = jnp.real(h_TxBxN) @ params["c_re_NxH"] - jnp.imag(h_TxBxN) @ params["c_im_NxH"]
    return _ACTS[activation](y + xp_TxBxG[..., 2 * n :])


def step(
    params: Params, carry: tuple[Array, Array], xp_BxG: Array, *, activation: str = "gelu"
) -> tuple[tuple[Array, Array], Array]:
    h = _lambda(params) * to_state(carry) + _input(params, xp_BxG)
    re, im = from_state(h)
    return (re.astype(carry[0].dtype), im.astype(carry[1].dtype)), readout(params, h, xp_BxG, activation=activation)


def linear_coefficients(params: Params, xp_TxBxG: Array) -> tuple[Array, Array]:
    b = _input(params, xp_TxBxG)
    return jnp.broadcast_to(_lambda(params), b.shape), b


def output_of_carry(carry: tuple[Array, Array]) -> Array:
    """The probes' view of the state: the complex h as one real vector [Re h, Im h], B x 2N
    (the output y also reads the input, so it is not a function of the carry alone)."""
    return jnp.concatenate(carry, axis=-1)
