"""mLSTM, the matrix-memory LSTM of xLSTM (Beck et al. 2024, "xLSTM: Extended Long
Short-Term Memory", arXiv:2405.04517, §2.3, eqs. 19-27), with its exponential input
gate and normaliser, per head (``heads`` heads of d = H / heads units):

    q_t = x_t W_q + b_q,  k_t = (x_t W_k + b_k) / sqrt(d),  v_t = x_t W_v + b_v
    i_t = exp(x_t w_i + b_i)            f_t = sigmoid(x_t w_f + b_f)       (scalars per head)
    o_t = sigmoid(x_t W_o + b_o)
    C_t = f_t C_{t-1} + i_t v_t k_t^T       (d x d)
    n_t = f_t n_{t-1} + i_t k_t
    h_t = o_t * (C_t q_t) / max(|n_t . q_t|, 1)

Stabilised as in the paper (eqs. 15-17): m_t = max(log f_t + m_{t-1}, log i_t), the
carry holds C~ = C exp(-m), n~ = n exp(-m), and the denominator is
max(|n~_t . q_t|, exp(-m_t)); the output is unchanged.

The gates see only x_t, so the whole sequence has a chunkwise-parallel form
(``chunkwise``; ``scan.run(..., path='parallel')``): chunks of ``chunk_size`` steps,
each a masked (decay-weighted) product Q K^T V within the chunk plus the state
carried in from the chunk before, the stabiliser computed exactly as the
recurrence's running maximum, so both forms give the same numbers. Resets and
lengths enter as the recurrence's own: a reset puts the carry back to carry0 before
the step, a step past the length changes nothing.

Carry: (C~_BxN, n~_BxH, m_BxK, h_BxH), N = heads * d * d (each head's d x d matrix,
v-major), K = heads; h, the last output, is kept so that the probes can read the
output from the carry (``output_of_carry``), as the LSTM's (c, h). Gate-block layout of xp: [q, k, v, o (H each), log i, f~ (K each)].
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rnnlab.cells._common import Array, Params, dense_precompute

CARRY_NAMES = ("C", "n", "m", "h")
_NEG = -1e30  # log of a weight that is exactly zero (finite, so no inf - inf)


def _heads(d_h: int, heads: int) -> int:
    if heads < 1 or d_h % heads:
        raise ValueError(f"mlstm: hidden size {d_h} is not a multiple of heads={heads}; choose heads that "
                         f"divide it (e.g. heads=1)")
    return d_h // heads


def init(
    key: Array, d_in: int, d_h: int, *, heads: int = 1, forget_bias: float = 3.0, dtype=jnp.float32,
) -> Params:
    """W_x: D x (4H + 2K), LeCun normal; b_f = forget_bias (f starts near sigmoid(3) = 0.95, as the
    paper's init keeps long memories), other biases 0."""
    _heads(d_h, heads)
    w = jax.nn.initializers.lecun_normal()(key, (d_in, 4 * d_h + 2 * heads), jnp.float32)
    b = jnp.zeros((4 * d_h + 2 * heads,)).at[4 * d_h + heads:].set(forget_bias)
    return {"w_x_DxG": w.astype(dtype), "b_G": b.astype(dtype)}


def initial_carry(batch: int, d_h: int, *, heads: int = 1) -> tuple[Array, Array, Array, Array]:
    d = _heads(d_h, heads)
    return (jnp.zeros((batch, heads * d * d), jnp.float32), jnp.zeros((batch, d_h), jnp.float32),
            jnp.zeros((batch, heads), jnp.float32), jnp.zeros((batch, d_h), jnp.float32))


def output_of_carry(carry) -> Array:
    return carry[3]


precompute = dense_precompute


def _split(xp: Array, heads: int):
    """xp_...xG -> q, k, v, o (... x K x d), log i, log f (... x K)."""
    d_h = (xp.shape[-1] - 2 * heads) // 4
    d = d_h // heads
    q, k, v, o, li, fp = jnp.split(xp, [d_h, 2 * d_h, 3 * d_h, 4 * d_h, 4 * d_h + heads], axis=-1)
    shape = xp.shape[:-1] + (heads, d)
    return (q.reshape(shape), k.reshape(shape) / math.sqrt(d), v.reshape(shape), jax.nn.sigmoid(o).reshape(shape),
            li, jax.nn.log_sigmoid(fp))


def _readout(num, den, m, o):
    """h = o * num / max(|den|, exp(-m)) per head, flattened to H."""
    h = o * num / jnp.maximum(jnp.abs(den), jnp.exp(-m))[..., None]
    return h.reshape(h.shape[:-2] + (-1,))


def step(params: Params, carry, xp_BxG: Array, *, heads: int = 1):
    c_flat, n_flat, m_prev, h_prev = carry
    q, k, v, o, li, lf = _split(xp_BxG, heads)
    batch, _, d = q.shape
    c, n = c_flat.reshape(batch, heads, d, d), n_flat.reshape(batch, heads, d)
    m = jnp.maximum(lf + m_prev, li)
    f_, i_ = jnp.exp(lf + m_prev - m), jnp.exp(li - m)
    c = f_[..., None, None] * c + i_[..., None, None] * v[..., :, None] * k[..., None, :]
    n = f_[..., None] * n + i_[..., None] * k
    num = jnp.einsum("bkvd,bkd->bkv", c, q)
    den = jnp.einsum("bkd,bkd->bk", n, q)
    h = _readout(num, den, m, o)
    new = (c.reshape(batch, -1).astype(c_flat.dtype), n.reshape(batch, -1).astype(n_flat.dtype),
           m.astype(m_prev.dtype), h.astype(h_prev.dtype))
    return new, h


def gates(params: Params, carry, xp_BxG: Array, *, heads: int = 1):
    """The probes' view of the step: o (sigmoid), f (sigmoid, per head; keeps the matrix memory) and
    the input gate i = exp(i~) (per head, unbounded)."""
    _, _, _, o, li, lf = _split(xp_BxG, heads)
    return {"o": ("sigmoid", o.reshape(o.shape[:-2] + (-1,))), "f": ("sigmoid", jnp.exp(lf)),
            "i": ("exp", jnp.exp(li))}, "f"


def chunkwise(params: Params, carry0, xp_TxBxG: Array, reset_TxB: Array, valid_TxB: Array, *,
              heads: int = 1, chunk_size: int = 64):
    """The chunkwise-parallel form (see the module docstring); equal to a scan of ``step``.

    Within a chunk of L steps, with b_t the cumulative sum of log f over the chunk:
    the weight of step s's write in step t's state is log-weight D_ts = b_t - b_s + log i_s
    (s <= t, no reset in (s, t]); the state entering the chunk (or carry0 after the last reset
    r <= t) has log-weight g_t = m_in + b_t (or m0 + b_t - b_{r-1}). m_t is the maximum of
    these, the recurrence's running maximum, and every weight enters as exp(. - m_t) <= 1."""
    n_steps, batch = xp_TxBxG.shape[:2]
    # The barrier hides carry0's values from the compiler. XLA:CPU (jax 0.10.2) miscompiled this
    # function under jit when carry0 was a constant (the zeros a model starts from) and the chunk
    # loop ran once (T <= chunk_size): outputs off by up to 1e30, right op by op and with carry0 an
    # argument (tests/test_parallel_scan.py::test_mlstm_one_chunk_from_constant_zeros_under_jit).
    c0, n0, m0, h0 = jax.lax.optimization_barrier(tuple(carry0))
    q, k, v, o, li, lf = _split(xp_TxBxG, heads)  # T x B x K x d, T x B x K
    d = q.shape[-1]
    ell = max(1, min(chunk_size, n_steps))
    pad = (-n_steps) % ell
    if pad:
        widths = lambda a: [(0, pad)] + [(0, 0)] * (a.ndim - 1)  # noqa: E731
        q, k, v, o, li, lf = (jnp.pad(a, widths(a)) for a in (q, k, v, o, li, lf))
        reset_TxB, valid_TxB = jnp.pad(reset_TxB, widths(reset_TxB)), jnp.pad(valid_TxB, widths(valid_TxB))
    valid = valid_TxB[:, :, None]
    lf = jnp.where(valid, lf, 0.0)  # past the length: f = 1, i = 0, the state stays
    li = jnp.where(valid, li, _NEG)
    n_chunks = (n_steps + pad) // ell

    def chunks(a):  # T x B x rest -> n_chunks x B x rest[0] x L x rest[1:] (rest: K[, d])
        a = a.reshape((n_chunks, ell) + a.shape[1:])
        return jnp.moveaxis(a, 1, 3) if a.ndim > 3 else jnp.moveaxis(a, 1, 2)

    qc, kc, vc, oc = (chunks(a) for a in (q, k, v, o))  # n_chunks x B x K x L x d
    lic, lfc = (chunks(a) for a in (li, lf))  # n_chunks x B x K x L
    rc = jnp.broadcast_to(chunks(reset_TxB)[:, :, None, :], lic.shape)  # n_chunks x B x K x L
    okc = chunks(valid_TxB)  # n_chunks x B x L
    c0 = c0.reshape(batch, heads, d, d)
    n0 = n0.reshape(batch, heads, d)
    t_idx = jnp.arange(ell)
    causal = t_idx[:, None] >= t_idx[None, :]

    def one_chunk(state, inputs):
        c_in, n_in, m_in, h_in = state  # B x K x d x d, B x K x d, B x K, B x H
        qx, kx, vx, ox, lix, lfx, rx, validx = inputs
        b = jnp.cumsum(lfx, axis=-1)  # B x K x L
        # the last reset at or before t (-1: none in this chunk) and b just before it
        last = jax.lax.cummax(jnp.where(rx, t_idx, -1), axis=rx.ndim - 1)
        b_before = jnp.where(last >= 0, jnp.take_along_axis(b - lfx, jnp.maximum(last, 0), axis=-1), 0.0)
        reset_seen = last >= 0
        g = jnp.where(reset_seen, m0[..., None] + b - b_before, m_in[..., None] + b)  # B x K x L
        same = last[..., :, None] <= t_idx  # s >= last reset before t
        mask = causal & same
        dmat = jnp.where(mask, b[..., :, None] - b[..., None, :] + lix[..., None, :], _NEG)  # B x K x L(t) x L(s)
        m = jnp.maximum(g, jnp.max(dmat, axis=-1))
        w = jnp.exp(dmat - m[..., None])  # B x K x L x L
        w_in = jnp.exp(g - m)  # B x K x L
        # the state entering step t's read-out: carry0 after a reset in the chunk, else the chunk's
        # incoming state; read out as C q for both and then chosen, never a d x d state per step
        c_q = jnp.where(reset_seen[..., None], jnp.einsum("bkvd,bktd->bktv", c0, qx),
                        jnp.einsum("bkvd,bktd->bktv", c_in, qx))  # B x K x L x d
        n_q = jnp.where(reset_seen, jnp.einsum("bkd,bktd->bkt", n0, qx), jnp.einsum("bkd,bktd->bkt", n_in, qx))
        scores = jnp.einsum("bktd,bksd->bkts", qx, kx) * w
        num = jnp.einsum("bkts,bksv->bktv", scores, vx) + w_in[..., None] * c_q
        den = jnp.sum(scores, axis=-1) + w_in * n_q
        h = ox * num / jnp.maximum(jnp.abs(den), jnp.exp(-m))[..., None]  # B x K x L x d
        # the state after the chunk's last step
        w_end, g_end, m_end = w[..., -1, :], w_in[..., -1], m[..., -1]
        end_reset = reset_seen[..., -1]  # B x K: a reset in the chunk, so the chunk ends from carry0
        c_end = jnp.where(end_reset[..., None, None], c0, c_in)
        n_end = jnp.where(end_reset[..., None], n0, n_in)
        c_out = g_end[..., None, None] * c_end + jnp.einsum("bks,bksv,bksd->bkvd", w_end, vx, kx)
        n_out = g_end[..., None] * n_end + jnp.einsum("bks,bksd->bkd", w_end, kx)
        # h in the carry: the output of the chunk's last valid step, h0 if a reset came after it
        h_bl = jnp.moveaxis(h, 2, 1).reshape(batch, ell, heads * d)  # B x L x H
        last_valid = jnp.max(jnp.where(validx, t_idx, -1), axis=-1)  # B
        last_reset = jnp.max(jnp.where(rx[:, 0], t_idx, -1), axis=-1)
        h_valid = jnp.take_along_axis(h_bl, jnp.maximum(last_valid, 0)[:, None, None], axis=1)[:, 0]
        h_out = jnp.where((last_valid >= last_reset)[:, None] & (last_valid >= 0)[:, None], h_valid,
                          jnp.where((last_reset >= 0)[:, None], h0, h_in))
        return (c_out, n_out, m_end, h_out), h

    state0 = (c0, n0, m0, h0)
    (c_t, n_t, m_t, h_t), h = jax.lax.scan(one_chunk, state0, (qc, kc, vc, oc, lic, lfc, rc, okc))
    # h: n_chunks x B x K x L x d -> T x B x H
    h = jnp.moveaxis(h, 3, 1).reshape(n_chunks * ell, batch, heads, d)[:n_steps]
    hs = h.reshape(n_steps, batch, heads * d)
    return (c_t.reshape(batch, -1), n_t.reshape(batch, -1), m_t, h_t), hs
