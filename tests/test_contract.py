"""Generic contract tests, run over every cell file in rnnlab/cells by listing the
package: a new cell is tested with no edit here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiers import FAST_CELLS, tiered

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


@pytest.mark.parametrize("name", tiered(ALL_CELLS, FAST_CELLS))
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


@pytest.mark.parametrize("name", tiered(ALL_CELLS, FAST_CELLS))
def test_scan_equals_python_loop(name):
    cell, params, xs, carry0 = _setup(name, jnp.float64)
    _allclose(scan.run(cell, params, carry0, xs), _python_loop(cell, params, carry0, xs), 1e-12)


@pytest.mark.parametrize("name", tiered(ALL_CELLS, FAST_CELLS))
def test_chunked_scan_passing_carry_equals_one_scan(name):
    cell, params, xs, carry0 = _setup(name, jnp.float64)
    full_carry, full_hs = scan.run(cell, params, carry0, xs)
    c1, h1 = scan.run(cell, params, carry0, xs[:3])
    c2, h2 = scan.run(cell, params, c1, xs[3:])
    _allclose((c2, jnp.concatenate([h1, h2])), (full_carry, full_hs), 1e-12)


@pytest.mark.parametrize("name", tiered(ALL_CELLS, FAST_CELLS))
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


@pytest.mark.parametrize("name", tiered(ALL_CELLS, FAST_CELLS))
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


@pytest.mark.parametrize("name", tiered(ALL_CELLS, FAST_CELLS))
def test_gradients_finite_and_reach_every_parameter(name):
    cell, params, xs, carry0 = _setup(name)
    grads = jax.grad(lambda p: jnp.sum(scan.run(cell, p, carry0, xs)[1] ** 2))(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(np.asarray(g))), path
        assert np.any(np.asarray(g) != 0), f"{jax.tree_util.keystr(path)} gets no gradient"


@pytest.mark.parametrize("name", tiered(ALL_CELLS, FAST_CELLS))
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


# ----------------------------------------------------------------------------- the contract as code

_GOOD_CELL = '''
import jax.numpy as jnp

def init(key, d_in, d_h, *, scale: float = 1.0, dtype=jnp.float32):
    return {"w_x_DxG": scale * jnp.ones((d_in, d_h), dtype)}

def initial_carry(batch, d_h):
    return jnp.zeros((batch, d_h), jnp.float32)

def step(params, carry, xp_BxG):
    h = jnp.tanh(xp_BxG @ params["w_x_DxG"] + carry)
    return h, h
'''


def _cell_file(tmp_path, monkeypatch, name, code):
    """``code`` as the cell file ``name``.py on the package path (a name used once:
    modules are cached by name)."""
    (tmp_path / f"{name}.py").write_text(code)
    monkeypatch.setattr(cells, "__path__", [*cells.__path__, str(tmp_path)])
    return str(tmp_path / f"{name}.py")


def test_a_well_formed_temporary_cell_loads_and_runs(tmp_path, monkeypatch):
    _cell_file(tmp_path, monkeypatch, "tmpgood_ok", _GOOD_CELL)
    cell = cells.get("tmpgood_ok", scale=2)  # an int for a float option
    assert cell.spec.linear is None and cell.spec.fused is None and not cell.supports_recurrent_dropout
    params = cell.init(jax.random.key(0), D, H)
    np.testing.assert_array_equal(params["w_x_DxG"], 2.0)
    _, hs = scan.run(cell, params, cell.initial_carry(B, H), jnp.ones((T, B, D)))
    assert hs.shape == (T, B, H)


@pytest.mark.parametrize("case, code, function, hint", [
    ("nostep", _GOOD_CELL.replace("def step(", "def _helper("), "step", None),
    ("stepp", _GOOD_CELL.replace("def step(", "def stepp("), "step", "stepp"),
    ("typo_linear", _GOOD_CELL + "\ndef linear_coeficients(params, xp_TxBxG):\n    return xp_TxBxG, xp_TxBxG\n",
     "linear_coefficients", "linear_coeficients"),
    ("half_fused", _GOOD_CELL + "\nRECURRENT_PARAMS = ()\ndef fused_forward(params, carry_in, xp, hm):\n    pass\n",
     "fused_backward", None),
    ("orphan_extra", _GOOD_CELL + "\nLOG_SPACE = True\n", "linear_coefficients", None),
    ("arity", _GOOD_CELL.replace("def initial_carry(batch, d_h):", "def initial_carry(batch):"),
     "initial_carry", None),
])
def test_a_cell_file_that_breaks_the_contract_is_refused_naming_the_file_and_function(
        tmp_path, monkeypatch, case, code, function, hint):
    name = f"tmpbad_{case}"
    path = _cell_file(tmp_path, monkeypatch, name, code)
    assert name in cells.available()
    with pytest.raises(cells.CellContractError) as err:
        cells.get(name)
    message = str(err.value)
    assert path in message and f"`{function}`" in message, message
    if hint:
        assert f"`{hint}`" in message, message


def _what_ran(cell, params, carry0, xs, **kw) -> str:
    """Which implementation ``scan.run`` traced, read from its jaxpr."""
    text = str(jax.make_jaxpr(lambda p, c, x: scan.run(cell, p, c, x, **kw))(params, carry0, xs))
    if "rnnlab_" in text:  # the native FFI targets
        return "native"
    if "custom_vjp_call" in text:
        return "fused"
    if "cummax" in text:  # a chunkwise form (mLSTM): a scan over chunks, each with its last reset's cummax
        return "parallel"
    return "scan" if "scan[" in text else "parallel"


def _native_on() -> bool:
    from rnnlab import native

    return native.available() and jax.device_count() == 1 and jax.default_backend() == "cpu"


@pytest.mark.parametrize("name, dtype, steps, kw, expected, because", [
    ("lstm", jnp.float32, 6, {}, "native" if _native_on() else "fused", "native CPU code" if _native_on() else "XLA"),
    ("lstm", jnp.float64, 6, {}, "fused", "dtype float64"),
    ("lstm", jnp.float32, 6, {"fused_store": "recompute"}, "fused", "fused_store='recompute' (argument)"),
    ("lstm", jnp.float32, 6, {"fused": False}, "scan", "fused=False (argument)"),
    ("lstm", jnp.float32, 6, {"remat": 1}, "scan", "remat=1"),
    ("elman", jnp.float32, 6, {}, "scan", "elman has no fused layer"),
    ("gru", jnp.float64, 6, {}, "fused", "dtype float64"),
    ("rglru", jnp.float32, 512, {}, "parallel", "T=512"),
    ("rglru", jnp.float32, 512, {"path": "sequential"}, "scan", "path='sequential' (argument)"),
    ("rglru", jnp.float32, 8, {}, "scan", "T=8"),
    ("mingru", jnp.float32, 8, {"path": "parallel"}, "parallel", "path='parallel' (argument)"),
    ("mlstm", jnp.float32, 8, {}, "parallel", "chunkwise form on cpu, T=8"),
    ("mlstm", jnp.float32, 4, {}, "scan", "measured faster for T in [8, any]"),
    ("mlstm", jnp.float32, 8, {"path": "sequential"}, "scan", "path='sequential' (argument)"),
])
def test_choose_path_names_the_path_and_why_and_it_is_what_runs(name, dtype, steps, kw, expected, because):
    cell = cells.get(name)
    params = cell.init(jax.random.key(0), D, H, dtype=dtype)
    carry0 = jax.tree.map(lambda c: c.astype(dtype), cell.initial_carry(B, H))
    xs = jnp.zeros((steps, B, D), dtype)
    choice = scan.choose_path(cell, params, carry0, xs, **kw)
    assert choice.path == expected and because in choice.reason, choice
    assert _what_ran(cell, params, carry0, xs, **kw) == expected


def test_choose_path_reads_the_native_switch_from_the_environment(monkeypatch):
    cell = cells.get("lstm")
    params = cell.init(jax.random.key(0), D, H)
    monkeypatch.setenv("RNNLAB_NATIVE", "0")
    choice = scan.choose_path(cell, params, cell.initial_carry(B, H), jnp.zeros((T, B, D), jnp.float32))
    assert choice.path == "fused" and "RNNLAB_NATIVE=0 (environment)" in choice.reason


def test_cell_options_are_checked_against_their_defaults_types():
    from rnnlab import configs

    with pytest.raises(ValueError, match=r"cell 'lstm': option forget_bias='high' \(str\) must be a float, like "
                                         r"its default forget_bias=1.0; e.g\. .*cell_options='forget_bias=1.0'"):
        cells.get("lstm", **configs.parse_options("forget_bias=high"))
    with pytest.raises(ValueError, match=r"unknown option 'forget_bais' for cell 'lstm' \(did you mean "
                                         r"'forget_bias'\?\); it accepts \[.*'recurrent_init'\]"):
        cells.get("lstm", **configs.parse_options("forget_bais=0.5"))
    with pytest.raises(ValueError, match=r"option reset_after=1 \(int\) must be a bool"):
        cells.get("gru", reset_after=1)  # bool is strict: 1 is not True
    with pytest.raises(ValueError, match=r"option rank=2.5 \(float\) must be an int"):
        cells.get("mogrifier", rank=2.5)
    with pytest.raises(ValueError, match=r"cell 'elman': option nonlinearity='sigmoid' \(str\) must be one of "
                                         r"\['tanh', 'relu'\]"):
        cells.get("elman", **configs.parse_options("nonlinearity=sigmoid"))
    assert dict(cells.get("lstm", forget_bias=0).options)["forget_bias"] == 0  # an int is a float
    assert dict(cells.get("elman", nonlinearity="relu").options)["nonlinearity"] == "relu"


@pytest.mark.parametrize("name", tiered(ALL_CELLS, FAST_CELLS))
def test_the_probes_read_every_cell(name):
    """rnnlab.probes (gradient flow, the state's trajectory; the card's gradient section) works on
    every cell: a cell whose carry is a tuple says which part is its output (output_of_carry),
    and the probes' h at each step is the step's own output h (a Python loop of step); for the
    LRU, whose output also reads the input, the state [Re h, Im h]."""
    from rnnlab import probes

    cell, params, xs, _ = _setup(name)
    norms = np.asarray(probes.grad_norms_through_time(cell, params, xs, d_h=H).norms_T)
    assert norms.shape == (T,) and np.all(np.isfinite(norms)) and norms.max() > 0
    _, hs = probes.carry_trajectory(cell, params, xs, d_h=H)
    carry, want = cell.initial_carry(B, H), []
    xp = cell.precompute(params, xs)
    for t in range(T):
        carry, h = cell.step(params, carry, xp[t])
        want.append(jnp.concatenate(carry, -1) if name == "lru" else h)
    np.testing.assert_allclose(np.asarray(hs), np.asarray(jnp.stack(want)), rtol=1e-5, atol=1e-6)
