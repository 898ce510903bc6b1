"""Stacks: merges, dropout kinds, carries for truncated BPTT, the Flax module."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnlab import RecurrentStack, Stack, scan

T, B, D, H = 8, 4, 3, 5


def _xs(dtype=jnp.float64):
    return jax.random.normal(jax.random.key(0), (T, B, D), dtype)


def _close(a, b, tol=1e-12):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def test_stack_equals_layers_composed_by_hand():
    stack = Stack("gru", D, H, num_layers=2, bidirectional=True, merge="sum")
    params, xs = stack.init(jax.random.key(1), jnp.float64), _xs()
    ys, finals = stack.apply(params, xs)
    x, cell = xs, stack.cell
    for i in range(2):
        p = params[f"layer_{i}"]
        cf, yf = scan.run(cell, p["forward"], cell.initial_carry(B, H), x)
        cb, yb = scan.run(cell, p["backward"], cell.initial_carry(B, H), x, reverse=True)
        x = yf + yb
        _close(finals[f"layer_{i}"], {"forward": cf, "backward": cb})
    _close(ys, x)
    assert stack.d_out == H and Stack("gru", D, H, bidirectional=True).d_out == 2 * H


def test_chunks_passing_final_carries_equal_one_long_run():
    """Truncated BPTT: per-layer carries returned by one chunk seed the next."""
    stack = Stack("lstm", D, H, num_layers=3)
    params, xs = stack.init(jax.random.key(2), jnp.float64), _xs()
    ys, finals = stack.apply(params, xs)
    y1, f1 = stack.apply(params, xs[:3])
    y2, f2 = stack.apply(params, xs[3:], carries=f1)
    _close((jnp.concatenate([y1, y2]), f2), (ys, finals))


def _mask_of(stack, xs, **kw):
    """Where the stack's output depends on the input: finite-difference free,
    we just compare train outputs with a deterministic run of a linear probe."""
    params = stack.init(jax.random.key(3), jnp.float64)
    return stack.apply(params, xs, rng=jax.random.key(4), train=True, **kw)[0]


def test_input_dropout_is_locked_one_mask_per_sequence():
    stack = Stack("elman", D, H, input_dropout=0.5)
    xs = _xs()
    grads = jax.grad(lambda x: jnp.sum(stack.apply(stack.init(jax.random.key(3)), x,
                                                    rng=jax.random.key(4), train=True)[0]))(xs)
    dropped_TxBxD = np.asarray(grads) == 0
    assert dropped_TxBxD.any() and not dropped_TxBxD.all()
    assert (dropped_TxBxD == dropped_TxBxD[:1]).all(), "variational: same mask at every step"


@pytest.mark.parametrize("kind, locked", [("standard", False), ("variational", True)])
def test_between_layer_dropout_kinds(kind, locked):
    stack = Stack("elman", D, H, num_layers=2, dropout=0.5, dropout_kind=kind)
    params = stack.init(jax.random.key(3))
    # gradient of layer-1 params w.r.t. layer-0 outputs is blocked where dropped;
    # probe it through the input weight of layer 1: d y1 / d w_x of layer 1 row j
    # is zero exactly where layer-0 output j was dropped at t=0 (first step).
    def first_step_out(p):
        return stack.apply(p, _xs(jnp.float32), rng=jax.random.key(4), train=True)[0]
    g = jax.jacrev(lambda w: first_step_out({**params, "layer_1": {"forward": {
        **params["layer_1"]["forward"], "w_x_DxG": w}}})[:, 0, 0])(params["layer_1"]["forward"]["w_x_DxG"])
    # g: T x H_in x G; input j of layer 1 at step t kept iff d y_t / d w[j, 0] != 0
    kept_TxH = np.asarray(g[:, :, 0]) != 0
    assert kept_TxH.any() and not kept_TxH.all()
    assert ((kept_TxH == kept_TxH[:1]).all()) == locked


def test_recurrent_dropout_one_mask_per_sequence_on_h():
    stack = Stack("lstm", D, H, recurrent_dropout=0.5)
    params = stack.init(jax.random.key(3), jnp.float64)
    xs = _xs()[:, :1]  # one sequence: its mask alone decides which rows of W_h are used
    out = lambda p: stack.apply(p, xs, rng=jax.random.key(4), train=True)[0]
    # A dropped h unit never reaches W_h at ANY step (one mask for the whole
    # sequence), so its row gets exactly zero gradient; kept rows do not.
    g = jax.grad(lambda w: jnp.sum(out({"layer_0": {"forward": {**params["layer_0"]["forward"], "w_h_HxG": w}}})))(
        params["layer_0"]["forward"]["w_h_HxG"])
    dead_rows = (np.asarray(g) == 0).all(axis=1)
    assert dead_rows.any() and not dead_rows.all()
    # Off at evaluation.
    ys_eval, _ = stack.apply(params, xs)
    ys_plain, _ = Stack("lstm", D, H).apply(params, xs)
    _close(ys_eval, ys_plain)


def test_dropout_is_deterministic_for_a_key_and_varies_across_keys():
    stack = Stack("gru", D, H, num_layers=2, dropout=0.3, input_dropout=0.2, output_dropout=0.2,
                  recurrent_dropout=0.2)
    params, xs = stack.init(jax.random.key(3)), _xs(jnp.float32)
    run = lambda k: stack.apply(params, xs, rng=jax.random.key(k), train=True)[0]
    _close(run(1), run(1), 0)
    assert not np.allclose(run(1), run(2))


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"dropout_kind": "zoneout"}, "dropout_kind must be one of"),
        ({"merge": "mul"}, "merge must be one of"),
        ({"dropout": 1.0}, r"dropout must be a rate in \[0, 1\)"),
        ({"num_layers": 0}, "num_layers must be >= 1"),
        ({"cell": "lstn"}, "unknown cell 'lstn'; available cells"),
    ],
)
def test_bad_stack_configs_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        Stack(**{"cell": "lstm", "d_in": D, "d_h": H, **kw})


def test_bad_apply_inputs_raise():
    stack = Stack("lstm", D, H)
    params = stack.init(jax.random.key(0))
    with pytest.raises(ValueError, match="expected d_in=3"):
        stack.apply(params, jnp.zeros((T, B, D + 2)))
    with pytest.raises(ValueError, match="rank 3"):
        stack.apply(params, jnp.zeros((B, D)))
    with pytest.raises(ValueError, match=r"lengths_B must lie in \[0, T=8\]"):
        stack.apply(params, jnp.zeros((T, B, D)), lengths_B=jnp.array([9, 1, 1, 1]))
    with pytest.raises(ValueError, match="rng: dropout is on"):
        Stack("lstm", D, H, dropout=0.1, num_layers=2).apply(
            Stack("lstm", D, H, num_layers=2).init(jax.random.key(0)), jnp.zeros((T, B, D)), train=True)


class _Tagger(nn.Module):
    """A Flax model composing the recurrent stack with other Flax layers."""

    @nn.compact
    def __call__(self, xs_BxTxD, lengths_B, deterministic=True):
        ys, _ = RecurrentStack("lstm", H, num_layers=2, bidirectional=True, dropout=0.1)(
            xs_BxTxD, lengths_B, deterministic=deterministic)
        return nn.Dense(2, name="head")(ys)


def test_flax_module_composes_and_matches_the_pure_stack():
    xs_BxTxD = jnp.swapaxes(_xs(jnp.float32), 0, 1)
    lengths = jnp.array([T, 5, 3, 1])
    model = _Tagger()
    variables = model.init(jax.random.key(0), xs_BxTxD, lengths)
    names = jax.tree_util.tree_flatten_with_path(variables)[0]
    paths = {jax.tree_util.keystr(p) for p, _ in names}
    assert "['params']['RecurrentStack_0']['layer_1']['backward']['w_h_HxG']" in paths
    assert "['params']['head']['kernel']" in paths
    logits = model.apply(variables, xs_BxTxD, lengths)
    assert logits.shape == (B, T, 2)
    logits_drop = model.apply(variables, xs_BxTxD, lengths, deterministic=False,
                              rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(logits, logits_drop)
    stack = Stack("lstm", D, H, num_layers=2, bidirectional=True)
    ys, _ = stack.apply(variables["params"]["RecurrentStack_0"], jnp.swapaxes(xs_BxTxD, 0, 1), lengths_B=lengths)
    ref = nn.Dense(2).apply({"params": variables["params"]["head"]}, jnp.swapaxes(ys, 0, 1))
    _close(logits, ref, 1e-6)
