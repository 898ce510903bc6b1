"""The cuDNN LSTM path on CPU: rnnlab's parameters to and from cuDNN's flat weight buffer,
checked against jax.experimental.rnn's own weight unpacking and its reference LSTM
(lstm_ref, what the cuDNN call computes), the path's carries and lengths (a zero-length
row included), and the stack chooser's decision for a table of cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import rnn

from rnnlab import cells, convert, cudnn, scan
from rnnlab.layers import Stack

CASES = [(1, False, 5, 7), (2, True, 6, 4), (2, False, 3, 8)]  # layers, bidirectional, D, H


def _stack(layers, bi, d, h):
    return Stack("lstm", d, h, num_layers=layers, bidirectional=bi)


def _inputs(stack, t=9, b=4, seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    params = stack.init(k[0])
    xs = jax.random.normal(k[1], (t, b, stack.d_in), jnp.float32)
    carries = jax.tree.map(lambda a: 0.5 * jax.random.normal(k[2], a.shape, a.dtype), stack.initial_carries(b))
    return params, xs, carries


@pytest.mark.parametrize("layers,bi,d,h", CASES[:2])
def test_flat_weights_are_jax_experimental_rnns_layout(layers, bi, d, h):
    stack = _stack(layers, bi, d, h)
    params, _, _ = _inputs(stack)
    flat = cudnn.to_cudnn(stack, params)
    assert flat.shape == (rnn.get_num_params_in_lstm(d, h, layers, bi),) and flat.dtype == jnp.float32
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(flat, d, h, layers, bi)
    sd = convert.to_torch(params, "lstm")  # torch.nn.LSTM's tensors: cuDNN's, one pseudo-layer each
    names = [f"l{i}{'_reverse' if dr == 'backward' else ''}" for i in range(layers) for dr in stack.directions]
    for k, n in enumerate(names):
        np.testing.assert_array_equal(w_ih[k], sd[f"weight_ih_{n}"])
        np.testing.assert_array_equal(w_hh[k], sd[f"weight_hh_{n}"])
        np.testing.assert_array_equal(b_ih[k], sd[f"bias_ih_{n}"])
        np.testing.assert_array_equal(b_hh[k], sd[f"bias_hh_{n}"])
    back = cudnn.from_cudnn(stack, flat)
    jax.tree.map(np.testing.assert_array_equal, back, params)
    # cuDNN's own initialisation (two biases) -> rnnlab (one) -> cuDNN: the same function
    theirs = rnn.init_lstm_weight(jax.random.key(3), d, h, layers, bi)
    x = jax.random.normal(jax.random.key(4), (3, 5, d))
    h0 = c0 = jnp.zeros((layers * (2 if bi else 1), 3, h))
    n = jnp.asarray([5, 2, 1], jnp.int32)
    a = cudnn.reference_lstm(x, h0, c0, theirs, n, d, h, layers, 0.0, bi)
    b = cudnn.reference_lstm(x, h0, c0, cudnn.to_cudnn(stack, cudnn.from_cudnn(stack, theirs)), n, d, h, layers,
                             0.0, bi)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), a, b)
    with pytest.raises(ValueError, match=r"needs \("):
        cudnn.from_cudnn(stack, flat[1:])


@pytest.mark.parametrize("layers,bi,d,h", CASES)
def test_the_cudnn_call_computes_what_the_stack_computes_with_lengths_and_a_zero_length_row(layers, bi, d, h):
    """jax.experimental.rnn's reference LSTM on the converted weights and carries (what cuDNN computes)
    against Stack.apply's own path, float32 to 1e-5: outputs (zeros past each length) and final carries
    (at each row's last valid step; a row of length 0 keeps its initial carry)."""
    stack = _stack(layers, bi, d, h)
    params, xs, carries = _inputs(stack)
    lengths = jnp.asarray([9, 4, 0, 1], jnp.int32)
    want_y, want_c = stack.apply(params, xs, lengths_B=lengths, carries=carries)
    assert scan.choose_stack(stack, params, xs).path == "layers"  # on CPU: the stack's own path
    got_y, got_c = cudnn.apply(stack, params, xs, lengths_B=lengths, carries=carries, lstm_fn=cudnn.reference_lstm)
    close = lambda u, v: np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-5)  # noqa: E731
    close(got_y, want_y)
    jax.tree.map(close, got_c, want_c)
    assert not np.any(np.asarray(got_y)[:, 2]) and not np.any(np.asarray(got_y)[4:, 1])
    jax.tree.map(lambda c, c0: np.testing.assert_array_equal(np.asarray(c)[2], np.asarray(c0)[2]), got_c, carries)
    # gradients through the path too (cuDNN has its own backward; the reference's is autodiff)
    loss = lambda p, f: jnp.sum(jnp.tanh(f(p)[0]))  # noqa: E731
    g_want = jax.grad(loss)(params, lambda p: stack.apply(p, xs, lengths_B=lengths, carries=carries))
    g_got = jax.grad(loss)(params, lambda p: cudnn.apply(stack, p, xs, lengths_B=lengths, carries=carries,
                                                         lstm_fn=cudnn.reference_lstm))
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5), g_got, g_want)


def test_stack_apply_takes_the_cudnn_path_where_the_chooser_says_so(monkeypatch):
    stack = _stack(2, True, 6, 4)
    params, xs, carries = _inputs(stack)
    lengths = jnp.asarray([9, 3, 0, 7], jnp.int32)
    want = stack.apply(params, xs, lengths_B=lengths, carries=carries)
    calls = []

    def fake_cudnn(*args):
        calls.append(args[5:])
        return cudnn.reference_lstm(*args)

    monkeypatch.setattr(cudnn, "_cudnn_lstm", fake_cudnn)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert scan.choose_stack(stack, params, xs).path == "cudnn"
    got = stack.apply(params, xs, lengths_B=lengths, carries=carries)
    assert calls == [(6, 4, 2, 0.0, True)]
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-5), got, want)


def test_the_stack_chooser_decides_each_case_with_its_reason():
    x32 = jax.ShapeDtypeStruct((20, 8, 6), jnp.float32)
    lstm = _stack(2, True, 6, 4)
    p32 = jax.eval_shape(lstm.init, jax.random.key(0))
    p64 = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float64), p32)
    reset = jax.ShapeDtypeStruct((20, 8), jnp.bool_)
    table = [  # (stack, params, kwargs, path, words in the reason)
        (lstm, p32, {"platform": "gpu"}, "cudnn", "one cuDNN LSTM call for 2 layer(s), both directions on gpu"),
        (lstm, p32, {"platform": "cuda"}, "cudnn", "on cuda"),
        (lstm, p32, {"platform": "cpu"}, "layers", "platform cpu (cuDNN runs on a GPU)"),
        (lstm, p32, {"platform": "tpu"}, "layers", "platform tpu"),
        (lstm, p64, {"platform": "gpu"}, "layers", "dtype float32/float64 (the cuDNN path is float32)"),
        (Stack("lstm", 6, 4, compute_dtype=jnp.bfloat16), None, {"platform": "gpu"}, "layers",
         "compute_dtype=bfloat16"),
        (lstm, p32, {"platform": "gpu", "reset_TxB": reset}, "layers", "resets inside the sequence"),
        (Stack("lstm", 6, 4, num_layers=2, dropout=0.2), None, {"platform": "gpu", "dropping": True}, "layers",
         "dropout inside the stack while training"),
        (Stack("lstm", 6, 4, num_layers=2, dropout=0.2), None, {"platform": "gpu", "dropping": False}, "cudnn",
         "one cuDNN LSTM call"),
        (Stack("lstm", 6, 4, recurrent_dropout=0.1), None, {"platform": "gpu", "dropping": True}, "layers",
         "recurrent or between layers"),
        (Stack("lstm", 6, 4, input_dropout=0.3, output_dropout=0.3), None, {"platform": "gpu", "dropping": True},
         "cudnn", "one cuDNN LSTM call"),  # outside the stack: applied around the call
        (Stack("gru", 6, 4), None, {"platform": "gpu"}, "layers", "cell gru"),
        (Stack("peephole", 6, 4), None, {"platform": "gpu"}, "layers", "cell peephole"),
        (Stack("lstm", 6, 4, bidirectional=True, merge="sum"), None, {"platform": "gpu"}, "layers", "merge='sum'"),
        (Stack("lstm", 6, 4, remat=True), None, {"platform": "gpu"}, "layers", "remat"),
        (Stack(cells.get("lstm", forget_bias=0.0), 6, 4), None, {"platform": "gpu"}, "cudnn",
         "one cuDNN LSTM call"),  # any forget bias: it lives in the bias
    ]
    import os
    os.environ["RNNLAB_CUDNN"] = "0"
    try:
        assert "RNNLAB_CUDNN=0 (environment)" in scan.choose_stack(lstm, p32, x32, platform="gpu").reason
    finally:
        del os.environ["RNNLAB_CUDNN"]
    for stack, params, kw, path, words in table:
        params = params if params is not None else jax.eval_shape(stack.init, jax.random.key(0))
        choice = scan.choose_stack(stack, params, x32, **kw)
        assert choice.path == path and words in choice.reason, (stack, kw, choice)
