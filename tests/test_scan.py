"""The scan engine's own duties: resets, reverse, unroll/remat, dtype policy,
bad inputs. (Loop equality, chunking, lengths and padding are in test_contract.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnlab import cells, scan

T, B, D, H = 9, 3, 4, 6


def _setup(name="lstm", dtype=jnp.float64):
    cell = cells.get(name)
    kp, kx = jax.random.split(jax.random.key(1))
    params = cell.init(kp, D, H, dtype=dtype)
    xs = jax.random.normal(kx, (T, B, D), dtype)
    return cell, params, xs, cell.initial_carry(B, H)


def _close(a, b, tol=1e-12):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["lstm", "gru", "elman"])
def test_reset_at_t_equals_a_fresh_sequence_at_t(name):
    cell, params, xs, carry0 = _setup(name)
    reset = jnp.zeros((T, B), bool).at[4, 0].set(True).at[6, 2].set(True)
    carry, hs = scan.run(cell, params, carry0, xs, reset_TxB=reset)
    # sequence 0: [0, 4) then a fresh run over [4, T)
    _, h_a = scan.run(cell, params, cell.initial_carry(1, H), xs[:4, :1])
    c_b, h_b = scan.run(cell, params, cell.initial_carry(1, H), xs[4:, :1])
    _close(hs[:, :1], jnp.concatenate([h_a, h_b]))
    _close(jax.tree.map(lambda c: c[:1], carry), c_b)
    # sequence 1 has no reset: unchanged by the others'
    _close(hs[:, 1:2], scan.run(cell, params, cell.initial_carry(1, H), xs[:, 1:2])[1])


def test_reset_in_reverse_direction_splits_documents_the_same_way():
    cell, params, xs, carry0 = _setup()
    reset = jnp.zeros((T, B), bool).at[4, :].set(True)
    _, hs = scan.run(cell, params, carry0, xs, reset_TxB=reset, reverse=True)
    _, h_first = scan.run(cell, params, carry0, xs[:4], reverse=True)
    _, h_second = scan.run(cell, params, carry0, xs[4:], reverse=True)
    _close(hs, jnp.concatenate([h_first, h_second]))


def test_reverse_equals_running_the_flipped_sequence():
    cell, params, xs, carry0 = _setup("gru")
    c_rev, h_rev = scan.run(cell, params, carry0, xs, reverse=True)
    c_flip, h_flip = scan.run(cell, params, carry0, xs[::-1])
    _close((c_rev, h_rev), (c_flip, h_flip[::-1]))


def test_reverse_with_lengths_starts_at_each_sequence_end():
    cell, params, xs, carry0 = _setup()
    lengths = jnp.array([T, 5, 2])
    carry, hs = scan.run(cell, params, carry0, xs, lengths_B=lengths, reverse=True)
    for b, n in enumerate([T, 5, 2]):
        c_ref, h_ref = scan.run(cell, params, cell.initial_carry(1, H), xs[:n, b : b + 1][::-1])
        _close(hs[:n, b : b + 1], h_ref[::-1])
        _close(jax.tree.map(lambda c: c[b : b + 1], carry), c_ref)


@pytest.mark.parametrize("kw", [{"unroll": 4}, {"remat": True}, {"unroll": 3, "remat": True}])
def test_unroll_and_remat_change_nothing_but_cost(kw):
    cell, params, xs, carry0 = _setup()
    lengths = jnp.array([T, 5, 1])

    def loss(p, x, **k):
        c, hs = scan.run(cell, p, carry0, x, lengths_B=lengths, **k)
        return jnp.sum(hs**3) + jnp.sum(c[0])

    ref = jax.value_and_grad(loss, argnums=(0, 1))(params, xs)
    _close(jax.value_and_grad(lambda p, x: loss(p, x, **kw), argnums=(0, 1))(params, xs), ref)


def test_remat_recomputes_in_backward():
    cell, params, xs, carry0 = _setup()
    f = lambda p, remat: jnp.sum(scan.run(cell, p, carry0, xs, remat=remat)[1])
    assert "remat" not in str(jax.make_jaxpr(jax.grad(lambda p: f(p, False)))(params))
    assert "remat" in str(jax.make_jaxpr(jax.grad(lambda p: f(p, True)))(params))


def test_bfloat16_policy_keeps_float32_carry_and_stays_close():
    cell, params, xs, carry0 = _setup("lstm", jnp.float32)
    c32, h32 = scan.run(cell, params, carry0, xs)
    c16, h16 = scan.run(cell, params, carry0, xs, compute_dtype=jnp.bfloat16)
    assert h16.dtype == jnp.bfloat16
    assert all(c.dtype == jnp.float32 for c in jax.tree.leaves(c16))
    _close(h16.astype(jnp.float32), h32, tol=3e-2)
    _close(c16, c32, tol=3e-2)


def test_float64_params_keep_a_float64_carry():
    cell, params, xs, carry0 = _setup("lstm", jnp.float64)
    carry, _ = scan.run(cell, params, carry0, xs)  # carry0 is the float32 default
    assert all(c.dtype == jnp.float64 for c in jax.tree.leaves(carry))


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"xs": jnp.zeros((T, D))}, "xs_TxBxD must have rank 3"),
        ({"xs": jnp.zeros((T, B, D + 1))}, "expected d_in=4"),
        ({"lengths_B": jnp.array([T + 1, 1, 1])}, r"lengths_B must lie in \[0, T=9\]"),
        ({"lengths_B": jnp.array([-1, 1, 1])}, r"lengths_B must lie in \[0, T=9\]"),
        ({"lengths_B": jnp.array([1, 1])}, r"lengths_B must have shape \(batch,\)"),
        ({"lengths_B": jnp.array([1.0, 1.0, 1.0])}, "lengths_B must be integers"),
        ({"reset_TxB": jnp.zeros((T, B + 1), bool)}, "reset_TxB must have shape"),
    ],
)
def test_bad_inputs_raise_value_errors_naming_the_argument(bad, match):
    cell, params, xs, carry0 = _setup()
    kw = {k: v for k, v in bad.items() if k != "xs"}
    with pytest.raises(ValueError, match=match):
        scan.run(cell, params, carry0, bad.get("xs", xs), **kw)


def test_unknown_cell_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown cell 'lstn'; available cells: .*gru.*lstm"):
        cells.get("lstn")
    with pytest.raises(ValueError, match=r"unknown option 'forgetbias' for cell 'lstm' \(did you mean 'forget_bias'\?\)"):
        cells.get("lstm", forgetbias=1.0)


def test_concrete_lengths_captured_inside_jit_are_accepted():
    cell, params, xs, carry0 = _setup()
    lengths = jnp.array([T, 4, 2])  # a concrete array closed over by the jitted function
    carry, hs = jax.jit(lambda x: scan.run(cell, params, carry0, x, lengths_B=lengths))(xs)
    _close(hs, scan.run(cell, params, carry0, xs, lengths_B=lengths)[1])


def test_cells_with_equal_settings_are_equal():
    assert cells.get("elman") == cells.get("elman", nonlinearity="tanh")
    assert hash(cells.get("lstm")) == hash(cells.get("lstm", forget_bias=1.0))
    assert cells.get("lstm") != cells.get("lstm", forget_bias=0.0)
