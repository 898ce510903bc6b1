"""Parity with torch.nn.RNN (tanh, relu), torch.nn.LSTM and torch.nn.GRU on CPU.

For every case the same random loss ``L = sum(ys * R) + sum(h_n * S) [+ sum(c_n * U)]``
is computed in both frameworks, and the outputs, final states and the gradients
w.r.t. the inputs, the initial states and every torch weight are compared:
float32 to 1e-5, float64 to 1e-10. Variable lengths are compared with
``pack_padded_sequence(enforce_sorted=False)``; weights travel both ways
(torch -> rnnlab via ``convert.stack_from_torch``, rnnlab -> torch via
``convert.to_torch`` + ``load_state_dict``). GRU ``reset_after=False`` has no
torch counterpart and is checked against a numpy transcription of Cho et al. 2014.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnnlab import Stack, cells, convert

T, B, D, H = 7, 4, 5, 4
LENGTHS = np.array([7, 3, 5, 1])  # unsorted, includes full length and length 1

DTYPES = {
    "float32": (np.float32, torch.float32, 1e-5),
    "float64": (np.float64, torch.float64, 1e-10),
}

# name -> (torch constructor, rnnlab cell)
KINDS = {
    "rnn_tanh": (lambda *a, **kw: torch.nn.RNN(*a, nonlinearity="tanh", **kw), cells.get("elman")),
    "rnn_relu": (
        lambda *a, **kw: torch.nn.RNN(*a, nonlinearity="relu", **kw),
        cells.get("elman", nonlinearity="relu"),
    ),
    "lstm": (torch.nn.LSTM, cells.get("lstm")),
    "gru": (torch.nn.GRU, cells.get("gru")),
}

# id -> (num_layers, bidirectional, packed). 3layer-bi-packed is the strictest case (reverse
# direction starting at each sequence's own end, padded inputs to layers > 0, final states
# of every layer and direction); the dense ones take the no-lengths path of the scan, in
# both directions.
LAYOUTS = {
    "1layer": (1, False, False),
    "1layer-bi": (1, True, False),
    "1layer-bi-packed": (1, True, True),
    "3layer-bi-packed": (3, True, True),
}


def assert_close(actual, expected, tol, what=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol, err_msg=what)


def make_torch(kind: str, num_layers: int, bidirectional: bool, tdtype, seed: int = 0):
    torch.manual_seed(seed)
    ctor, _ = KINDS[kind]
    module = ctor(D, H, num_layers=num_layers, bidirectional=bidirectional)
    return module.to(tdtype)


def grads_to_torch_layout(grads: dict, cell_name: str) -> dict[str, np.ndarray]:
    """d L / d(torch weight) from d L / d(rnnlab param).

    rnnlab's b_G is b_ih + b_hh (for GRU: + the r,z part of b_hh), so d/d b_ih and
    d/d b_hh are both d/d b_G; GRU's n-part of b_hh is the separate b_hn_H."""
    out = {}
    for layer_name, dirs in grads.items():
        layer = int(layer_name.split("_")[1])
        for direction, g in dirs.items():
            sfx = f"_l{layer}" + ("_reverse" if direction == "backward" else "")
            b = np.asarray(g["b_G"])
            out[f"weight_ih{sfx}"] = np.asarray(g["w_x_DxG"]).T
            out[f"weight_hh{sfx}"] = np.asarray(g["w_h_HxG"]).T
            out[f"bias_ih{sfx}"] = b
            if cell_name == "gru":
                d_h = np.asarray(g["b_hn_H"]).shape[0]
                out[f"bias_hh{sfx}"] = np.concatenate([b[: 2 * d_h], np.asarray(g["b_hn_H"])])
            else:
                out[f"bias_hh{sfx}"] = b
    return out


def run_torch(module, xs, h0, c0, lengths, R, S, U):
    """Outputs, final states and gradients of the projection loss, from torch."""
    module.zero_grad()
    x = torch.tensor(xs, requires_grad=True)
    h = torch.tensor(h0, requires_grad=True)
    c = None if c0 is None else torch.tensor(c0, requires_grad=True)
    inp = x if lengths is None else pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
    out, hn = module(inp, h if c is None else (h, c))
    if lengths is not None:
        out, _ = pad_packed_sequence(out, total_length=xs.shape[0])
    hn, cn = (hn, None) if c is None else hn
    loss = (out * torch.from_numpy(R)).sum() + (hn * torch.from_numpy(S)).sum()
    if cn is not None:
        loss = loss + (cn * torch.from_numpy(U)).sum()
    loss.backward()
    res = {
        "loss": loss.item(),
        "ys": out.detach().numpy(),
        "h_n": hn.detach().numpy(),
        "c_n": None if cn is None else cn.detach().numpy(),
        "grad_xs": x.grad.numpy(),
        "grad_h0": h.grad.numpy(),
        "grad_c0": None if c is None else c.grad.numpy(),
        "grad_params": {k: p.grad.numpy() for k, p in module.named_parameters()},
    }
    return res


def rnnlab_loss(stack: Stack, case: dict):
    """The same loss as a function of (xs, params, initial carries), and its arguments."""
    bidir, nl = stack.bidirectional, stack.num_layers
    c0 = case["c0"]
    carries0 = convert.carries_from_torch(case["h0"], c0, num_layers=nl, bidirectional=bidir)
    weights = convert.carries_from_torch(
        case["S"], None if c0 is None else case["U"], num_layers=nl, bidirectional=bidir
    )
    lengths, R = case["lengths"], case["R"]  # numpy: see the report on check_inputs under jit

    def loss_fn(xs, params, carries):
        ys, finals = stack.apply(params, xs, lengths_B=lengths, carries=carries)
        assert jax.tree.structure(finals) == jax.tree.structure(weights)
        pairs = zip(jax.tree.leaves(finals), jax.tree.leaves(weights), strict=True)
        return jnp.sum(ys * R) + sum(jnp.sum(a * w) for a, w in pairs), (ys, finals)

    return loss_fn, (jnp.asarray(case["xs"]), case["params"], carries0)


# Not the full product: compiling the forward+backward programs is what costs, about
# linearly in the number of layer-directions. float32 runs every layout; float64 (where
# a silent float32 round-off anywhere would show at 1e-10) runs the one-layer packed
# bidirectional case, which takes every per-step code path.
CASES = [
    (kind, layout, dtype)
    for kind in KINDS
    for layout, dtype in [
        ("1layer", "float32"), ("1layer-bi", "float32"), ("3layer-bi-packed", "float32"),
        ("1layer-bi-packed", "float64"),
    ]
]


@functools.cache
def make_case(kind: str, layout: str, dtype: str) -> dict:
    """A torch module, the rnnlab stack and params converted from it, and random
    inputs, initial states and loss projections (deterministic)."""
    num_layers, bidir, packed = LAYOUTS[layout]
    np_dt, t_dt, _ = DTYPES[dtype]
    module = make_torch(kind, num_layers, bidir, t_dt, seed=10 * list(KINDS).index(kind) + num_layers)
    stack, params = convert.stack_from_torch(module)
    rng = np.random.default_rng(42)
    n_dir = 2 if bidir else 1
    xs = rng.normal(size=(T, B, D)).astype(np_dt)
    if packed:  # pad with garbage: it must not leak into outputs, states or gradients
        xs[np.arange(T)[:, None] >= LENGTHS[None, :]] = 1e3
    state_shape = (num_layers * n_dir, B, H)
    return {
        "module": module, "stack": stack, "params": params, "xs": xs,
        "h0": rng.normal(size=state_shape).astype(np_dt),
        "c0": rng.normal(size=state_shape).astype(np_dt) if kind == "lstm" else None,
        "lengths": LENGTHS if packed else None,
        "R": rng.normal(size=(T, B, n_dir * H)).astype(np_dt),
        "S": rng.normal(size=state_shape).astype(np_dt),
        "U": rng.normal(size=state_shape).astype(np_dt),
    }


@functools.cache
def rnnlab_results(dtype: str) -> dict:
    """rnnlab's loss, outputs, final states and jax.grad w.r.t. (xs, params, initial
    states) for every case of this dtype, computed in one jitted program (one compile
    instead of one per case). Each case is still compared with torch in its own test."""
    fns, args, cell_names = {}, {}, {}
    for kind, layout, d in CASES:
        if d == dtype:
            case, key = make_case(kind, layout, dtype), f"{kind}/{layout}"
            loss_fn, args[key] = rnnlab_loss(case["stack"], case)
            fns[key] = jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True)
            cell_names[key] = case["stack"].cell.name
    computed = jax.jit(lambda a: {k: fns[k](*a[k]) for k in a})(args)
    out = {}
    for key, ((loss, (ys, finals)), (g_xs, g_params, g_carries)) in computed.items():
        h_n, c_n = convert.carries_to_torch(finals)
        g_h0, g_c0 = convert.carries_to_torch(g_carries)
        out[key] = {
            "loss": float(loss), "ys": ys, "h_n": h_n, "c_n": c_n,
            "grad_xs": g_xs, "grad_h0": g_h0, "grad_c0": g_c0,
            "grad_params": grads_to_torch_layout(g_params, cell_names[key]),
        }
    return out


@pytest.mark.parametrize("kind,layout,dtype", CASES, ids=["-".join(c) for c in CASES])
def test_outputs_states_and_gradients_match_torch(kind, layout, dtype):
    np_dt, _, tol = DTYPES[dtype]
    case = make_case(kind, layout, dtype)
    assert case["stack"].cell.name == KINDS[kind][1].name
    assert all(leaf.dtype == np_dt for leaf in jax.tree.leaves(case["params"]))
    ref = run_torch(case["module"], *(case[k] for k in ("xs", "h0", "c0", "lengths", "R", "S", "U")))
    got = rnnlab_results(dtype)[f"{kind}/{layout}"]

    assert got["ys"].dtype == np_dt
    assert_close(got["ys"], ref["ys"], tol, "outputs")
    if case["lengths"] is not None:  # torch pads with zeros; rnnlab promises zeros past each length
        pad = np.arange(T)[:, None] >= LENGTHS[None, :]
        assert np.all(np.asarray(got["ys"])[pad] == 0)
    assert_close(got["h_n"], ref["h_n"], tol, "h_n")
    if kind == "lstm":
        assert_close(got["c_n"], ref["c_n"], tol, "c_n")
        assert_close(got["grad_c0"], ref["grad_c0"], tol, "dL/dc0")
    else:
        assert got["c_n"] is None
    assert_close(got["loss"], ref["loss"], tol, "loss")
    assert_close(got["grad_xs"], ref["grad_xs"], tol, "dL/dxs")
    assert_close(got["grad_h0"], ref["grad_h0"], tol, "dL/dh0")
    assert set(got["grad_params"]) == set(ref["grad_params"])
    for name, g in ref["grad_params"].items():
        assert_close(got["grad_params"][name], g, tol, f"dL/d{name}")


def random_rnnlab_params(stack: Stack, dtype, seed: int = 0):
    """rnnlab-initialised params with non-zero biases (so bias export is exercised)."""
    rng = np.random.default_rng(seed)  # numpy noise: no per-shape compiles
    return jax.tree.map(
        lambda a: a + jnp.asarray(0.3 * rng.normal(size=a.shape), a.dtype),
        stack.init(jax.random.PRNGKey(seed), dtype),
    )


@pytest.mark.parametrize("kind", list(KINDS))
def test_to_torch_round_trips_and_loads_into_torch(kind):
    """rnnlab -> torch: an rnnlab-initialised stack (biases made non-zero) exported
    with to_torch has torch's keys and shapes, from_torch gives it back exactly, and
    a torch module that loads it computes what the stack computes (round trip in
    float32 and float64; outputs and final states in float64, to 1e-10)."""
    np_dt, t_dt, tol = DTYPES["float64"]
    cell = KINDS[kind][1]
    stack = Stack(cell, D, H, num_layers=2, bidirectional=True)
    params = random_rnnlab_params(stack, np_dt, seed=3)

    for p in (params, jax.tree.map(lambda a: a.astype(jnp.float32), params)):
        sd = convert.to_torch(p, cell)
        back = convert.from_torch(sd, cell)
        assert jax.tree.structure(back) == jax.tree.structure(p)
        for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(p), strict=True):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    module = make_torch(kind, 2, True, t_dt, seed=99)
    sd = convert.to_torch(params, cell)
    assert {k: v.shape for k, v in sd.items()} == {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert all(v.dtype == np_dt for v in sd.values())
    module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)

    rng = np.random.default_rng(7)
    xs = rng.normal(size=(T, B, D)).astype(np_dt)
    h0 = rng.normal(size=(4, B, H)).astype(np_dt)
    c0 = rng.normal(size=(4, B, H)).astype(np_dt)
    carries = convert.carries_from_torch(h0, c0 if kind == "lstm" else None, num_layers=2, bidirectional=True)
    ys, finals = jax.jit(stack.apply)(params, jnp.asarray(xs), lengths_B=LENGTHS, carries=carries)

    packed = pack_padded_sequence(torch.from_numpy(xs), torch.tensor(LENGTHS), enforce_sorted=False)
    hx = (torch.from_numpy(h0), torch.from_numpy(c0)) if kind == "lstm" else torch.from_numpy(h0)
    with torch.no_grad():
        out, hn = module(packed, hx)
    out, _ = pad_packed_sequence(out, total_length=T)
    h_n, c_n = convert.carries_to_torch(finals)
    assert_close(ys, out.numpy(), tol, "outputs")
    if kind == "lstm":
        assert_close(h_n, hn[0].numpy(), tol, "h_n")
        assert_close(c_n, hn[1].numpy(), tol, "c_n")
    else:
        assert_close(h_n, hn.numpy(), tol, "h_n")


def test_carries_torch_layout_round_trip():
    rng = np.random.default_rng(0)
    h0, c0 = rng.normal(size=(6, B, H)), rng.normal(size=(6, B, H))
    carries = convert.carries_from_torch(h0, c0, num_layers=3, bidirectional=True)
    # torch's layout is (layer * num_directions + direction)
    np.testing.assert_array_equal(carries["layer_1"]["backward"][0], c0[3])
    np.testing.assert_array_equal(carries["layer_1"]["backward"][1], h0[3])
    h, c = convert.carries_to_torch(carries)
    np.testing.assert_array_equal(h, h0)
    np.testing.assert_array_equal(c, c0)
    h, c = convert.carries_to_torch(convert.carries_from_torch(h0, num_layers=3, bidirectional=True))
    np.testing.assert_array_equal(h, h0)
    assert c is None


# --- GRU "reset before" (Cho et al. 2014): no torch counterpart, numpy reference ---


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def gru_reference(p, xs, h0, lengths, reverse, reset_after=False):
    """Cho et al. 2014, eqs. (5)-(8), one sequence at a time, in float64:
        r = sigmoid(x W_ir + h W_hr + b_r),  z = sigmoid(x W_iz + h W_hz + b_z)
        n = tanh(x W_in + b_in + (r * h) W_hn + b_hn),  h' = (1 - z) * n + z * h
    (``reset_after``: n = tanh(x W_in + b_in + r * (h W_hn + b_hn)), the cuDNN form.)
    Outputs past a sequence's length are zero; the reverse direction starts at its end."""
    w_x, w_h = np.asarray(p["w_x_DxG"], np.float64), np.asarray(p["w_h_HxG"], np.float64)
    b, b_hn = np.asarray(p["b_G"], np.float64), np.asarray(p["b_hn_H"], np.float64)
    d_h = w_h.shape[0]
    W_ir, W_iz, W_in = np.split(w_x, 3, axis=1)
    W_hr, W_hz, W_hn = np.split(w_h, 3, axis=1)
    b_r, b_z, b_n = np.split(b, 3)
    n_t, n_b, _ = xs.shape
    ys = np.zeros((n_t, n_b, d_h))
    h_final = np.zeros((n_b, d_h))
    for j in range(n_b):
        h = np.asarray(h0[j], np.float64)
        steps = range(lengths[j])
        for t in reversed(steps) if reverse else steps:
            x = np.asarray(xs[t, j], np.float64)
            r = _sigmoid(x @ W_ir + h @ W_hr + b_r)
            z = _sigmoid(x @ W_iz + h @ W_hz + b_z)
            if reset_after:
                n = np.tanh(x @ W_in + b_n + r * (h @ W_hn + b_hn))
            else:
                n = np.tanh(x @ W_in + b_n + (r * h) @ W_hn + b_hn)
            h = (1.0 - z) * n + z * h
            ys[t, j] = h
        h_final[j] = h
    return ys, h_final


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_gru_reset_before_matches_cho_2014(dtype):
    np_dt, _, tol = DTYPES[dtype]
    cell = cells.get("gru", reset_after=False)
    stack = Stack(cell, D, H, num_layers=1, bidirectional=True)
    params = random_rnnlab_params(stack, np_dt, seed=5)
    rng = np.random.default_rng(1)
    xs = rng.normal(size=(T, B, D)).astype(np_dt)
    h0 = {d: rng.normal(size=(B, H)).astype(np_dt) for d in ("forward", "backward")}
    ys, finals = jax.jit(stack.apply)(params, jnp.asarray(xs), lengths_B=LENGTHS, carries={"layer_0": h0})
    assert ys.dtype == np_dt
    for k, d in enumerate(("forward", "backward")):
        p, rev = params["layer_0"][d], d == "backward"
        ref_ys, ref_h = gru_reference(p, xs, h0[d], LENGTHS, reverse=rev)
        assert_close(ys[..., k * H : (k + 1) * H], ref_ys, tol, f"{d} outputs")
        assert_close(finals["layer_0"][d], ref_h, tol, f"{d} final h")
        # the two variants really differ on these params: the test can tell them apart
        after_ys, _ = gru_reference(p, xs, h0[d], LENGTHS, reverse=rev, reset_after=True)
        assert np.max(np.abs(np.asarray(ys[..., k * H : (k + 1) * H]) - after_ys)) > 1e-3
