"""Parity with flax.linen: LSTMCell, OptimizedLSTMCell and GRUCell, one step and
over sequences via ``nn.RNN`` (full length and ``seq_lengths``) and
``nn.Bidirectional``, outputs, carries and gradients (w.r.t. parameters, inputs
and initial carries); weights travel both ways with ``convert.from_flax`` /
``convert.to_flax``. Also the rnnlab Flax module ``RecurrentStack``: its parameter
tree, its agreement with ``Stack.apply`` and with flax's own cells.

float32 is compared to 1e-5 (1e-6 for a single step), float64 (flax's
``param_dtype``) to 1e-10. Every parameter, biases included, is random (flax
initialises biases to zero, which would hide a bias that a converter drops or
misplaces). Parameter trees come from ``jax.eval_shape`` of flax's own ``init``, so
names, shapes and dtypes are flax's, without paying for the initialisers.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiers import tiered

from rnnlab import RecurrentStack, Stack, cells, convert

T, B, D, H = 6, 3, 5, 4
LENGTHS = np.array([6, 2, 4])  # unsorted; >= 1 (flax takes the carry at index length - 1)
DIRS = ("forward", "backward")

DTYPES = {"float32": (jnp.float32, 1e-5), "float64": (jnp.float64, 1e-10)}
FLAX_CELLS = {
    "LSTMCell": (nn.LSTMCell, "lstm"),
    "OptimizedLSTMCell": (nn.OptimizedLSTMCell, "lstm"),
    "GRUCell": (nn.GRUCell, "gru"),
}


def assert_close(actual, expected, tol, what=""):
    assert jax.tree.structure(actual) == jax.tree.structure(expected), what
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        a, e = np.asarray(a), np.asarray(e)
        assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol, err_msg=what)


def random_like(tree, seed: int, scale: float = 0.5):
    """Random arrays with the shapes and dtypes of ``tree`` (arrays or ShapeDtypeStructs)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(scale * rng.normal(size=a.shape), a.dtype), tree)


def random_carry(name: str, batch: int, dtype, seed: int):
    """A random carry in rnnlab's = flax's layout: (c, h) for LSTM, h for GRU."""
    rng = np.random.default_rng(seed)
    c, h = (jnp.asarray(rng.normal(size=(batch, H)), dtype) for _ in range(2))
    return (c, h) if name == "lstm" else h


def flax_cell(kind: str, dtype):
    ctor, name = FLAX_CELLS[kind]
    return ctor(features=H, param_dtype=dtype), name


def flax_cell_params(kind: str, dtype, d_in: int = D, seed: int = 0):
    """Random params in the tree flax's own ``init`` builds for this cell."""
    cell, name = flax_cell(kind, dtype)
    shapes = jax.eval_shape(
        cell.init, jax.random.PRNGKey(0), random_carry(name, B, dtype, 0), jnp.zeros((B, d_in), dtype)
    )
    return random_like(shapes["params"], seed)


def rnnlab_cell_shapes(name: str, dtype):
    """The tree rnnlab's own init builds for one layer (shapes only: eval_shape)."""
    return jax.eval_shape(lambda k: cells.get(name).init(k, D, H, dtype=dtype), jax.random.PRNGKey(0))


def random_xs(dtype, seed: int = 1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(T, B, D)), dtype)


def valid_TxB():
    return np.arange(T)[:, None] < LENGTHS[None, :]


def flax_bidirectional(cell, f_params, b_params, xs_BxTxD, lengths, carry_f, carry_b):
    """One flax bidirectional layer: ((carry_f, carry_b), outputs_BxTx2H)."""
    # two cell instances: one instance in both RNNs would share the forward params
    bi = nn.Bidirectional(nn.RNN(cell.clone()), nn.RNN(cell.clone()), return_carry=True)
    variables = {"params": {"forward_rnn": {"cell": f_params}, "backward_rnn": {"cell": b_params}}}
    return bi.apply(variables, xs_BxTxD, seq_lengths=lengths, initial_carry=(carry_f, carry_b))


# Each comparison runs both frameworks inside ONE jax.jit (conversions included): at these
# sizes compiling is the cost, and one program per test is much cheaper than one per call.

# --- one step ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", tiered(list(DTYPES), ("float64",)))
@pytest.mark.parametrize("kind", list(FLAX_CELLS))
def test_single_step_both_directions(kind, dtype):
    dt, _ = DTYPES[dtype]
    tol = 1e-6 if dtype == "float32" else 1e-10
    cell, name = flax_cell(kind, dt)
    rc = cells.get(name)
    carry, x = random_carry(name, B, dt, seed=2), random_xs(dt)[0]
    fp = flax_cell_params(kind, dt, seed=3)  # flax -> rnnlab
    p2 = random_like(rnnlab_cell_shapes(name, dt), seed=4)  # rnnlab -> flax

    @jax.jit
    def both(fp, p2, carry, x):
        def step(p):
            return rc.step(p, carry, rc.precompute(p, x[None])[0])

        fp2 = convert.to_flax(p2, name)
        return {
            "from_flax": (step(convert.from_flax({"params": fp}, name)), cell.apply({"params": fp}, carry, x)),
            "to_flax": (step(p2), cell.apply({"params": fp2}, carry, x)),
            "fp2": fp2,
        }

    out = both(fp, p2, carry, x)
    for direction in ("from_flax", "to_flax"):
        (new_carry, y), (ref_carry, ref_y) = out[direction]
        assert y.dtype == dt
        assert_close(y, ref_y, tol, f"{direction}: output")
        assert_close(new_carry, ref_carry, tol, f"{direction}: carry")
    # to_flax builds exactly the tree flax builds (names, shapes, dtypes)
    def spec(tree):
        return jax.tree.map(lambda a: (a.shape, a.dtype), tree)

    assert spec(out["fp2"]) == spec(fp)
    assert jax.tree.structure(convert.from_flax(fp, name)) == jax.tree.structure(p2)


@pytest.mark.parametrize("kind", list(FLAX_CELLS))
def test_from_flax_and_to_flax_are_inverse(kind):
    _, name = FLAX_CELLS[kind]
    fp = flax_cell_params(kind, jnp.float32)
    back = convert.to_flax(convert.from_flax(fp, name), name)
    assert jax.tree.structure(back) == jax.tree.structure(fp)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(fp), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    p = random_like(rnnlab_cell_shapes(name, jnp.float32), seed=1)
    again = convert.from_flax(convert.to_flax(p, name), name)
    assert jax.tree.structure(again) == jax.tree.structure(p)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(p), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- sequences: nn.RNN ------------------------------------------------------------


@pytest.mark.parametrize("dtype", tiered(list(DTYPES), ("float64",)))
@pytest.mark.parametrize("kind", list(FLAX_CELLS))
def test_rnn_over_sequence_and_with_seq_lengths(kind, dtype):
    dt, tol = DTYPES[dtype]
    cell, name = flax_cell(kind, dt)
    fp = flax_cell_params(kind, dt, seed=7)
    carry0 = random_carry(name, B, dt, seed=8)
    xs = random_xs(dt, seed=9)
    stack = Stack(name, D, H)

    @jax.jit
    def both(fp, carry0, xs):
        params = {"layer_0": {"forward": convert.from_flax(fp, name)}}
        carries = {"layer_0": {"forward": carry0}}
        flax_vars = {"params": {"cell": fp}}
        return {
            # full length, time-major
            "full": (
                stack.apply(params, xs, carries=carries),
                nn.RNN(cell, time_major=True, return_carry=True).apply(flax_vars, xs, initial_carry=carry0),
            ),
            # seq_lengths, batch-major (flax's default)
            "lengths": (
                stack.apply(params, xs, lengths_B=LENGTHS, carries=carries),
                nn.RNN(cell, return_carry=True).apply(
                    flax_vars, xs.swapaxes(0, 1), initial_carry=carry0, seq_lengths=LENGTHS
                ),
            ),
        }

    out = both(fp, carry0, xs)
    (ys, finals), (ref_carry, ref_ys) = out["full"]
    assert ys.dtype == dt
    assert_close(ys, ref_ys, tol, "outputs")
    assert_close(finals["layer_0"]["forward"], ref_carry, tol, "final carry")

    (ys_l, finals_l), (ref_carry_l, ref_ys_BxT) = out["lengths"]
    ref_ys_l = np.asarray(ref_ys_BxT).swapaxes(0, 1)
    valid = valid_TxB()
    assert_close(np.asarray(ys_l)[valid], ref_ys_l[valid], tol, "valid outputs")
    assert np.all(np.asarray(ys_l)[~valid] == 0), "rnnlab outputs past the length must be zero"
    # flax does not mask: past the length it keeps running over the padding, so there
    # its outputs are those of the unmasked run (nothing rnnlab defines; not compared)
    assert_close(ref_ys_l[~valid], np.asarray(ref_ys)[~valid], tol, "flax past the length")
    assert_close(finals_l["layer_0"]["forward"], ref_carry_l, tol, "final carry at the length")


# --- sequences: nn.Bidirectional, two stacked layers ---------------------------------


@pytest.mark.parametrize("dtype", tiered(list(DTYPES), ("float64",)))
@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell"])  # OptimizedLSTMCell: same params and math
def test_two_bidirectional_layers_with_seq_lengths(kind, dtype):
    """Stack(num_layers=2, bidirectional=True, merge='concat') against two
    nn.Bidirectional layers, each fed the previous one's (unmasked) outputs;
    layer_0 alone is the one-layer case."""
    dt, tol = DTYPES[dtype]
    cell, name = flax_cell(kind, dt)
    xs = random_xs(dt, seed=10)
    flax_params = [
        [flax_cell_params(kind, dt, d_in=D if i == 0 else 2 * H, seed=20 + 2 * i + j) for j in range(2)]
        for i in range(2)
    ]
    carries = {
        f"layer_{i}": {d: random_carry(name, B, dt, seed=40 + 2 * i + j) for j, d in enumerate(DIRS)}
        for i in range(2)
    }
    stack = Stack(name, D, H, num_layers=2, bidirectional=True, merge="concat")

    @jax.jit
    def both(flax_params, carries, xs):
        params = {
            f"layer_{i}": {d: convert.from_flax(fp, name) for d, fp in zip(DIRS, fps, strict=True)}
            for i, fps in enumerate(flax_params)
        }
        x, ref_finals = xs.swapaxes(0, 1), {}
        for i, (fp_f, fp_b) in enumerate(flax_params):
            c = carries[f"layer_{i}"]
            (cf, cb), x = flax_bidirectional(cell, fp_f, fp_b, x, LENGTHS, c["forward"], c["backward"])
            ref_finals[f"layer_{i}"] = {"forward": cf, "backward": cb}
        return stack.apply(params, xs, lengths_B=LENGTHS, carries=carries), (ref_finals, x.swapaxes(0, 1))

    (ys, finals), (ref_finals, ref_ys) = both(flax_params, carries, xs)
    valid = valid_TxB()
    assert ys.shape == (T, B, 2 * H) and ys.dtype == dt
    assert_close(np.asarray(ys)[valid], np.asarray(ref_ys)[valid], tol, "valid outputs")
    assert np.all(np.asarray(ys)[~valid] == 0)
    assert_close(finals, ref_finals, tol, "final carries")


@pytest.mark.parametrize("dtype", tiered(list(DTYPES), ("float64",)))
@pytest.mark.parametrize("kind", list(FLAX_CELLS))
def test_gradients_of_two_bidirectional_layers_with_seq_lengths(kind, dtype):
    """Gradients w.r.t. the parameters, the inputs and the initial carries of
    Stack(num_layers=2, bidirectional=True) equal flax's through two nn.Bidirectional
    layers with seq_lengths. The loss weighs every valid output and every final carry
    with random weights (flax's outputs past a length are not defined by rnnlab, so
    their weight is zero); rnnlab's parameter gradients are mapped into flax's tree
    with ``convert.to_flax`` (a re-layout: each flax parameter is one slice of an
    rnnlab array, so its gradient is the same slice of the rnnlab gradient)."""
    dt, tol = DTYPES[dtype]
    cell, name = flax_cell(kind, dt)
    xs = random_xs(dt, seed=60)
    flax_params = [
        [flax_cell_params(kind, dt, d_in=D if i == 0 else 2 * H, seed=61 + 2 * i + j) for j in range(2)]
        for i in range(2)
    ]
    carries = {
        f"layer_{i}": {d: random_carry(name, B, dt, seed=70 + 2 * i + j) for j, d in enumerate(DIRS)}
        for i in range(2)
    }
    rng = np.random.default_rng(80)
    w_out_TxBx2H = jnp.asarray(rng.normal(size=(T, B, 2 * H)) * valid_TxB()[:, :, None], dt)
    w_carries = random_like(carries, seed=81, scale=1.0)
    stack = Stack(name, D, H, num_layers=2, bidirectional=True, merge="concat")

    def weighted(ys_TxBx2H, finals):
        dots = jax.tree.map(lambda a, w: jnp.sum(a * w), finals, w_carries)
        return jnp.sum(ys_TxBx2H * w_out_TxBx2H) + sum(jax.tree.leaves(dots))

    def rnnlab_loss(params, xs, carries):
        return weighted(*stack.apply(params, xs, lengths_B=LENGTHS, carries=carries))

    def flax_loss(flax_params, xs, carries):
        x, finals = xs.swapaxes(0, 1), {}
        for i, (fp_f, fp_b) in enumerate(flax_params):
            c = carries[f"layer_{i}"]
            (cf, cb), x = flax_bidirectional(cell, fp_f, fp_b, x, LENGTHS, c["forward"], c["backward"])
            finals[f"layer_{i}"] = {"forward": cf, "backward": cb}
        return weighted(x.swapaxes(0, 1), finals)

    @jax.jit
    def both(flax_params, xs, carries):
        params = {
            f"layer_{i}": {d: convert.from_flax(fp, name) for d, fp in zip(DIRS, fps, strict=True)}
            for i, fps in enumerate(flax_params)
        }
        ours = jax.value_and_grad(rnnlab_loss, argnums=(0, 1, 2))(params, xs, carries)
        theirs = jax.value_and_grad(flax_loss, argnums=(0, 1, 2))(flax_params, xs, carries)
        return ours, theirs

    (loss, (g_params, g_xs, g_carries)), (ref_loss, (ref_g_params, ref_g_xs, ref_g_carries)) = both(
        flax_params, xs, carries)
    assert_close(loss, ref_loss, tol, "loss")
    mapped = [[convert.to_flax(g_params[f"layer_{i}"][d], name) for d in DIRS] for i in range(2)]
    assert_close(mapped, ref_g_params, tol, "d loss / d params (in flax's tree)")
    assert_close(g_xs, ref_g_xs, tol, "d loss / d xs")
    assert_close(g_carries, ref_g_carries, tol, "d loss / d initial carries")
    # not a comparison of zeros: every parameter array gets a gradient, padding gets none
    assert all(np.abs(np.asarray(g)).max() > 1e-3 for g in jax.tree.leaves(g_params))
    assert np.all(np.asarray(g_xs)[~valid_TxB()] == 0) and np.abs(np.asarray(g_xs)).max() > 1e-3


# --- the rnnlab Flax module ----------------------------------------------------------


@pytest.mark.parametrize("dtype", tiered(list(DTYPES), ("float64",)))
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_recurrent_stack_module(name, dtype):
    """Parameter tree, and the same outputs and carries as Stack.apply with the same
    params (Stack is compared with flax's cells above, the module with flax below)."""
    dt, tol = DTYPES[dtype]
    module = RecurrentStack(cell=name, features=H, num_layers=2, bidirectional=True, param_dtype=dt)
    xs_BxTxD = random_xs(dt, seed=11).swapaxes(0, 1)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), xs_BxTxD, LENGTHS)

    # parameter tree: params/layer_i/forward|backward/{w_x_DxG, w_h_HxG, b_G[, b_hn_H]}
    n_g = {"lstm": 4, "gru": 3}[name]
    expected = {}
    for i in range(2):
        leaf = {"w_x_DxG": (D if i == 0 else 2 * H, n_g * H), "w_h_HxG": (H, n_g * H), "b_G": (n_g * H,)}
        if name == "gru":
            leaf["b_hn_H"] = (H,)
        expected[f"layer_{i}"] = {d: {k: (s, dt) for k, s in leaf.items()} for d in DIRS}
    assert jax.tree.map(lambda a: (a.shape, a.dtype), shapes) == {"params": expected}

    variables = random_like(shapes, seed=12)
    carries = {
        f"layer_{i}": {d: random_carry(name, B, dt, seed=50 + 2 * i + j) for j, d in enumerate(DIRS)}
        for i in range(2)
    }
    stack = Stack(name, D, H, num_layers=2, bidirectional=True)

    @jax.jit
    def both(variables, carries, xs_BxTxD):
        return (
            module.apply(variables, xs_BxTxD, LENGTHS, carries=carries),
            stack.apply(variables["params"], xs_BxTxD.swapaxes(0, 1), lengths_B=LENGTHS, carries=carries),
        )

    (ys, finals), (ys_s, finals_s) = both(variables, carries, xs_BxTxD)
    assert ys.shape == (B, T, 2 * H) and ys.dtype == dt
    assert all(a.dtype == dt for a in jax.tree.leaves(finals))
    assert_close(ys, np.asarray(ys_s).swapaxes(0, 1), tol, "module vs Stack outputs")
    assert_close(finals, finals_s, tol, "module vs Stack carries")
    assert np.all(np.asarray(ys)[~valid_TxB().T] == 0)


@pytest.mark.parametrize("dtype", tiered(list(DTYPES), ("float64",)))
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_recurrent_stack_defaults_match_flax(name, dtype):
    """Time-major input, no carries given: the module starts from zeros, as flax's
    initialize_carry does (in float64 too: the default carry must not truncate a
    float64 model to float32)."""
    dt, tol = DTYPES[dtype]
    module = RecurrentStack(cell=name, features=H, param_dtype=dt, time_major=True)
    xs = random_xs(dt, seed=13)
    variables = random_like(jax.eval_shape(module.init, jax.random.PRNGKey(1), xs), seed=14)
    cell = {"lstm": nn.LSTMCell, "gru": nn.GRUCell}[name](features=H, param_dtype=dt)

    @jax.jit
    def both(variables, xs):
        fp = convert.to_flax(variables["params"]["layer_0"]["forward"], name)
        rnn = nn.RNN(cell, time_major=True, return_carry=True)
        return module.apply(variables, xs, LENGTHS), rnn.apply({"params": {"cell": fp}}, xs, seq_lengths=LENGTHS)

    (ys, finals), (ref_carry, ref_ys) = both(variables, xs)
    assert ys.shape == (T, B, H) and ys.dtype == dt
    assert all(a.dtype == dt for a in jax.tree.leaves(finals))
    valid = valid_TxB()
    assert_close(np.asarray(ys)[valid], np.asarray(ref_ys)[valid], tol, "outputs")
    assert_close(finals["layer_0"]["forward"], ref_carry, tol, "final carry")
