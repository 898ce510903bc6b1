"""The native CPU loop (rnnlab/native: rnn_cpu.cc, an XLA FFI custom call) against
autodiff of the plain step, in float32: outputs, final carries and gradients w.r.t.
every parameter, the initial carry and the inputs, under resets, lengths, reverse and a
recurrent dropout mask, at shapes that take each of its parallel plans (batch rows
split, units split with tails that are not a multiple of the vector width, one thread).
Results do not depend on the number of threads (bitwise), switching it off gives the
XLA fused layers, and a machine where it cannot be built falls back with a warning."""

import os
import platform
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiers import tiered

from rnnlab import cells, native, scan
from rnnlab.layers import Stack

pytestmark = pytest.mark.skipif(platform.system() != "Linux", reason="the native loop is built for Linux only")

# (T, B, D, H): rows split (B >= 16), units split (B < 16) with H % 32 != 0, one thread (small);
# the last: weights too big for the step GEMM's cache budget, so x is projected before the loop
SHAPES = [(7, 32, 6, 48), (6, 8, 5, 100), (5, 3, 4, 130), (4, 2, 3, 5), (3, 17, 600, 600)]
FAST_SHAPES = [(4, 2, 3, 5)]  # the fast tier: a tiny shape (the full suite: every panel case)


def test_it_builds_and_loads_here():
    assert native.available(), "see the RuntimeWarning: rnn_cpu.cc did not build or load"


def _problem(name, shape, seed=0):
    t, b, d, h = shape
    cell = cells.get(name)
    k = jax.random.split(jax.random.key(seed), 8)
    f32 = jnp.float32
    params = cell.init(k[0], d, h, dtype=f32)
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(k[1], p.shape, f32), params)
    xs = jax.random.normal(k[2], (t, b, d), f32)
    carry0 = jax.tree.map(lambda z: 0.5 * jax.random.normal(k[3], z.shape, f32), cell.initial_carry(b, h))
    r = jax.random.normal(k[4], (t, b, h), f32)
    rc = jax.tree.map(lambda z: jax.random.normal(k[5], z.shape, f32), carry0)
    features = {
        "reverse": True,
        "lengths_B": (np.arange(b) * 3) % (t + 1),
        "reset_TxB": np.asarray(jax.random.bernoulli(k[6], 0.25, (t, b))),
        "h_mask_BxH": np.asarray(jax.random.bernoulli(k[7], 0.7, (b, h)), np.float32) / 0.7,
    }
    return cell, params, xs, carry0, r, rc, features


def _loss_fn(cell, r, rc, fused_on, kw):
    def loss(p, c0, x):
        carry, hs = scan.run(cell, p, c0, x, fused=fused_on, **kw)
        fin = sum(jnp.sum(a * b) for a, b in zip(jax.tree.leaves(carry), jax.tree.leaves(rc), strict=True))
        return jnp.sum(hs * r) + fin, (carry, hs)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def _run(cell, params, xs, carry0, r, rc, fused_on, kw):
    fn = _loss_fn(cell, r, rc, fused_on, kw)
    hlo = fn.lower(params, carry0, xs).as_text()
    return fn(params, carry0, xs), hlo


def _close(a, b, tol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        np.testing.assert_allclose(x, y, rtol=tol, atol=tol * max(1.0, float(np.max(np.abs(x)))))


@pytest.mark.parametrize("name", native.CELLS)
@pytest.mark.parametrize("shape", tiered(SHAPES, FAST_SHAPES), ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("features", ["plain", "all"])
def test_native_equals_autodiff_of_the_step(name, shape, features):
    cell, params, xs, carry0, r, rc, feats = _problem(name, shape)
    kw = feats if features == "all" else {}
    ref, _ = _run(cell, params, xs, carry0, r, rc, False, kw)
    got, hlo = _run(cell, params, xs, carry0, r, rc, True, kw)
    assert f"rnnlab_{name}_forward" in hlo and f"rnnlab_{name}_backward" in hlo  # the native loop ran
    _close(got, ref)


@pytest.mark.parametrize("name", native.CELLS)
@pytest.mark.parametrize("shape", tiered(SHAPES, FAST_SHAPES), ids=lambda s: "x".join(map(str, s)))
def test_forward_only_keeps_nothing_and_equals_the_step(name, shape):
    """Without a backward pass the native call writes no residual (the '_infer' target)."""
    cell, params, xs, carry0, _, _, feats = _problem(name, shape, seed=2)
    fn = lambda fused_on: jax.jit(lambda p, c, x: scan.run(cell, p, c, x, fused=fused_on, **feats))
    hlo = fn(True).lower(params, carry0, xs).as_text()
    assert f"rnnlab_{name}_infer" in hlo and f"rnnlab_{name}_forward" not in hlo
    _close(fn(True)(params, carry0, xs), fn(False)(params, carry0, xs))


@pytest.mark.parametrize("name", native.CELLS)
@pytest.mark.parametrize("shape", tiered(SHAPES[:3], FAST_SHAPES), ids=lambda s: "x".join(map(str, s)))
def test_results_do_not_depend_on_the_thread_count(name, shape, monkeypatch):
    cell, params, xs, carry0, r, rc, feats = _problem(name, shape, seed=1)
    out = {}
    for n in ("1", "2", "3"):
        monkeypatch.setenv("RNNLAB_NATIVE_THREADS", n)  # read at trace time: a fresh jit each
        out[n], _ = _run(cell, params, xs, carry0, r, rc, True, feats)
    for n in ("2", "3"):
        for a, b in zip(jax.tree.leaves(out["1"]), jax.tree.leaves(out[n]), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", native.CELLS)
@pytest.mark.parametrize("shape", tiered(SHAPES, FAST_SHAPES), ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("padding", ["much", "one_row"])
def test_padding_takes_no_part_in_the_gemms_and_changes_no_bit(name, shape, padding):
    """native.options(skip_padding=True): the steps past each sequence's end are left out of every GEMM
    (per step: the live rows gathered; over all steps: the live (t, b) rows packed, when
    more than 1/16 are padding). Outputs, final carries and every gradient equal, to the
    bit, those of the same layer computing the padded steps and dropping them."""
    cell, params, xs, carry0, r, rc, feats = _problem(name, shape, seed=3)
    t, b = xs.shape[:2]
    if padding == "one_row":  # a few dead (t, b): below the packing threshold, only the per-step gather
        feats["lengths_B"] = np.where(np.arange(b) == b // 2, t - 1, t)
    out, infer = {}, {}
    for skip in (False, True):
        with native.options(skip_padding=skip):
            out[skip], hlo = _run(cell, params, xs, carry0, r, rc, True, feats)
            assert f"rnnlab_{name}_forward" in hlo and f"rnnlab_{name}_backward" in hlo
            infer[skip] = jax.jit(lambda p, c, x: scan.run(cell, p, c, x, fused=True, **feats))(params, carry0, xs)
    for a, c in zip(jax.tree.leaves((out[False], infer[False])), jax.tree.leaves((out[True], infer[True])),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))


@pytest.mark.slow
def test_members_under_vmap_are_one_native_call_each_with_the_plain_calls_results():
    """An ensemble's members vmapped over (as the speech model does): each member's layer is
    its own native call in the program (native.options' vmap_method), not a loop around one, and
    every member's outputs and gradients are bitwise those of calling it alone."""
    stack = Stack("gru", 6, 40, num_layers=1, bidirectional=True)
    params = jax.vmap(lambda k: stack.init(k, dtype=jnp.float32))(jax.random.split(jax.random.key(0), 3))
    xs = jax.random.normal(jax.random.key(1), (11, 16, 6), jnp.float32)
    r = jax.random.normal(jax.random.key(2), (11, 16, 80), jnp.float32)
    lengths = jnp.array([11, 3, 7, 1, 0, 11, 5, 9, 2, 11, 4, 6, 8, 10, 1, 11])

    def loss(p):
        ys, _ = stack.apply(p, xs, lengths_B=lengths)
        return jnp.sum(ys * r), ys

    def compiled(method):  # the optimised program: whiles and custom calls as XLA runs them
        with native.options(vmap_method=method):
            fn = jax.jit(jax.vmap(jax.value_and_grad(loss, has_aux=True)))
            return fn, fn.lower(params).compile().as_text()

    def calls(hlo, kind):
        return hlo.count(f'custom_call_target="rnnlab_gru_{kind}"')

    _, looped = compiled("sequential")  # the setting is seen although a layer was traced before
    assert " while(" in looped and calls(looped, "forward") == calls(looped, "backward") == 2  # one per direction
    vmapped, hlo = compiled(native.VMAP_METHOD_DEFAULT)
    assert " while(" not in hlo
    assert calls(hlo, "forward") == calls(hlo, "backward") == 3 * 2  # members x directions
    got = vmapped(params)
    for k in range(3):
        alone = jax.jit(jax.value_and_grad(loss, has_aux=True))(jax.tree.map(lambda a: a[k], params))
        for a, c in zip(jax.tree.leaves(alone), jax.tree.leaves(got), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(c)[k])


def test_stack_bidirectional_two_layers_uses_it_and_matches_autodiff():
    stack = Stack("lstm", 6, 40, num_layers=2, bidirectional=True)
    params = stack.init(jax.random.key(0), dtype=jnp.float32)
    xs = jax.random.normal(jax.random.key(1), (11, 16, 6), jnp.float32)
    lengths = jnp.array([11, 3, 7, 1, 0, 11, 5, 9, 2, 11, 4, 6, 8, 10, 1, 11])

    def loss(p, native_on):
        ys, _ = stack.apply(p, xs, lengths_B=lengths) if native_on else _unfused_apply(stack, p, xs, lengths)
        return jnp.sum(ys * jnp.cos(ys))

    got = jax.jit(jax.value_and_grad(lambda p: loss(p, True)))(params)
    ref = jax.jit(jax.value_and_grad(lambda p: loss(p, False)))(params)
    hlo = jax.jit(jax.grad(lambda p: loss(p, True))).lower(params).as_text()
    assert hlo.count("rnnlab_lstm_forward") == 4  # two layers x two directions
    _close(got, ref)


def _unfused_apply(stack, params, xs, lengths):
    orig = scan.run

    def unfused(*a, **k):
        return orig(*a, **{**k, "fused": False})

    scan.run = unfused
    try:
        return stack.apply(params, xs, lengths_B=lengths)
    finally:
        scan.run = orig


def test_switched_off_gives_the_xla_fused_layer(monkeypatch):
    cell, params, xs, carry0, r, rc, _ = _problem("gru", SHAPES[0])
    on, hlo_on = _run(cell, params, xs, carry0, r, rc, True, {})
    monkeypatch.setenv("RNNLAB_NATIVE", "0")
    off, hlo_off = _run(cell, params, xs, carry0, r, rc, True, {})
    assert "rnnlab_gru_forward" in hlo_on and "rnnlab_gru" not in hlo_off
    _close(on, off)


def test_float64_stays_on_the_xla_path():
    cell, params, xs, carry0, r, rc, _ = _problem("lstm", SHAPES[0])
    as64 = lambda t: jax.tree.map(lambda a: a.astype(jnp.float64), t)
    _, hlo = _run(cell, as64(params), as64(xs), as64(carry0), as64(r), as64(rc), True, {})
    assert "rnnlab_lstm" not in hlo


def test_a_machine_that_cannot_build_it_falls_back_with_a_warning(tmp_path):
    code = textwrap.dedent("""
        import warnings, jax, jax.numpy as jnp
        from rnnlab import scan, cells
        cell = cells.get("lstm")
        p = cell.init(jax.random.key(0), 3, 40)
        xs = jnp.ones((5, 16, 3), jnp.float32)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            txt = jax.jit(lambda p: scan.run(cell, p, cell.initial_carry(16, 40), xs)[1]).lower(p).as_text()
        assert "rnnlab_lstm" not in txt, "the native loop should not be used"
        assert any("native CPU loop is unavailable" in str(m.message) for m in w), [str(m.message) for m in w]
        print("fallback ok")
    """)
    env = {**os.environ, "CXX": "/bin/false", "RNNLAB_CACHE_DIR": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "fallback ok" in out.stdout
