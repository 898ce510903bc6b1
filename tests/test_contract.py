"""Generic contract tests, run over every cell file in rnnlab/cells by listing the
package: a new cell is tested with no edit here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnlab import cells, scan

T, B, D, H = 7, 3, 4, 5
ALL_CELLS = cells.available()


def _setup(name, dtype=jnp.float32, seed=0):
    cell = cells.get(name)
    kp, kx, kc = jax.random.split(jax.random.key(seed), 3)
    params = cell.init(kp, D, H, dtype=dtype)
    xs = jax.random.normal(kx, (T, B, D), dtype)
    carry0 = jax.tree.map(
        lambda z: 0.3 * jax.random.normal(kc, z.shape, jnp.promote_types(z.dtype, dtype)),
        cell.initial_carry(B, H),
    )
    return cell, params, xs, carry0


def _python_loop(cell, params, carry, xs):
    xp = cell.precompute(params, xs)
    hs = []
    for t in range(xs.shape[0]):
        carry, h = cell.step(params, carry, xp[t])
        hs.append(h)
    return carry, jnp.stack(hs)


def _allclose(a, b, tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def test_registry_lists_the_three_foundation_cells():
    assert {"elman", "lstm", "gru"} <= set(ALL_CELLS)


@pytest.mark.parametrize("name", ALL_CELLS)
def test_shapes_dtypes_and_jit(name):
    cell, params, xs, carry0 = _setup(name)
    run = jax.jit(lambda p, c, x: scan.run(cell, p, c, x))
    carry, hs = run(params, carry0, xs)
    assert hs.shape == (T, B, H) and hs.dtype == jnp.float32  # x64 is on: no silent upcast
    assert jax.tree.structure(carry) == jax.tree.structure(carry0)
    # Carry leaves are B x (their own width): most are B x H; LSTMP's cell is
    # wider than its projection, LRU's state has state_size units.
    for c, c0 in zip(jax.tree.leaves(carry), jax.tree.leaves(carry0), strict=True):
        assert c.shape == c0.shape and c.ndim == 2 and c.shape[0] == B and c.dtype == jnp.float32
    for c in jax.tree.leaves(cell.initial_carry(B, H)):
        assert c.dtype == jnp.float32 and not np.any(np.asarray(c))


@pytest.mark.parametrize("name", ALL_CELLS)
def test_scan_equals_python_loop(name):
    cell, params, xs, carry0 = _setup(name, jnp.float64)
    _allclose(scan.run(cell, params, carry0, xs), _python_loop(cell, params, carry0, xs), 1e-12)


@pytest.mark.parametrize("name", ALL_CELLS)
def test_chunked_scan_passing_carry_equals_one_scan(name):
    cell, params, xs, carry0 = _setup(name, jnp.float64)
    full_carry, full_hs = scan.run(cell, params, carry0, xs)
    c1, h1 = scan.run(cell, params, carry0, xs[:3])
    c2, h2 = scan.run(cell, params, c1, xs[3:])
    _allclose((c2, jnp.concatenate([h1, h2])), (full_carry, full_hs), 1e-12)


@pytest.mark.parametrize("name", ALL_CELLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_lengths_equal_running_each_sequence_alone(name, reverse):
    cell, params, xs, carry0 = _setup(name, jnp.float64)
    lengths = jnp.array([T, 4, 0])
    carry, hs = scan.run(cell, params, carry0, xs, lengths_B=lengths, reverse=reverse)
    for b, n in enumerate(np.asarray(lengths)):
        cb = jax.tree.map(lambda c: c[b : b + 1], carry0)
        ref_c, ref_h = scan.run(cell, params, cb, xs[:n, b : b + 1], reverse=reverse)
        _allclose(jax.tree.map(lambda c: c[b : b + 1], carry), ref_c, 1e-12)
        _allclose(hs[:n, b : b + 1], ref_h, 1e-12)
        assert not np.any(np.asarray(hs[n:, b])), "outputs past the length must be zero"


@pytest.mark.parametrize("name", ALL_CELLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_padding_values_change_no_output_and_no_gradient(name, reverse):
    cell, params, xs, carry0 = _setup(name, jnp.float64)
    lengths = jnp.array([T, 3, 5])
    pad = jnp.arange(T)[:, None, None] >= lengths[None, :, None]
    xs_noise = jnp.where(pad, 1e3 * jax.random.normal(jax.random.key(9), xs.shape, xs.dtype), xs)

    def loss(p, x):
        carry, hs = scan.run(cell, p, carry0, x, lengths_B=lengths, reverse=reverse)
        return jnp.sum(jnp.sin(hs)) + sum(jnp.sum(c**2) for c in jax.tree.leaves(carry))

    (l1, (gp1, gx1)), (l2, (gp2, gx2)) = (
        jax.value_and_grad(loss, argnums=(0, 1))(params, x) for x in (xs, xs_noise)
    )
    _allclose((l1, gp1), (l2, gp2), 1e-12)
    assert not np.any(np.asarray(jnp.where(pad, gx1, 0.0))), "padded inputs must get zero gradient"
    _allclose(jnp.where(pad, 0.0, gx1), jnp.where(pad, 0.0, gx2), 1e-12)


@pytest.mark.parametrize("name", ALL_CELLS)
def test_gradients_finite_and_reach_every_parameter(name):
    cell, params, xs, carry0 = _setup(name)
    grads = jax.grad(lambda p: jnp.sum(scan.run(cell, p, carry0, xs)[1] ** 2))(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(np.asarray(g))), path
        assert np.any(np.asarray(g) != 0), f"{jax.tree_util.keystr(path)} gets no gradient"


@pytest.mark.parametrize("name", ALL_CELLS)
def test_float64_gradients_match_finite_differences(name):
    cell, params, xs, carry0 = _setup(name, jnp.float64, seed=3)
    loss = jax.jit(lambda p: jnp.sum(jnp.tanh(scan.run(cell, p, carry0, xs)[1]) * jnp.arange(H)))
    grads = jax.grad(loss)(params)
    rng = np.random.default_rng(0)
    for path, w in jax.tree_util.tree_leaves_with_path(params):
        flat_idx = rng.integers(w.size, size=3)
        for i in flat_idx:
            idx = np.unravel_index(i, w.shape)
            eps = 1e-6  # central differences: truncation ~1e-12, roundoff ~1e-10 in float64
            bump = lambda s: jax.tree_util.tree_map_with_path(
                lambda q, v: v.at[idx].add(s * eps) if q == path else v, params
            )
            fd = (loss(bump(1)) - loss(bump(-1))) / (2 * eps)
            np.testing.assert_allclose(grads_at(grads, path)[idx], fd, rtol=1e-6, atol=1e-8)


def grads_at(tree, path):
    return dict(jax.tree_util.tree_leaves_with_path(tree))[path]
