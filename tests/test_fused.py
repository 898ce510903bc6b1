"""The fused layers (rnnlab.fused: custom VJP, state-only backward loop, one
weight GEMM) against autodiff of the plain step: same outputs, final carries and
gradients w.r.t. every parameter, the initial carry and the inputs, under every
feature scan.run has (resets, lengths, reverse, recurrent dropout mask,
unrolling, both storage modes), in float64 to 1e-10 and float32 to 1e-5."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiers import tiered

from rnnlab import cells, fused, scan
from rnnlab.layers import Stack

T, B, D, H = 9, 4, 3, 5
FUSED_CELLS = [n for n in cells.available() if fused.supports(cells.get(n))]


def test_lstm_and_gru_have_fused_layers_and_reset_before_gru_does_not():
    assert {"lstm", "gru"} <= set(FUSED_CELLS)
    assert not fused.supports(cells.get("gru", reset_after=False))
    assert not fused.supports(cells.get("elman"))


def _problem(name, dtype, seed=0, **cell_opts):
    cell = cells.get(name, **cell_opts)
    k = jax.random.split(jax.random.key(seed), 6)
    params = cell.init(k[0], D, H, dtype=dtype)
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(k[1], p.shape, dtype), params)  # nonzero biases
    xs = jax.random.normal(k[2], (T, B, D), dtype)
    carry0 = jax.tree.map(lambda z: 0.5 * jax.random.normal(k[3], z.shape, dtype), cell.initial_carry(B, H))
    r = jax.random.normal(k[4], (T, B, H), dtype)  # loss weights on the outputs
    rc = jax.tree.map(lambda z: jax.random.normal(k[5], z.shape, dtype), carry0)  # ... and on the final carry
    return cell, params, xs, carry0, r, rc


def _loss_and_grads(cell, params, xs, carry0, r, rc, fused_on, **kw):
    def loss(p, c0, x):
        carry, hs = scan.run(cell, p, c0, x, fused=fused_on, **kw)
        fin = sum(jnp.sum(a * b) for a, b in zip(jax.tree.leaves(carry), jax.tree.leaves(rc), strict=True))
        return jnp.sum(hs * r) + fin, (carry, hs)

    (val, aux), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(params, carry0, xs)
    return val, aux, grads


def _close(a, b, tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


CASES = {
    "plain": {},
    "reverse": {"reverse": True},
    "lengths": {"lengths_B": np.array([9, 4, 1, 0])},
    "lengths_reverse": {"lengths_B": np.array([9, 4, 1, 0]), "reverse": True},
    "resets": {"reset_TxB": np.eye(T, B, k=-2, dtype=bool) | np.eye(T, B, k=-6, dtype=bool)},
    "resets_reverse_lengths": {"reset_TxB": np.eye(T, B, k=-3, dtype=bool), "reverse": True,
                               "lengths_B": np.array([7, 9, 5, 2])},
    "recompute_unroll": {"fused_store": "recompute", "unroll": 3, "lengths_B": np.array([9, 4, 1, 3])},
}


@pytest.mark.parametrize("case", tiered(sorted(CASES), ("resets_reverse_lengths", "recompute_unroll")))
@pytest.mark.parametrize("name", FUSED_CELLS)
def test_fused_equals_autodiff_float64(name, case):
    cell, params, xs, carry0, r, rc = _problem(name, jnp.float64)
    kw = dict(CASES[case])
    ref = _loss_and_grads(cell, params, xs, carry0, r, rc, False, **{k: v for k, v in kw.items() if k != "fused_store"})
    got = _loss_and_grads(cell, params, xs, carry0, r, rc, True, **kw)
    _close(got, ref, 1e-10)
    grads = got[2]
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads[0])), "a parameter got no gradient"


@pytest.mark.parametrize("name", FUSED_CELLS)
def test_fused_with_recurrent_dropout_mask(name):
    cell, params, xs, carry0, r, rc = _problem(name, jnp.float64, seed=1)
    mask = jax.random.bernoulli(jax.random.key(7), 0.7, (B, H)).astype(jnp.float64) / 0.7
    ref = _loss_and_grads(cell, params, xs, carry0, r, rc, False, h_mask_BxH=mask)
    got = _loss_and_grads(cell, params, xs, carry0, r, rc, True, h_mask_BxH=mask)
    _close(got, ref, 1e-10)


@pytest.mark.parametrize("name", FUSED_CELLS)
def test_fused_float32(name):
    cell, params, xs, carry0, r, rc = _problem(name, jnp.float32, seed=2)
    ref = _loss_and_grads(cell, params, xs, carry0, r, rc, False, lengths_B=np.array([9, 8, 3, 5]))
    got = _loss_and_grads(cell, params, xs, carry0, r, rc, True, lengths_B=np.array([9, 8, 3, 5]))
    assert got[1][1].dtype == jnp.float32
    _close(got, ref, 1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", FUSED_CELLS)
def test_fused_stack_bidirectional_two_layers(name):
    """Through Stack (what models use): the fused path is the default."""
    stack = Stack(name, d_in=D, d_h=H, num_layers=2, bidirectional=True)
    params = stack.init(jax.random.key(3), jnp.float64)
    xs = jax.random.normal(jax.random.key(4), (T, B, D), jnp.float64)
    lengths = jnp.array([9, 6, 2, 7])
    r = jax.random.normal(jax.random.key(5), (T, B, 2 * H), jnp.float64)

    def loss(p, x, fused_on):
        import rnnlab.scan as s

        orig = s.run
        s.run = lambda *a, **k: orig(*a, **{**k, "fused": fused_on})
        try:
            return jnp.sum(stack.apply(p, x, lengths_B=lengths)[0] * r)
        finally:
            s.run = orig

    ref = jax.grad(loss, argnums=(0, 1))(params, xs, False)
    got = jax.grad(loss, argnums=(0, 1))(params, xs, True)
    _close(got, ref, 1e-10)


def test_unknown_store_is_refused():
    cell, params, xs, carry0, *_ = _problem("lstm", jnp.float32)
    with pytest.raises(ValueError, match="fused store"):
        scan.run(cell, params, carry0, xs, fused_store="disk")


REMAT_CASES = {
    "sqrt_chunks": {"remat": True},
    "chunks_of_4_padded": {"remat": 4, "lengths_B": np.array([9, 4, 1, 0])},  # 9 = 4 + 4 + 1 (+3 padding)
    "chunks_reverse_resets": {"remat": 4, "reverse": True,
                              "reset_TxB": np.eye(T, B, k=-3, dtype=bool) | np.eye(T, B, k=-4, dtype=bool),
                              "lengths_B": np.array([7, 9, 5, 2])},
    "chunks_resets": {"remat": 2, "reset_TxB": np.eye(T, B, k=-2, dtype=bool) | np.eye(T, B, k=-5, dtype=bool)},
    "per_step": {"remat": 1, "lengths_B": np.array([9, 4, 1, 3])},
}


@pytest.mark.parametrize("case", tiered(sorted(REMAT_CASES), ("chunks_reverse_resets",)))
@pytest.mark.parametrize("name", ["lstm", "gru", "elman"])
def test_rematerialised_chunks_equal_the_plain_scan(name, case):
    """Chunk boundaries at every position relative to resets, lengths, padding and
    the reverse direction (a reset inside a chunk goes back to the sequence's carry0)."""
    cell, params, xs, carry0, r, rc = _problem(name, jnp.float64, seed=4)
    kw = dict(REMAT_CASES[case])
    remat = kw.pop("remat")
    ref = _loss_and_grads(cell, params, xs, carry0, r, rc, False, **kw)
    got = _loss_and_grads(cell, params, xs, carry0, r, rc, True, remat=remat, **kw)
    _close(got, ref, 1e-10)


def test_remat_chunk_lengths():
    assert scan.remat_chunk(False, 10_000) == 0
    assert scan.remat_chunk(True, 10_000) == 100  # ceil(sqrt(T))
    assert scan.remat_chunk(250, 10_000) == 250 and scan.remat_chunk(50, 20) == 20
    with pytest.raises(ValueError, match="remat"):
        scan.remat_chunk(-3, 10)


def test_chunked_remat_allocates_a_fraction_of_the_plain_backward():
    """XLA's own accounting of the compiled gradient (deterministic, not a timing):
    sqrt(T) chunks keep O(sqrt(T)) carries instead of every step's gates."""
    t_long, b, d, h = 1024, 4, 8, 32
    cell = cells.get("lstm")
    params = cell.init(jax.random.key(0), d, h, dtype=jnp.float32)
    xs = jnp.ones((t_long, b, d), jnp.float32)
    carry0 = cell.initial_carry(b, h)

    def temp_bytes(remat):
        loss = lambda p, x: jnp.sum(scan.run(cell, p, carry0, x, remat=remat)[1] ** 2)
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, xs).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    plain, chunked = temp_bytes(False), temp_bytes(True)
    gates_bytes = t_long * b * 4 * h * 4  # one float32 (T, B, 4H) array: what a plain backward keeps
    assert plain >= gates_bytes and chunked < plain / 3, (plain, chunked)
