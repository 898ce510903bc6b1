"""The cell zoo against trusted references: each cell's step against its paper's
equations written again in numpy; LSTMP against torch.nn.LSTM(proj_size=...);
sLSTM's stabilised gating against the unstabilised exp-gated recurrence; the
initialisations the papers prescribe; and every registered cell through one
training step of the language-model smoke and of the adding task."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnlab import cells, configs, probes, scan
from rnnlab.models import lm as lm_lib
from rnnlab.tasks import lm, sequence
from rnnlab.train.optim import make_optimizer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from experiments import gradient_flow, language_modelling  # noqa: E402

B, D, H = 2, 3, 4
sig = lambda v: 1.0 / (1.0 + np.exp(-v))


def _step_inputs(name, seed=0, **options):
    cell = cells.get(name, **options)
    kp, kx, kc = jax.random.split(jax.random.key(seed), 3)
    params = cell.init(kp, D, H, dtype=jnp.float64)
    params = jax.tree.map(lambda w: w + 0.1 * jax.random.normal(kc, w.shape, w.dtype), params)  # no zero peepholes/biases
    x = jax.random.normal(kx, (1, B, D), jnp.float64)
    carry = jax.tree.map(lambda z: 0.5 * jax.random.normal(kc, z.shape, jnp.float64) + 0.6, cell.initial_carry(B, H))
    new_carry, h = cell.step(params, carry, cell.precompute(params, x)[0])
    npy = lambda t: jax.tree.map(np.asarray, t)
    return npy(params), np.asarray(x[0]), npy(carry), npy(new_carry), np.asarray(h)


def _dense(p, x, h):
    return x @ p["w_x_DxG"] + h @ p["w_h_HxG"] + p["b_G"]


def _ln(z, eps=1e-5):
    return (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + eps)


def ref_peephole(p, x, carry):
    c, h = carry
    i, f, g, o = np.split(_dense(p, x, h), 4, -1)
    c2 = sig(f + p["p_3xH"][1] * c) * c + sig(i + p["p_3xH"][0] * c) * np.tanh(g)
    return c2, sig(o + p["p_3xH"][2] * c2) * np.tanh(c2)


def ref_cifg(p, x, carry):
    c, h = carry
    f, g, o = np.split(_dense(p, x, h), 3, -1)
    c2 = sig(f) * c + (1 - sig(f)) * np.tanh(g)
    return c2, sig(o) * np.tanh(c2)


def ref_lnlstm(p, x, carry):
    c, h = carry
    xw = np.concatenate([_ln(b) for b in np.split(x @ p["w_x_DxG"], 4, -1)], -1)
    hw = np.concatenate([_ln(b) for b in np.split(h @ p["w_h_HxG"], 4, -1)], -1)
    i, f, g, o = np.split(xw * p["ln_x_G"] + hw * p["ln_h_G"] + p["b_G"], 4, -1)
    c2 = sig(f) * c + sig(i) * np.tanh(g)
    return c2, sig(o) * np.tanh(_ln(c2) * p["ln_c_H"] + p["ln_c_bias_H"])


def ref_mogrifier(p, x, carry):
    c, h = carry
    for i in range(1, 6):  # five rounds; Q^i for odd i, R^i for even
        m = p[f"round_{i}"]["full"]
        if i % 2:
            x = 2 * sig(h @ m) * x
        else:
            h = 2 * sig(x @ m) * h
    i, f, g, o = np.split(_dense(p, x, h), 4, -1)
    c2 = sig(f) * c + sig(i) * np.tanh(g)
    return c2, sig(o) * np.tanh(c2)


def ref_mgu(p, x, h):
    xf, xn = np.split(x @ p["w_x_DxG"] + p["b_G"], 2, -1)
    f = sig(xf + h @ p["w_h_HxG"][:, :H])
    n = np.tanh(xn + (f * h) @ p["w_h_HxG"][:, H:])
    return (1 - f) * h + f * n


def ref_ugrnn(p, x, h):
    c, g = np.split(_dense(p, x, h), 2, -1)
    return sig(g) * h + (1 - sig(g)) * np.tanh(c)


def ref_indrnn(p, x, h):
    return np.maximum(x @ p["w_x_DxG"] + p["u_H"] * h + p["b_G"], 0.0)


def _g(v):
    return np.where(v >= 0, v + 0.5, sig(v))


def ref_mingru(p, x, h):
    kz, kh = np.split(x @ p["w_x_DxG"] + p["b_G"], 2, -1)
    return (1 - sig(kz)) * h + sig(kz) * _g(kh)


def ref_minlstm(p, x, h):
    kf, ki, kh = np.split(x @ p["w_x_DxG"] + p["b_G"], 3, -1)
    f, i = sig(kf), sig(ki)
    return f / (f + i) * h + i / (f + i) * _g(kh)


def ref_rglru(p, x, h):
    ka, kx, u = np.split(x @ p["w_x_DxG"] + p["b_G"], 3, -1)
    a = (1.0 / (1.0 + np.exp(p["lambda_H"]))) ** (8 * sig(ka))  # exp(-softplus(lambda)) = sigmoid(-lambda)
    return a * h + np.sqrt(1 - a**2) * sig(kx) * u


def ref_lru(p, x, carry):
    lam = np.exp(-np.exp(p["nu_log_N"]) + 1j * np.exp(p["theta_log_N"]))
    w = p["w_x_DxG"]
    bx = x @ (w[:, :H] + 1j * w[:, H : 2 * H])
    h2 = lam * (carry[0] + 1j * carry[1]) + np.exp(p["gamma_log_N"]) * bx
    y = (h2 @ (p["c_re_NxH"] + 1j * p["c_im_NxH"])).real + x @ w[:, 2 * H :] + p["b_H"]
    gelu = 0.5 * y * (1 + np.tanh(np.sqrt(2 / np.pi) * (y + 0.044715 * y**3)))  # jax.nn.gelu's default
    return (h2.real, h2.imag), gelu


REFS = {
    "peephole": ref_peephole, "cifg": ref_cifg, "lnlstm": ref_lnlstm, "mogrifier": ref_mogrifier,
    "mgu": ref_mgu, "ugrnn": ref_ugrnn, "indrnn": ref_indrnn, "mingru": ref_mingru,
    "minlstm": ref_minlstm, "rglru": ref_rglru, "lru": ref_lru,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REFS))
def test_step_matches_the_papers_equations_in_numpy(name):
    p, x, carry, new_carry, h = _step_inputs(name)
    ref = REFS[name](p, x, carry)
    if name == "lru":
        ref_carry, ref_h = ref
    elif isinstance(ref, tuple):
        ref_carry, ref_h = ref, ref[1]
    else:
        ref_carry, ref_h = ref, ref
    np.testing.assert_allclose(h, ref_h, rtol=1e-10, atol=1e-12)
    for got, want in zip(jax.tree.leaves(new_carry), jax.tree.leaves(ref_carry), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_every_zoo_cell_has_a_reference_or_its_own_test():
    own_tests = {"elman", "lstm", "gru", "lstmp", "slstm", "mlstm"}  # torch parity / closed form below
    assert set(cells.available()) <= set(REFS) | own_tests, "a new cell: add its equations to REFS"


def test_lstmp_equals_torch_lstm_with_proj_size():
    torch = pytest.importorskip("torch")
    n, t = 7, 5
    cell = cells.get("lstmp", cell_size=n, forget_bias=0.0)
    torch.manual_seed(0)
    ref = torch.nn.LSTM(D, n, proj_size=H).double()
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    params = {
        "w_x_DxG": jnp.asarray(sd["weight_ih_l0"].T), "w_h_HxG": jnp.asarray(sd["weight_hh_l0"].T),
        "b_G": jnp.asarray(sd["bias_ih_l0"] + sd["bias_hh_l0"]), "w_p_NxH": jnp.asarray(sd["weight_hr_l0"].T),
    }
    xs = np.random.default_rng(0).normal(size=(t, B, D))
    want, (h_n, c_n) = ref(torch.from_numpy(xs))
    (c, r), hs = scan.run(cell, params, cell.initial_carry(B, H), jnp.asarray(xs))
    assert hs.shape == (t, B, H) and c.shape == (B, n)
    np.testing.assert_allclose(np.asarray(hs), want.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(c), c_n[0].detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
def test_slstm_stabilised_equals_unstabilised_exponential_gating(forget_gate):
    """Closed form: without the stabiliser, c_t = f c + exp(i~) z, n_t = f n + exp(i~),
    h = o c / n (float64, moderate pre-activations so nothing overflows)."""
    cell = cells.get("slstm", forget_gate=forget_gate)
    params = cell.init(jax.random.key(0), D, H, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (12, B, D), jnp.float64)
    _, hs = scan.run(cell, params, cell.initial_carry(B, H), xs)
    p = jax.tree.map(np.asarray, params)
    c = n = h = np.zeros((B, H))
    for t in range(12):
        i, f, z, o = np.split(np.asarray(xs[t]) @ p["w_x_DxG"] + h @ p["w_h_HxG"] + p["b_G"], 4, -1)
        f = sig(f) if forget_gate == "sigmoid" else np.exp(f)
        c, n = f * c + np.exp(i) * np.tanh(z), f * n + np.exp(i)
        h = sig(o) * c / n
        np.testing.assert_allclose(np.asarray(hs[t]), h, rtol=1e-10, atol=1e-12)


def test_slstm_does_not_overflow_where_plain_exp_gates_would():
    cell = cells.get("slstm", forget_gate="exp")
    params = cell.init(jax.random.key(0), D, H)
    params["b_G"] = params["b_G"].at[:H].set(200.0)  # exp(200) overflows float32
    _, hs = scan.run(cell, params, cell.initial_carry(B, H), jnp.ones((20, B, D), jnp.float32))
    assert np.all(np.isfinite(np.asarray(hs)))


@pytest.mark.parametrize("heads", [1, 2])
def test_mlstm_stabilised_equals_the_papers_unstabilised_matrix_memory(heads):
    """Closed form (Beck et al. 2024, eqs. 19-27, no stabiliser): per head,
    C_t = f C + exp(i~) v k^T, n_t = f n + exp(i~) k, h = o (C q) / max(|n . q|, 1),
    k scaled by 1/sqrt(d), f = sigmoid(f~); float64, both of scan.run's paths."""
    cell = cells.get("mlstm", heads=heads, chunk_size=4)
    params = cell.init(jax.random.key(0), D, H, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (11, B, D), jnp.float64)
    seq = scan.run(cell, params, cell.initial_carry(B, H), xs, path="sequential")[1]
    par = scan.run(cell, params, cell.initial_carry(B, H), xs, path="parallel")[1]
    p = jax.tree.map(np.asarray, params)
    d = H // heads
    c, n = np.zeros((B, heads, d, d)), np.zeros((B, heads, d))
    for t in range(11):
        g = np.asarray(xs[t]) @ p["w_x_DxG"] + p["b_G"]
        q, k, v, o = (g[:, j * H:(j + 1) * H].reshape(B, heads, d) for j in range(4))
        k = k / np.sqrt(d)
        i, f = np.exp(g[:, 4 * H:4 * H + heads]), sig(g[:, 4 * H + heads:])
        c = f[..., None, None] * c + i[..., None, None] * v[..., :, None] * k[..., None, :]
        n = f[..., None] * n + i[..., None] * k
        num, den = np.einsum("bkvd,bkd->bkv", c, q), np.einsum("bkd,bkd->bk", n, q)
        h = (sig(o) * num / np.maximum(np.abs(den), 1.0)[..., None]).reshape(B, H)
        np.testing.assert_allclose(np.asarray(seq[t]), h, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.asarray(par[t]), h, rtol=1e-10, atol=1e-12)


def test_mlstm_refuses_heads_that_do_not_divide_the_width():
    with pytest.raises(ValueError, match="not a multiple of heads=3"):
        cells.get("mlstm", heads=3).init(jax.random.key(0), D, H)


def test_mogrifier_with_zero_rounds_is_the_lstm_and_rank_factorises():
    x = jax.random.normal(jax.random.key(1), (6, B, D))
    mog, lstm = cells.get("mogrifier", rounds=0), cells.get("lstm")
    p = mog.init(jax.random.key(0), D, H)
    np.testing.assert_allclose(np.asarray(scan.run(mog, p, mog.initial_carry(B, H), x)[1]),
                               np.asarray(scan.run(lstm, p, lstm.initial_carry(B, H), x)[1]), rtol=1e-6, atol=1e-7)
    low = cells.get("mogrifier", rounds=4, rank=2).init(jax.random.key(0), D, H)
    assert low["round_1"]["left"].shape == (H, 2) and low["round_1"]["right"].shape == (2, D)
    assert low["round_2"]["left"].shape == (D, 2) and "round_5" not in low


def test_lru_ring_initialisation_and_normalisation():
    p = cells.get("lru", r_min=0.4, r_max=0.8, state_size=2000).init(jax.random.key(0), D, H)
    modulus = np.exp(-np.exp(np.asarray(p["nu_log_N"])))
    assert modulus.min() >= 0.4 - 1e-6 and modulus.max() <= 0.8 + 1e-6
    # area-uniform on the ring: |lambda|^2 uniform in [r_min^2, r_max^2], mean (0.16 + 0.64) / 2
    assert abs(np.mean(modulus**2) - 0.4) < 0.01
    np.testing.assert_allclose(np.exp(np.asarray(p["gamma_log_N"])), np.sqrt(1 - modulus**2), rtol=1e-5)
    assert cells.get("lru", state_size=9).initial_carry(B, H)[0].shape == (B, 9)


def test_rglru_decay_starts_in_the_papers_range():
    a = 1.0 / (1.0 + np.exp(np.asarray(cells.get("rglru").init(jax.random.key(0), D, 500)["lambda_H"])))
    assert a.min() >= 0.9 - 1e-6 and a.max() <= 0.999 + 1e-6


# ----------------------------------------------------------------------------- every cell trains


@pytest.mark.slow
@pytest.mark.parametrize("name", cells.available())
def test_one_lm_smoke_step_and_one_adding_step_have_finite_loss(name):
    vocab = 11
    c = language_modelling.get_config("smoke")
    c.unlock()
    c.model.cell = name
    model = lm_lib.build(c.model, vocab)
    tx = make_optimizer(c.optim)
    params = model.init(jax.random.key(0))
    batch_size, seq_len = 2, 8
    state = {"params": params, "opt_state": tx.init(params), "carries": model.initial_carries(batch_size),
             "step": jnp.asarray(0, jnp.int32)}
    tokens = jax.random.randint(jax.random.key(1), (batch_size, seq_len + 1), 0, vocab)
    batch = {"x": tokens[:, :-1], "y": tokens[:, 1:], "reset": jnp.zeros((batch_size, seq_len), bool),
             "new_epoch": jnp.asarray(True)}
    new_state, m = lm.train_step(model, tx, state, batch, 1e-3, 0)
    assert np.isfinite(float(m["loss"])) and float(m["update_norm"]) > 0

    g = gradient_flow.get_config(f"smoke,cell={name}")
    seq_model, spec = sequence.build(g)
    tx = make_optimizer(g.optim)
    p = seq_model.init(jax.random.key(0))
    b = spec.batch(0, 0, 4)
    state = {"params": p, "opt_state": tx.init(p), "step": jnp.asarray(0, jnp.int32)}
    _, m = sequence.train_step(seq_model, tx, state, {"xs": b.xs_TxBxD, "targets": b.targets_TxB,
                                                         "mask": b.mask_TxB}, 1e-3)
    assert np.isfinite(float(m["loss"]))


def test_a_new_cell_is_selected_by_name_from_a_config():
    c = language_modelling.get_config("smoke")
    c.unlock()
    configs.set_dotted(c, "model.cell", "mingru")
    assert lm_lib.build(c.model, 5).stack.cell.name == "mingru"


def test_the_worked_example_of_the_docs_is_a_working_cell(tmp_path, monkeypatch):
    """docs/adding_a_cell.md's example, taken from the doc itself and dropped into
    the package path: with no other edit it is listed, passes the generic
    contract, equals its equations in numpy and builds from a config by name."""
    import re

    import test_contract

    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "adding_a_cell.md")).read()
    code = re.search(r"Save as `rnnlab/cells/ifrnn.py`:\n\n```python\n(.*?)```", doc, re.S).group(1)
    (tmp_path / "ifrnn.py").write_text(code)
    monkeypatch.setattr(cells, "__path__", [*cells.__path__, str(tmp_path)])
    assert "ifrnn" in cells.available()
    test_contract.test_scan_equals_python_loop("ifrnn")
    test_contract.test_lengths_equal_running_each_sequence_alone("ifrnn", True)
    test_contract.test_float64_gradients_match_finite_differences("ifrnn")
    p, x, h, new_h, out = _step_inputs("ifrnn")
    i, f, n = np.split(_dense(p, x, h), 3, -1)
    np.testing.assert_allclose(out, sig(i) * np.tanh(n) + (1 - sig(f)) * h, rtol=1e-10, atol=1e-12)
    c = language_modelling.get_config("smoke")
    c.unlock()
    configs.set_dotted(c, "model.cell", "ifrnn")
    assert lm_lib.build(c.model, 5).stack.cell.name == "ifrnn"


def test_the_probes_example_of_the_docs_runs_on_the_worked_example(tmp_path, monkeypatch, capsys):
    """docs/adding_a_cell.md's "Probing it": the worked example with its gates() added, and the
    copy-paste probes block, both taken from the doc: it prints a decay rate, |h| and a memory
    time that equals the closed form -1/log(mean retain gate) from the cell's own gates."""
    import re

    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "adding_a_cell.md")).read()
    code = re.search(r"Save as `rnnlab/cells/ifrnn.py`:\n\n```python\n(.*?)```", doc, re.S).group(1)
    gates = re.search(r"Add to `rnnlab/cells/ifrnn.py`:\n\n```python\n(.*?)```", doc, re.S).group(1)
    example = re.search(r"and probe it \(copy, paste, run\):\n\n```python\n(.*?)```", doc, re.S).group(1)
    (tmp_path / "ifrnn.py").write_text(code + "\n\n" + gates)
    monkeypatch.setattr(cells, "__path__", [*cells.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "rnnlab.cells.ifrnn", raising=False)  # another test may have loaded one
    cells.spec.cache_clear()
    try:
        scope: dict = {}
        exec(compile(example, "adding_a_cell.md", "exec"), scope)
        out = capsys.readouterr().out
        assert re.search(r"gradient: [\d.]+ per step \(log [+-][\d.]+\); \|h\| mean [\d.]+, max [\d.]+; "
                         r"memory time [\d.]+ steps", out), out
        cell, params, xs, stats = scope["cell"], scope["params"], scope["xs"], scope["stats"]
        carries, _ = probes.carry_trajectory(cell, params, xs, d_h=32)
        prev = jnp.concatenate([jnp.zeros_like(carries[:1]), carries[:-1]])
        f = jax.nn.sigmoid(np.split(cell.precompute(params, xs) + prev @ params["w_h_HxG"], 3, -1)[1])
        np.testing.assert_allclose(float(stats["memory_time"]), -1.0 / np.log(float(jnp.mean(1.0 - f))), rtol=1e-5)
    finally:
        cells.spec.cache_clear()
        sys.modules.pop("rnnlab.cells.ifrnn", None)
