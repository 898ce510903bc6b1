"""The cuDNN LSTM path: on a GPU, an eligible LSTM ``layers.Stack`` runs as one
``jax.experimental.rnn.lstm`` call (cuDNN's fused multi-layer, bidirectional LSTM)
instead of one scan per layer and direction.

    flat = cudnn.to_cudnn(stack, params)            # cuDNN's flat weight buffer (1-D)
    params = cudnn.from_cudnn(stack, flat)          # and back
    ys, carries = cudnn.apply(stack, params, xs_TxBxD, lengths_B=..., carries=...)

Which stacks are eligible, and why a stack is not, is decided in one place,
``scan.choose_stack`` (``Stack.apply`` follows it): an LSTM stack (any forget bias:
it lives in the bias), float32, no compute_dtype, no resets inside the sequence, no
recurrent or between-layer dropout while training, 'concat' merge, no remat, on a
GPU backend. Lengths are right-padding (rnnlab's meaning); a row of length 0 is run
as length 1 and then masked: its outputs are zeros and its final carry is its
initial carry, as on every other path.

cuDNN's layout (``jax.experimental.rnn.unpack_lstm_weights``): for each pseudo-layer
(layer, direction) W_ih (4H x D_in) then W_hh (4H x H), then for each pseudo-layer
b_ih then b_hh, gates i, f, g, o: PyTorch's ``torch.nn.LSTM`` layout, so the weights
are ``rnnlab.convert.to_torch``'s, flattened.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from rnnlab.cells._common import Array, Params


def _pseudo_layers(stack) -> list[tuple[str, str]]:
    return [(f"layer_{i}", d) for i in range(stack.num_layers) for d in stack.directions]


def num_weights(stack) -> int:
    """Length of the stack's flat cuDNN weight buffer."""
    h, g = stack.d_h, 4 * stack.d_h
    return sum(g * stack.layer_d_in(i) + g * h + 2 * g for i in range(stack.num_layers)
               for _ in stack.directions)


def to_cudnn(stack, params: Params) -> Array:
    """The stack's LSTM parameters as cuDNN's flat weight buffer (float32, 1-D). The one
    rnnlab bias goes to b_ih, b_hh is zeros: the same function."""
    mats, biases = [], []
    for layer, d in _pseudo_layers(stack):
        p = params[layer][d]
        mats += [p["w_x_DxG"].T.reshape(-1), p["w_h_HxG"].T.reshape(-1)]
        biases += [p["b_G"], jnp.zeros_like(p["b_G"])]
    return jnp.concatenate([m.astype(jnp.float32) for m in mats + biases])


def from_cudnn(stack, weights: Array) -> Params:
    """rnnlab stack parameters from cuDNN's flat weight buffer (b_ih + b_hh merged)."""
    if weights.shape != (num_weights(stack),):
        raise ValueError(f"weights has shape {weights.shape}; this stack ({stack.num_layers} layers, "
                         f"{'bi' if stack.bidirectional else 'uni'}directional, D={stack.d_in}, H={stack.d_h}) "
                         f"needs ({num_weights(stack)},)")
    h, g = stack.d_h, 4 * stack.d_h
    out: Params = {}
    offset = 0
    for layer, d in _pseudo_layers(stack):
        d_in = stack.layer_d_in(int(layer.split("_")[1]))
        w_ih = weights[offset:offset + g * d_in].reshape(g, d_in)
        offset += g * d_in
        w_hh = weights[offset:offset + g * h].reshape(g, h)
        offset += g * h
        out.setdefault(layer, {})[d] = {"w_x_DxG": w_ih.T, "w_h_HxG": w_hh.T}
    for layer, d in _pseudo_layers(stack):
        out[layer][d]["b_G"] = weights[offset:offset + g] + weights[offset + g:offset + 2 * g]
        offset += 2 * g
    return out


def carries_to_cudnn(stack, carries: Params) -> tuple[Array, Array]:
    """(h_0, c_0), each (layers * directions) x B x H, from rnnlab's (c, h) carries."""
    hs, cs = [], []
    for layer, d in _pseudo_layers(stack):
        c, h = carries[layer][d]
        hs.append(h)
        cs.append(c)
    return jnp.stack(hs), jnp.stack(cs)


def carries_from_cudnn(stack, h_n: Array, c_n: Array) -> Params:
    """rnnlab's (c, h) carries from cuDNN's (h_n, c_n)."""
    out: Params = {}
    for k, (layer, d) in enumerate(_pseudo_layers(stack)):
        out.setdefault(layer, {})[d] = (c_n[k], h_n[k])
    return out


def _cudnn_lstm(x, h_0, c_0, weights, seq_lengths, input_size, hidden_size, num_layers, dropout, bidirectional):
    from jax.experimental import rnn

    return rnn.lstm(x, h_0, c_0, weights, seq_lengths, input_size, hidden_size, num_layers, dropout,
                    bidirectional)


def apply(stack, params: Params, xs_TxBxD: Array, *, lengths_B: Array | None = None,
          carries: Params | None = None, lstm_fn: Callable | None = None) -> tuple[Array, Params]:
    """The stack's forward pass (no dropout) as one cuDNN LSTM call: (ys_TxBx(D*H), final
    carries), what ``Stack.apply`` returns: zeros past each length, carries at each row's
    last valid step. ``lstm_fn``: the call (default ``jax.experimental.rnn.lstm``; tests
    pass one built on its ``lstm_ref``, which runs on any platform)."""
    lstm_fn = lstm_fn or _cudnn_lstm
    n_steps, batch, _ = xs_TxBxD.shape
    carries = stack.initial_carries(batch) if carries is None else carries
    lengths = jnp.full((batch,), n_steps, jnp.int32) if lengths_B is None else jnp.asarray(lengths_B, jnp.int32)
    empty_B = lengths == 0
    h_0, c_0 = carries_to_cudnn(stack, carries)
    y_BxTxO, h_n, c_n = lstm_fn(jnp.swapaxes(xs_TxBxD, 0, 1), h_0, c_0, to_cudnn(stack, params),
                                jnp.maximum(lengths, 1), stack.d_in, stack.d_h, stack.num_layers, 0.0,
                                stack.bidirectional)
    valid_TxB = (jnp.arange(n_steps)[:, None] < lengths[None, :])
    ys = jnp.where(valid_TxB[..., None], jnp.swapaxes(y_BxTxO, 0, 1), 0.0).astype(xs_TxBxD.dtype)
    h_n = jnp.where(empty_B[None, :, None], h_0, h_n)
    c_n = jnp.where(empty_B[None, :, None], c_0, c_n)
    return ys, carries_from_cudnn(stack, h_n, c_n)


def reference_lstm(x, h_0, c_0, weights, seq_lengths, input_size, hidden_size, num_layers, dropout,
                   bidirectional):
    """``jax.experimental.rnn.lstm``'s signature on its own reference implementation
    (``lstm_ref`` after ``unpack_lstm_weights``): runs on CPU, for tests."""
    from jax.experimental import rnn

    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, input_size, hidden_size, num_layers, bidirectional)
    return rnn.lstm_ref(x, h_0, c_0, w_ih, w_hh, b_ih, b_hh, seq_lengths, input_size, hidden_size, num_layers,
                        dropout, bidirectional)


def check_layout(stack) -> None:
    """Assert that ``num_weights`` is ``jax.experimental.rnn``'s own count for the stack."""
    from jax.experimental import rnn

    want = rnn.get_num_params_in_lstm(stack.d_in, stack.d_h, stack.num_layers, stack.bidirectional)
    if want != num_weights(stack):
        raise AssertionError(f"cuDNN weight count {want} != {num_weights(stack)}")

