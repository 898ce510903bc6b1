"""Gradient-flow probes against closed forms (a diagonal linear RNN), against
autodiff through explicit unrolled Python loops, and against the Pascanu bound.
float64 throughout (conftest enables x64)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnlab import cells, probes, scan
from rnnlab.layers import Stack

F64 = jnp.float64
T, B, D, H = 5, 2, 3, 4


class DiagonalLinear:
    """h_t = a * h_{t-1} + x_t (a per unit): dh_T/dh_t = diag(a^(T-t)) exactly.
    Not registered: it only has the cell contract."""

    def initial_carry(self, batch, d_h):
        return jnp.zeros((batch, d_h), jnp.float32)

    def step(self, params, carry, x_BxH):
        h = params["a_H"] * carry + x_BxH
        return h, h


def _xs(seed=0, t=T, d=D):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(t, B, d)), F64)


def _carry0(model_name, seed=1):
    """A nonzero float64 start so that no Jacobian is trivially at the origin."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    c = 0.3 * jax.random.normal(k1, (B, H), F64)
    h = 0.3 * jax.random.normal(k2, (B, H), F64)
    return (c, h) if model_name == "lstm" else h


def _stack_carry0(stack, seed=1):
    keys = jax.random.split(jax.random.PRNGKey(seed), stack.num_layers)
    return {
        f"layer_{i}": {"forward": jax.tree.map(lambda c, k=k: 0.3 * jax.random.normal(k, c.shape, F64),
                                               stack.cell.initial_carry(B, H))}
        for i, k in enumerate(keys)
    }


def _models():
    """(model, params, carry0). The explicit references below run the cells layer
    by layer with cell.step directly, independent of the probes' adapters."""
    key = jax.random.PRNGKey(3)
    out = [(cells.get(name), cells.get(name).init(key, D, H, dtype=F64), _carry0(name)) for name in ("elman", "lstm", "gru")]
    stack = Stack("lstm", D, H, num_layers=2)
    out.append((stack, stack.init(key, F64), _stack_carry0(stack)))
    return out


MODELS = _models()
MODEL_IDS = ["elman", "lstm", "gru", "stack2-lstm"]


def _layers(model, tree):
    """The model's cell and a per-layer list of ``tree`` (params or carry)."""
    if isinstance(model, Stack):
        return model.cell, [tree[f"layer_{i}"]["forward"] for i in range(model.num_layers)]
    return model, [tree]


def _from_layers(model, per_layer):
    if isinstance(model, Stack):
        return {f"layer_{i}": {"forward": c} for i, c in enumerate(per_layer)}
    return per_layer[0]


def _h_of(cell, carry):
    return carry[1] if cell.name == "lstm" else carry


def _layer_step(cell, p, carry, x_BxD):
    return cell.step(p, carry, cell.precompute(p, x_BxD[None])[0])


def _explicit_step(model, params, carry, x_BxD):
    """One time step of the whole model as a plain Python loop over layers."""
    cell, ps = _layers(model, params)
    _, cs = _layers(model, carry)
    new, h = [], x_BxD
    for p, c in zip(ps, cs, strict=True):
        c, h = _layer_step(cell, p, c, h)
        new.append(c)
    return _from_layers(model, new), h


def _flatten(carry):
    """carry tree (leaves B x H) -> B x C, leaves concatenated in tree order."""
    return jnp.concatenate(jax.tree.leaves(carry), axis=-1)


def _unflatten(like, v_BxC):
    leaves, treedef = jax.tree.flatten(like)
    splits = np.cumsum([leaf.shape[-1] for leaf in leaves])[:-1]
    return jax.tree.unflatten(treedef, jnp.split(v_BxC, splits, axis=-1))


def _explicit_carries(step, params, carry0, xs):
    carries, carry = [], carry0
    for t in range(xs.shape[0]):
        carry, _ = step(params, carry, xs[t])
        carries.append(carry)
    return carries


# --------------------------------------------------------------------------- closed form


LINEAR = DiagonalLinear()  # one instance: the probes' jit cache keys on it
W_Hx1 = jnp.arange(1.0, H + 1, dtype=F64)[:, None]


def test_diagonal_linear_rnn_jacobians_and_gradients_are_powers_of_a():
    a_H = jnp.array([0.9, 0.5, -0.7, 1.1], F64)
    params, model = {"a_H": a_H}, LINEAR
    xs = jax.random.normal(jax.random.PRNGKey(0), (T, B, H), F64)
    jp = probes.jacobian_products(model, params, xs, d_h=H)
    lags = np.arange(1, T + 1)
    expected_RxH = np.asarray(a_H)[None, :] ** lags[:, None]
    for b in range(B):
        np.testing.assert_allclose(jp.products_RxBxCxC[:, b], expected_RxH[:, :, None] * np.eye(H), rtol=1e-13, atol=0)
        np.testing.assert_allclose(jp.step_jacobians_TxBxCxC[:, b], np.broadcast_to(np.diag(a_H), (T, H, H)))
    np.testing.assert_allclose(jp.spectral_norms_RxB[:, 0], np.abs(expected_RxH).max(1), rtol=1e-13)
    assert jp.components == {"h": (0, H)}

    # dL/dh_t = a^(T-1-t) * dL/dh_{T-1}; with L = mean_b sum(h_{T-1} @ w), dL/dh_{T-1} = w / B.
    gn = probes.grad_norms_through_time(model, params, xs, d_h=H, readout_HxO=W_Hx1)
    expected_TxH = np.asarray(a_H)[None, :] ** (T - 1 - np.arange(T))[:, None] * np.asarray(W_Hx1[:, 0]) / B
    for b in range(B):
        np.testing.assert_allclose(gn.grads[:, b], expected_TxH, rtol=1e-13)
    assert gn.grads.dtype == F64


def test_fitted_decay_rate_of_a_scalar_linear_rnn_recovers_a():
    params = {"a_H": jnp.full((H,), 0.8, F64)}
    xs = jax.random.normal(jax.random.PRNGKey(1), (T, B, H), F64)
    gn = probes.grad_norms_through_time(LINEAR, params, xs, d_h=H, readout_HxO=W_Hx1)
    fit = probes.fit_decay_rate(gn.norms_T)
    np.testing.assert_allclose(fit.rate, 0.8, rtol=1e-10)
    np.testing.assert_allclose(fit.r2, 1.0, atol=1e-10)


def test_fit_decay_rate_on_exact_geometric_sequences():
    lags = np.arange(30)
    norms_T = 3.0 * 0.7 ** lags[::-1]  # time order: the last entry is lag 0
    fit = probes.fit_decay_rate(jnp.asarray(norms_T))
    np.testing.assert_allclose(fit.rate, 0.7, rtol=1e-10)
    np.testing.assert_allclose(fit.intercept, np.log(3.0), rtol=1e-10)
    # by lag, with an underflowed tail and a NaN that must be left out
    by_lag = 2.0 * 1.3 ** lags
    by_lag[25:] = 0.0
    by_lag[3] = np.nan
    fit = probes.fit_decay_rate(jnp.asarray(by_lag), jnp.asarray(lags))
    np.testing.assert_allclose(fit.rate, 1.3, rtol=1e-10)
    assert int(fit.n_points) == 24
    fit = probes.fit_decay_rate(jnp.asarray(by_lag), jnp.asarray(lags), min_lag=5, max_lag=10)
    assert int(fit.n_points) == 6
    np.testing.assert_allclose(fit.rate, 1.3, rtol=1e-10)


# --------------------------------------------------------------------------- against explicit autodiff


# The explicit references are jitted whole: one XLA compile each instead of one
# per eager primitive, which is what keeps this file fast.


@pytest.mark.parametrize("model, params, carry0", MODELS, ids=MODEL_IDS)
def test_jacobian_products_agree_with_jacrev_through_the_unrolled_loop(model, params, carry0):
    xs = _xs()
    jp = probes.jacobian_products(model, params, xs, carry0=carry0)

    @jax.jit
    @jax.jacrev
    def final_by_state(states_TxBxC):
        """carry_{T-1} (flattened, B x C) through the unrolled loop, with a
        zero-valued dependence on ``states[t]`` added to carry_{t-1} (t = 0: the
        initial carry), so d carry_{T-1} / d states[t] = d carry_{T-1} / d carry_{t-1}."""
        carry = carry0
        for t in range(T + 1):
            carry = jax.tree.map(
                lambda c, s: c + (s - jax.lax.stop_gradient(s)), carry, _unflatten(carry0, states_TxBxC[t])
            )
            if t < T:
                carry, _ = _explicit_step(model, params, carry, xs[t])
        return _flatten(carry)

    states = np.zeros((T + 1, B, _flatten(carry0).shape[-1]))  # values unused: only the dependence
    jac_BxCxTxBxC = np.asarray(final_by_state(states))  # [:, :, t] = d carry_{T-1} / d carry_{t-1}
    products = np.asarray(jp.products_RxBxCxC)
    for k in range(1, T + 1):  # lag k: d carry_{T-1} / d carry_{T-1-k}
        for b in range(B):
            np.testing.assert_allclose(products[k - 1, b], jac_BxCxTxBxC[b, :, T - k, b, :], atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(jp.spectral_norms_RxB, np.linalg.norm(products, ord=2, axis=(-2, -1)), rtol=1e-10)
    names = {"elman": ["h"], "gru": ["h"], "lstm": ["c", "h"]}.get(getattr(model, "name", None))
    assert list(jp.components) == (names or ["layer_0/c", "layer_0/h", "layer_1/c", "layer_1/h"])
    for name, (lo, hi) in jp.components.items():  # e.g. 'h': d h_{T-1} / d h_{T-1-k}, c held fixed
        block = products[..., lo:hi, lo:hi]
        np.testing.assert_allclose(jp.block_norms_RxB[name], np.linalg.norm(block, ord=2, axis=(-2, -1)), rtol=1e-10)


PERTURBATION_CASES = [(*m, "all") for m in MODELS] + [(*MODELS[1], "last"), (*MODELS[3], "last")]
PERTURBATION_IDS = [f"{i}-all" for i in MODEL_IDS] + ["lstm-last", "stack2-lstm-last"]


@pytest.mark.parametrize("model, params, carry0, loss_at", PERTURBATION_CASES, ids=PERTURBATION_IDS)
def test_perturbation_gradients_equal_explicit_per_step_gradients(model, params, carry0, loss_at):
    """dL/dcarry_t is the total derivative w.r.t. the carry a layer's step t
    returns: through the readout at t, the layers above at t, and all later steps."""
    xs = _xs()
    rng = np.random.default_rng(7)
    readout_Hx2 = rng.normal(size=(H, 2))
    if loss_at == "all":
        targets = rng.normal(size=(T, B, 2))
        mask_TxB = (rng.random((T, B)) > 0.3).astype(np.float64)
        mask_TxB[-1] = 1.0
    else:
        targets, mask_TxB = rng.normal(size=(B, 2)), None
    gn = probes.grad_norms_through_time(
        model, params, xs, carry0=carry0, loss_at=loss_at, targets=targets, loss_mask_TxB=mask_TxB,
        readout_HxO=readout_Hx2,
    )
    cell, ps = _layers(model, params)
    n_layers = len(ps)

    def loss_B(h_BxH, target_Bx2):
        return 0.5 * jnp.sum((h_BxH @ readout_Hx2 - target_Bx2) ** 2, axis=-1)

    def weighted(t, h_BxH):  # step t's share of L
        if loss_at == "last":
            return jnp.mean(loss_B(h_BxH, targets)) if t == T - 1 else 0.0
        return jnp.sum(mask_TxB[t] * loss_B(h_BxH, targets[t])) / np.sum(mask_TxB)

    @jax.jit
    def reference():
        """(L, [[dL/d layer l's carry_t for l] for t]) by autodiff through explicit loops."""
        carries = _explicit_carries(functools.partial(_explicit_step, model), params, carry0, xs)
        per_layer = [_layers(model, c)[1] for c in [carry0] + carries]  # per_layer[t + 1][l]: layer l's carry_t
        total = sum(weighted(t, _h_of(cell, per_layer[t + 1][-1])) for t in range(T))
        grads = []
        for t in range(T):
            grads.append([])
            for layer in range(n_layers):
                def loss_from(c_lt, t=t, layer=layer):  # every term of L that depends on layer l's carry_t
                    cur = list(per_layer[t + 1])
                    cur[layer], h = c_lt, _h_of(cell, c_lt)
                    for m in range(layer + 1, n_layers):  # the layers above, at the same step
                        cur[m], h = _layer_step(cell, ps[m], per_layer[t][m], h)
                    total = weighted(t, h)
                    for s in range(t + 1, T):
                        h = xs[s]
                        for m in range(n_layers):
                            cur[m], h = _layer_step(cell, ps[m], cur[m], h)
                        total = total + weighted(s, h)
                    return total

                grads[-1].append(jax.grad(loss_from)(per_layer[t + 1][layer]))
        return total, grads

    total, expected = reference()
    np.testing.assert_allclose(gn.loss, total, rtol=1e-12)
    got_by_layer = _layers(model, gn.grads)[1]
    for t in range(T):
        for layer in range(n_layers):
            got = jax.tree.map(lambda g, t=t: g[t], got_by_layer[layer])
            for e, g in zip(jax.tree.leaves(expected[t][layer]), jax.tree.leaves(got), strict=True):
                np.testing.assert_allclose(g, e, atol=1e-12, rtol=1e-9)
    flat_TxBxC = np.concatenate([np.reshape(g, (T, B, -1)) for g in jax.tree.leaves(gn.grads)], axis=-1)
    np.testing.assert_allclose(gn.norms_TxB, np.linalg.norm(flat_TxBxC, axis=-1), rtol=1e-12)
    np.testing.assert_allclose(gn.norms_T, np.linalg.norm(flat_TxBxC.reshape(T, -1), axis=-1), rtol=1e-12)
    sq = sum(np.asarray(n) ** 2 for n in gn.component_norms.values())
    np.testing.assert_allclose(np.sqrt(sq), gn.norms_T, rtol=1e-12)
    names = {"elman": ["h"], "gru": ["h"], "lstm": ["c", "h"]}.get(getattr(model, "name", None))
    assert sorted(gn.component_norms) == (names or ["layer_0/c", "layer_0/h", "layer_1/c", "layer_1/h"])


def test_jacobian_products_max_lag():
    model, params, carry0 = MODELS[1]
    jp = probes.jacobian_products(model, params, _xs(), carry0=carry0, max_lag=3)
    assert jp.spectral_norms_RxB.shape == (3, B) and jp.singular_values_RxBxC.shape == (3, B, 2 * H)
    assert jp.step_jacobians_TxBxCxC.shape == (T, B, 2 * H, 2 * H)
    np.testing.assert_array_equal(jp.lags_R, [1, 2, 3])


@pytest.mark.parametrize("name", ["elman", "lstm", "gru"])
def test_carry_trajectory_matches_scan_run(name):
    params = MODELS[["elman", "lstm", "gru"].index(name)][1]
    xs = _xs()
    carries, hs = probes.carry_trajectory(name, params, xs, d_h=H)
    final, hs_ref = scan.run(name, params, jax.tree.map(lambda c: c.astype(F64), cells.get(name).initial_carry(B, H)), xs)
    np.testing.assert_allclose(hs, hs_ref, rtol=1e-12)
    for c, f in zip(jax.tree.leaves(carries), jax.tree.leaves(final), strict=True):
        np.testing.assert_allclose(c[-1], f, rtol=1e-12)


def test_stack_trajectory_matches_stack_apply_and_bidirectional_is_refused():
    stack, params = MODELS[3][0], MODELS[3][1]
    xs = _xs()
    _, hs = probes.carry_trajectory(stack, params, xs)
    ys, _ = stack.apply(params, xs)
    np.testing.assert_allclose(hs, ys, rtol=1e-12)
    with pytest.raises(ValueError, match="bidirectional"):
        probes.grad_norms_through_time(Stack("gru", D, H, bidirectional=True), params, xs)


# --------------------------------------------------------------------------- Pascanu bound


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_pascanu_bound_holds_for_elman(nonlinearity):
    model, params, carry0 = MODELS[0]
    cell = model if nonlinearity == "tanh" else cells.get("elman", nonlinearity="relu")
    params = {**params, "w_h_HxG": 1.8 * params["w_h_HxG"]}  # orthogonal * 1.8: the bound is 1.8
    bound = probes.pascanu_bound(params, cell, n_lags=T)
    np.testing.assert_allclose(bound.sigma_max, np.linalg.svd(np.asarray(params["w_h_HxG"]), compute_uv=False)[0])
    np.testing.assert_allclose(bound.per_step, 1.8, rtol=1e-12)
    np.testing.assert_allclose(bound.curve_R, 1.8 ** np.arange(T + 1), rtol=1e-12)
    jp = probes.jacobian_products(cell, params, _xs(), carry0=carry0)
    assert float(jp.step_norms_TxB.max()) <= float(bound.per_step) + 1e-12
    assert np.all(np.asarray(jp.spectral_norms_RxB) <= np.asarray(bound.curve_R[1:, None]) + 1e-12)
    with pytest.raises(ValueError, match="elman"):
        probes.pascanu_bound(MODELS[1][1], "lstm")


# --------------------------------------------------------------------------- gates


def test_gate_statistics_with_zero_weights_are_closed_form():
    """Zero weights: every gate is the sigmoid/tanh of its bias, so the statistics are exact."""
    xs = _xs()
    b_G = np.zeros(4 * H)
    b_G[H : 2 * H] = 3.0  # forget-gate bias: f = sigmoid(3) everywhere
    lstm_params = {"w_x_DxG": np.zeros((D, 4 * H)), "w_h_HxG": np.zeros((H, 4 * H)), "b_G": b_G}
    stats = probes.gate_statistics("lstm", lstm_params, xs, d_h=H)
    f = 1.0 / (1.0 + np.exp(-3.0))
    np.testing.assert_allclose(stats["memory_gate_mean"], f, rtol=1e-12)
    np.testing.assert_allclose(stats["memory_time"], -1.0 / np.log(f), rtol=1e-12)
    np.testing.assert_allclose(stats["memory_time_H"], np.full(H, -1.0 / np.log(f)), rtol=1e-12)
    assert float(stats["f/saturated_high"]) == 1.0 and float(stats["i/saturated"]) == 0.0
    np.testing.assert_allclose(stats["i/mean"], 0.5)

    gru_params = {"w_x_DxG": np.zeros((D, 3 * H)), "w_h_HxG": np.zeros((H, 3 * H)), "b_G": np.zeros(3 * H),
                  "b_hn_H": np.zeros(H)}
    stats = probes.gate_statistics("gru", gru_params, xs, d_h=H)
    np.testing.assert_allclose(stats["memory_time"], 1.0 / np.log(2.0), rtol=1e-12)  # z = 1/2
    assert float(stats["n/saturated"]) == 0.0

    stack = Stack("lstm", D, H, num_layers=2)
    stack_params = {"layer_0": {"forward": lstm_params}, "layer_1": {"forward": {**lstm_params, "w_x_DxG": np.zeros((H, 4 * H))}}}
    stats = probes.gate_statistics(stack, stack_params, xs)
    np.testing.assert_allclose(stats["layer_1/memory_gate_mean"], f, rtol=1e-12)
    assert probes.gate_statistics(LINEAR, {"a_H": np.ones(H)}, xs, d_h=H) == {}


@pytest.mark.parametrize("name, options", [("lstm", {}), ("gru", {}), ("gru", {"reset_after": False}),
                                           ("elman", {}), ("elman", {"nonlinearity": "relu"})])
def test_recomputed_gates_reproduce_the_cell_step(name, options):
    cell = cells.get(name, **options)
    params = cell.init(jax.random.PRNGKey(2), D, H, dtype=F64)
    xs = _xs()
    carries, _ = probes.carry_trajectory(cell, params, xs, d_h=H)
    carry0 = jax.tree.map(lambda c: c.astype(F64), cell.initial_carry(B, H))
    prev = jax.tree.map(lambda a0, a: jnp.concatenate([a0[None], a[:-1]]), carry0, carries)
    gates, memory = probes.step_gates(cell, params, cell.precompute(params, xs), prev)
    g = {k: v for k, (_, v) in gates.items()}
    if name == "lstm":
        np.testing.assert_allclose(g["f"] * prev[0] + g["i"] * g["g"], carries[0], rtol=1e-12)
        np.testing.assert_allclose(g["o"] * g["tanh_c"], carries[1], rtol=1e-12)
        assert memory == "f"
    elif name == "elman":
        np.testing.assert_allclose(g["h"], carries, rtol=1e-12)
        assert memory is None and gates["h"][0] == ("tanh" if not options else "relu")
    else:
        np.testing.assert_allclose((1 - g["z"]) * g["n"] + g["z"] * prev, carries, rtol=1e-12)
        assert memory == "z"


def test_a_new_cell_with_gates_gets_gate_statistics():
    """mLSTM declares its gates (o, f, i = exp(i~)): its forget gate's memory time from a
    closed form (zero weights, forget bias b: f = sigmoid(b) every step), and a cell without
    ``gates`` gets an empty dict."""
    cell = cells.get("mlstm", heads=2)
    params = cell.init(jax.random.PRNGKey(0), D, H, dtype=F64)
    params = {"w_x_DxG": jnp.zeros_like(params["w_x_DxG"]), "b_G": params["b_G"]}  # b_f = 3 (the default)
    stats = probes.gate_statistics(cell, params, _xs(), d_h=H)
    f = 1.0 / (1.0 + np.exp(-3.0))
    np.testing.assert_allclose(stats["memory_gate_mean"], f, rtol=1e-12)
    np.testing.assert_allclose(stats["memory_time"], -1.0 / np.log(f), rtol=1e-12)
    np.testing.assert_allclose(stats["i/max"], 1.0, rtol=1e-12)  # exp(0)
    np.testing.assert_allclose(stats["o/mean"], 0.5, rtol=1e-12)
    assert probes.gate_statistics("mingru", cells.get("mingru").init(jax.random.PRNGKey(0), D, H), _xs(), d_h=H) == {}


def test_float32_in_float32_out():
    model, params, _ = MODELS[0]
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
    xs = jnp.asarray(np.random.default_rng(0).normal(size=(T, B, D)), jnp.float32)
    gn = probes.grad_norms_through_time(model, params, xs, d_h=H)
    fit = probes.fit_decay_rate(gn.norms_T)
    assert {a.dtype for a in jax.tree.leaves((gn, fit))} == {np.dtype(np.float32)}
