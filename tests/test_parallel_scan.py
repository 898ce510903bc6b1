"""The parallel path of scan.run (one associative_scan over a linear cell's
coefficients) equals the sequential path of the same cell: outputs, final carry
and gradients, with document resets, variable lengths and both directions, in
float32 up to T = 4096; and in float64 it equals a plain Python loop of ``step``."""

import functools
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiers import FAST_CELLS, tiered

from rnnlab import cells, scan

_ROOT = pathlib.Path(__file__).resolve().parents[1]
LINEAR_CELLS = [n for n in cells.available() if cells.get(n).has_parallel]
B, D, H = 3, 4, 6


def test_the_linear_cells_are_registered_with_a_parallel_path():
    assert {"mingru", "minlstm", "lru", "rglru", "mlstm"} <= set(LINEAR_CELLS)  # mlstm: its chunkwise form
    assert not cells.get("lstm").has_parallel and not cells.get("mlstm").has_linear


def _problem(name, n_steps, dtype, seed=0):
    cell = cells.get(name)
    kp, kx, kc, kr = jax.random.split(jax.random.key(seed), 4)
    params = cell.init(kp, D, H, dtype=dtype)
    xs = jax.random.normal(kx, (n_steps, B, D), dtype)
    carry0 = jax.tree.map(lambda z: 0.5 * jax.random.normal(kc, z.shape, dtype), cell.initial_carry(B, H))
    reset = jax.random.bernoulli(kr, min(8.0 / n_steps, 0.25), (n_steps, B))  # up to ~8 documents per row
    lengths = jnp.array([n_steps, n_steps // 2 + 1, 0])
    return cell, params, xs, carry0, reset, lengths


def _loss_and_grads(cell, params, carry0, xs, path, **kw):
    n_steps = xs.shape[0]
    w_T = jnp.cos(jnp.arange(n_steps) / 7.0)[:, None, None]  # every step's output matters

    def loss(p, c0, x):
        carry, hs = scan.run(cell, p, c0, x, path=path, **kw)
        return jnp.sum(jnp.sin(hs) * w_T) + sum(jnp.sum(jnp.cos(c)) for c in jax.tree.leaves(carry)), (carry, hs)

    # one compilation for outputs and gradients (the parallel path's backward takes most of it)
    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(params, carry0, xs)
    return out, grads


def _max_rel_err(a, b):
    """max |a - b| / max(|b|, 1) over each leaf: float32 sums of 4096 terms carry ~1e-7 relative noise."""
    errs = []
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        errs.append(np.max(np.abs(x - y), initial=0.0) / max(np.max(np.abs(y), initial=0.0), 1.0))
    return max(errs)


# Every cell in both directions at T = 5; at T = 4096 every cell once, the directions
# alternating over the cells (each 4096-step case compiles a long gradient: ~10-30 s on 2 cores).
FLOAT32_CASES = [(n, r, 5) for n in LINEAR_CELLS for r in (False, True)] + [
    (n, i % 2 == 1, 4096) for i, n in enumerate(LINEAR_CELLS) if cells.get(n).has_linear]


@pytest.mark.slow
@pytest.mark.parametrize("name,reverse,n_steps", FLOAT32_CASES)
def test_parallel_equals_sequential_float32(name, reverse, n_steps):
    cell, params, xs, carry0, reset, lengths = _problem(name, n_steps, jnp.float32)
    kw = dict(reset_TxB=reset, lengths_B=lengths, reverse=reverse)
    par_out, par_g = _loss_and_grads(cell, params, carry0, xs, "parallel", **kw)
    seq_out, seq_g = _loss_and_grads(cell, params, carry0, xs, "sequential", **kw)
    assert par_out[1].dtype == jnp.float32
    assert _max_rel_err(par_out, seq_out) < 1e-5
    assert _max_rel_err(par_g, seq_g) < 1e-5
    # past each length outputs are exactly zero and inputs get no gradient
    pad = np.arange(n_steps)[:, None] >= np.asarray(lengths)[None, :]
    assert not np.any(np.asarray(par_out[1])[pad])
    assert not np.any(np.asarray(par_g[2])[pad])


@pytest.mark.slow
def test_mlstm_chunkwise_at_4096_steps_in_float32_against_float64():
    """mLSTM's chunkwise form at T = 4096 in float32, resets and lengths, reversed: outputs
    equal to the sequential path to 1e-5; gradients within 2e-3 of the float64 answer, and at
    least as close to it as the sequential path's own float32 gradients. 1e-5 between the two
    float32 paths is not reachable: the normaliser's division by |n . q| amplifies rounding
    (benchmarks/mlstm_float32.py measures both paths against float64)."""
    cell, params, xs, carry0, reset, lengths = _problem("mlstm", 4096, jnp.float32)
    kw = dict(reset_TxB=reset, lengths_B=lengths, reverse=True)
    par_out, par_g = _loss_and_grads(cell, params, carry0, xs, "parallel", **kw)
    seq_out, seq_g = _loss_and_grads(cell, params, carry0, xs, "sequential", **kw)
    assert _max_rel_err(par_out, seq_out) < 1e-5
    to64 = lambda t: jax.tree.map(lambda a: a.astype(jnp.float64), t)  # noqa: E731  (the suite runs with x64 on)
    ref_out, ref_g = _loss_and_grads(cell, to64(params), to64(carry0), to64(xs), "sequential", **kw)
    assert _max_rel_err(par_out, ref_out) < 1e-5
    assert _max_rel_err(par_g, ref_g) < 2e-3
    assert _max_rel_err(par_g, ref_g) <= _max_rel_err(seq_g, ref_g)
    pad = np.arange(4096)[:, None] >= np.asarray(lengths)[None, :]
    assert not np.any(np.asarray(par_out[1])[pad]) and not np.any(np.asarray(par_g[2])[pad])


@pytest.mark.parametrize("name", tiered(LINEAR_CELLS, FAST_CELLS))
@pytest.mark.parametrize("reverse", [False, True])
def test_parallel_equals_python_loop_of_step_float64(name, reverse):
    """Trusted reference: one step at a time in Python, resets and lengths by hand."""
    n_steps = 9
    cell, params, xs, carry0, reset, lengths = _problem(name, n_steps, jnp.float64, seed=1)
    reset = reset.at[3, 0].set(True).at[6, 1].set(True)
    carry, hs = scan.run(cell, params, carry0, xs, reset_TxB=reset, lengths_B=lengths, reverse=reverse,
                         path="parallel")
    xp = cell.precompute(params, xs)
    for b in range(B):
        c = jax.tree.map(lambda v: v[b : b + 1], carry0)
        c0 = c
        n = int(lengths[b])
        order = range(n - 1, -1, -1) if reverse else range(n)
        ref = np.zeros((n_steps, H))
        for t in order:
            starts = bool(reset[t + 1, b]) if reverse and t + 1 < n_steps else (not reverse and bool(reset[t, b]))
            if starts:
                c = c0
            c, h = cell.step(params, c, xp[t, b : b + 1])
            ref[t] = np.asarray(h[0])
        if not reverse and np.any(np.asarray(reset[n:, b])):
            c = c0  # scan.run: a reset flag in the padding still resets the (frozen) carry
        np.testing.assert_allclose(np.asarray(hs[:, b]), ref, rtol=1e-10, atol=1e-12)
        for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(c), strict=True):
            np.testing.assert_allclose(np.asarray(got[b : b + 1]), np.asarray(want), rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_log_space_scan_survives_products_that_underflow():
    """minGRU with a_t = 1 - z_t ~ 1e-3 over 512 steps: prod a underflows float32
    (1e-3^512), which the log-space scan never forms; it still equals the loop."""
    cell, params, xs, carry0, reset, lengths = _problem("mingru", 512, jnp.float32)
    params = dict(params, b_G=params["b_G"].at[:H].set(7.0))  # z ~ 0.999
    seq = scan.run(cell, params, carry0, xs, path="sequential")
    par = scan.run(cell, params, carry0, xs, path="parallel")
    assert np.all(np.isfinite(np.asarray(par[1])))
    assert _max_rel_err(par, seq) < 1e-5


def test_path_errors_name_the_problem_and_the_fix():
    cell, params, xs, carry0, _, _ = _problem("mingru", 5, jnp.float32)
    with pytest.raises(ValueError, match="path must be one of"):
        scan.run(cell, params, carry0, xs, path="fast")
    lstm = cells.get("lstm")
    with pytest.raises(ValueError, match="no linear_coefficients.*path='sequential'"):
        scan.run(lstm, lstm.init(jax.random.key(0), D, H), lstm.initial_carry(B, H), xs, path="parallel")


def test_auto_path_follows_the_measured_rule():
    mingru, lru, rglru, lstm = (cells.get(n) for n in ("mingru", "lru", "rglru", "lstm"))
    assert not scan.prefer_parallel(lstm, 1024, "gpu")  # no linear recurrence, no parallel path
    p, xp = rglru.init(jax.random.key(0), D, H), jnp.zeros((8, B, 3 * H))
    assert scan.scan_kind(rglru, p, xp) == "real" and scan.scan_kind(mingru, p, xp) == "log"
    lp = lru.init(jax.random.key(0), D, H)
    assert scan.scan_kind(lru, lp, lru.precompute(lp, jnp.zeros((8, B, D)))) == "complex"
    assert scan.prefer_parallel(rglru, 1024, "cpu", "real")  # measured faster on CPU
    assert not scan.prefer_parallel(rglru, 64, "cpu", "real")  # unmeasured: sequential
    assert not scan.prefer_parallel(mingru, 1024, "cpu", "log")  # measured slower on CPU
    assert not scan.prefer_parallel(lru, 1024, "cpu", "complex")
    assert scan.prefer_parallel(mingru, 1024, "gpu", "log") and not scan.prefer_parallel(mingru, 16, "gpu", "log")
    mlstm = cells.get("mlstm")  # a chunkwise form: measured faster from T = 8 (parallel_scan_mlstm.md)
    assert scan.prefer_parallel(mlstm, 8, "cpu", "chunkwise") and not scan.prefer_parallel(mlstm, 1, "cpu", "chunkwise")
    assert not scan.prefer_parallel(lstm, 1024, "cpu", "chunkwise") and not scan.prefer_parallel(mlstm, 1024, "cpu")


def test_auto_takes_the_parallel_path_where_the_rule_says():
    """path='auto' runs the path prefer_parallel names: a parallel run's jaxpr
    holds no scan loop (the associative scan is unrolled slices), a sequential
    one does. On CPU at T=512: RG-LRU parallel, minGRU and LSTM sequential."""
    chosen = {}
    for name in ("rglru", "lstm", "mingru"):
        cell, params, xs, carry0, _, _ = _problem(name, 512, jnp.float32)
        jaxpr = jax.make_jaxpr(lambda p, x, c=cell, c0=carry0: scan.run(c, p, c0, x))(params, xs)
        kind = scan.scan_kind(cell, params, cell.precompute(params, xs)) if cell.has_linear else "real"
        chosen[name] = scan.prefer_parallel(cell, 512, kind=kind)
        assert ("scan" not in str(jaxpr)) == chosen[name], name
    if jax.default_backend() == "cpu":
        assert chosen == {"rglru": True, "lstm": False, "mingru": False}


@pytest.mark.slow
def test_benchmark_script_smoke(tmp_path):
    """benchmarks/parallel_scan.py end to end on tiny shapes (no timing asserted)."""
    out = tmp_path / "ps"
    proc = subprocess.run(
        [sys.executable, str(_ROOT / "benchmarks" / "parallel_scan.py"), "--cells", "mingru,lru", "--lengths", "8",
         "--batch", "2", "--hidden", "4", "--repeats", "1", "--warmup", "0", "--out", str(out)],
        cwd=_ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "ps.json").read_text())
    assert [(r["cell"], r["mode"]) for r in data["rows"]] == [
        ("mingru", "fwd"), ("mingru", "fwdbwd"), ("lru", "fwd"), ("lru", "fwdbwd")]
    for r in data["rows"]:
        assert r["max_rel_err"] < 1e-5 and r["median_ms"]["parallel"] > 0 and r["median_ms"]["sequential"] > 0
    assert "| mingru | 8 | fwd |" in (tmp_path / "ps.md").read_text()


def test_mlstm_one_chunk_from_constant_zeros_under_jit_equals_the_sequential_path():
    """A model starts from a constant zero carry, and a short sequence is one chunk: XLA:CPU
    miscompiled that case of the chunkwise form under jit (outputs off by up to 1e30, right op by
    op), which put the mLSTM's card at chance on pixel digits. The parameters are those of an
    mLSTM (heads=4) trained 300 steps on digits (tests/fixtures/mlstm_digits_trained.npz), the
    inputs the digits' validation images, the reference the jitted scan of ``step``."""
    from rnnlab.data import digits

    fixture = np.load(pathlib.Path(__file__).parent / "fixtures" / "mlstm_digits_trained.npz")
    params = {k: jnp.asarray(fixture[k]) for k in ("w_x_DxG", "b_G")}
    cell = cells.get("mlstm", heads=4)
    d_h = params["w_x_DxG"].shape[1] // 4 - 2
    xs_all = jnp.asarray(digits.digits_split("valid", order="pixel").xs_TxBxD)
    for batch, steps in ((32, 64), (16, 48)):  # one chunk of 64, padded or not
        xs = xs_all[:steps, :batch]

        def run(p, x, path, batch=batch):
            return scan.run(cell, p, cell.initial_carry(batch, d_h), x, path=path)[1]  # carry0: constant zeros

        chunkwise = jax.jit(functools.partial(run, path="parallel"))(params, xs)
        sequential = jax.jit(functools.partial(run, path="sequential"))(params, xs)
        assert scan.choose_path(cell, params, cell.initial_carry(batch, d_h), xs).path == "parallel"
        np.testing.assert_allclose(chunkwise, sequential, rtol=1e-5, atol=1e-5)
