"""Shared vocabulary for cells: the shape legend, the cell contract as typed
protocols, type aliases, initialisers.

Shape legend: names carry shapes (``h_BxH``, ``xs_TxBxD``), one meaning per letter
across rnnlab/ (cells, scan, layers, fused, native, probes, ctc, models, data):

  =====  ===========================================================================
  T      time steps of a sequence (the scanned axis)
  B      batch: sequences side by side
  D      input features of a layer
  H      hidden units: the output h of a cell
  G      gate pre-activations of a step, n_gates * H (``xp_BxG``, ``w_h_HxG``)
  N      state units of a cell when they are not H (a linear recurrence's state,
         LSTMP's cell): ``h_BxN``, ``a_TxBxN``, ``w_p_NxH``
  A      what a fused step keeps for its backward pass, carry and gate
         activations packed in one row (``acts_BxA``, ``saved_TxBxA``)
  P      positions of a row of a token stream cut into B rows (``tokens_BxP``)
  V      vocabulary size (``logits_BxTxV``)
  M      mel bands (features of a frame)
  K      frequency bins of an FFT, n_fft // 2 + 1 (``fb_KxM``)
  C      channels (of a convolution, of a carry's components)
  O      output channels of a convolution
  W      width of a sliding window: taps of a convolution kernel (``w_WxCxO``),
         samples of an analysis frame (``frames_TxW``)
  S      a flat stream of samples or tokens (``tokens_S``, ``wave_S``)
  F      frames of a spectrogram, clips concatenated (``logmel_FxM``)
  Q      steps after a strided front end, ceil(T / stride) (``logits_BxQxV``)
  U      label positions of a CTC target (``labels_BxU``)
  R      time lags of a probe
  E      ensemble members
  Z      hypotheses kept by a beam search, beam_width of them (``score_Z``, ``toks_ZxT``)
  =====  ===========================================================================

Layers are indexed (``layer_0``), never a shape letter.

Conventions fixed for every cell in this package (tested against PyTorch/Flax):
  * time-major sequences: ``xs_TxBxD``;
  * weights are stored input-major (``w_x_DxG``, ``w_h_HxG``: ``x @ w``), the
    transpose of PyTorch's ``weight_ih`` / ``weight_hh``;
  * gate blocks inside G follow PyTorch's order (LSTM i,f,g,o; GRU r,z,n);
  * biases that enter a sum linearly are merged into one (PyTorch's
    ``b_ih + b_hh``); a bias that a gate multiplies stays separate (GRU ``b_hn``).

The cell contract. A cell is a module of pure functions; ``rnnlab.cells`` checks
each module against the protocols below when it is loaded (a missing, misspelt or
half-provided function is a ``CellContractError`` naming the file and the function)
and keeps what it found in a typed record, ``rnnlab.cells.CellSpec``:

  ``PlainCell``         init, initial_carry, step (required); precompute (optional)
  ``LinearRecurrence``  linear_coefficients: the parallel path (optional)
  ``LinearExtras``      LOG_SPACE, to_state, from_state, readout (optional; only
                        with linear_coefficients)
  ``FusedCell``         RECURRENT_PARAMS, fused_forward, fused_backward,
                        fused_param_grads: ``rnnlab.fused``'s layer (all or none);
                        fused_available (optional, only with them)
  ``CellExtras``        N_GATES, OPTION_CHOICES, CARRY_NAMES, output_of_carry (optional)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp

Array = jax.Array
Params = Any  # a pytree (dict) of arrays
Carry = Any  # an array or a tuple of arrays, each B x H, float32
Initializer = Callable[[Array, tuple, Any], Array]  # (key, shape, dtype) -> array

# ----------------------------------------------------------------------------- the contract
# The protocols name the functions and their positional arguments; rnnlab.cells checks a
# module against them when it loads it. Options are keyword-only arguments with defaults.


class PlainCell(Protocol):
    """Every cell: ``step`` is the only sequential code."""

    def init(self, key: Array, d_in: int, d_h: int, /) -> Params:
        """Parameters, a dict of arrays; keyword-only options and ``dtype``."""

    def initial_carry(self, batch: int, d_h: int, /) -> Carry:
        """Zeros, float32 leaves each ``B x width``, distinct buffers."""

    def step(self, params: Params, carry: Carry, xp_BxG: Array, /) -> tuple[Carry, Array]:
        """One time step -> (carry, h_BxH); an optional 4th argument ``h_mask_BxH``
        (recurrent dropout) opts the cell into recurrent dropout."""


class Precompute(Protocol):
    """Optional: the work that is parallel in time (default: identity)."""

    def precompute(self, params: Params, x_TxBxD: Array, /) -> Array:
        """xs -> xp_TxBxG, usually ONE matmul ``x @ W_x + b`` for all t."""


class LinearRecurrence(Protocol):
    """Optional: h_t = a_t * h_{t-1} + b_t elementwise, a_t and b_t functions of the
    input only; ``scan.run`` then has the parallel path (one associative scan)."""

    def linear_coefficients(self, params: Params, xp_TxBxG: Array, /) -> tuple[Array, Array]:
        """-> (a_TxBxN, b_TxBxN), possibly complex; (log a, log b) with LOG_SPACE."""


class LinearExtras(Protocol):
    """Optional, only beside ``linear_coefficients``."""

    LOG_SPACE: bool  # the pair is (log a, log b), b > 0 (Feng et al. 2024); default False

    def to_state(self, carry: Carry, /) -> Array:
        """carry -> h_BxN (default: identity)."""

    def from_state(self, h_BxN: Array, /) -> Carry:
        """h_BxN -> carry (default: identity)."""

    def readout(self, params: Params, h_TxBxN: Array, xp_TxBxG: Array, /) -> Array:
        """The states -> hs_TxBxH (default: identity)."""


class Chunkwise(Protocol):
    """Optional: the chunkwise-parallel form of a cell whose state is a matrix (mLSTM):
    the sequence in chunks, each one a masked matrix product (parallel within the
    chunk), the state passed from chunk to chunk. ``scan.run(path='parallel')`` calls
    it forward in time (it flips the arrays for ``reverse``), with ``reset_TxB``
    (bool: the carry goes back to ``carry0`` before step t) and ``valid_TxB`` (bool:
    a step past the sequence's length keeps the carry; its output is discarded)."""

    def chunkwise(self, params: Params, carry0: Carry, xp_TxBxG: Array, reset_TxB: Array, valid_TxB: Array,
                  /) -> tuple[Carry, Array]:
        """-> (final carry, hs_TxBxH), equal to a scan of ``step`` with the same resets and lengths."""


class FusedCell(Protocol):
    """Optional, all or none: the fused layer of ``rnnlab.fused`` (custom VJP; the
    backward loop carries only the state gradients, W_h's gradient is one GEMM)."""

    RECURRENT_PARAMS: tuple[str, ...]  # the parameters the recurrence reads (the rest enter via precompute)

    def fused_forward(self, params: Params, carry_in: Carry, xp_BxG: Array, hm_BxH: Array, /):
        """-> (carry, h_BxH, acts_BxA): acts are what the backward step needs."""

    def fused_backward(self, params: Params, carry_in: Carry, acts_BxA: Array, h_mask_BxH: Array,
                       d_carry: Carry, dy_BxH: Array, /):
        """-> (d_carry_in, dxp_BxG, dhw_BxG): dhw w.r.t. hm @ W_h (None: equal to dxp)."""

    def fused_param_grads(self, params: Params, hm_TxBxH: Array, dhw_TxBxG: Array, /) -> Params:
        """The gradients of RECURRENT_PARAMS from the backward loop's outputs."""


class FusedExtras(Protocol):
    """Optional, only beside a fused layer."""

    def fused_available(self) -> bool:
        """Whether the fused layer applies for these (keyword-only) options, e.g. GRU
        ``reset_after`` (default: always)."""


class CellExtras(Protocol):
    """Optional facts about a cell."""

    N_GATES: int  # gate blocks in G (default 1)
    OPTION_CHOICES: Mapping[str, tuple[str, ...]]  # the allowed values of a str option
    CARRY_NAMES: tuple[str, ...]  # a name per carry leaf (probes)

    def output_of_carry(self, carry: Carry, /) -> Array:
        """carry -> h (probes; default: a single-array carry is h)."""

    def gates(self, params: Params, carry: Carry, xp_BxG: Array, /) -> tuple[dict[str, tuple[str, Array]], str | None]:
        """The gate values of the step from ``carry`` (the carry before the step), for the probes
        (``rnnlab.probes.gate_statistics``: saturation, memory time): ``({name: (kind, values_BxW)},
        memory_gate)``, kind 'sigmoid', 'tanh', 'relu' or 'exp' (a positive gate with no upper
        bound), memory_gate the name of the gate that keeps the old state per step (the LSTM's f,
        the GRU's z; None if the cell has none)."""



INITIALIZERS = (
    "orthogonal", "lecun_normal", "glorot_uniform", "glorot_normal", "pytorch",
    "identity", "zeros", "uniform:<scale>", "normal:<stddev>",
)


def initializer(name: str, d_h: int) -> Initializer:
    """An initialiser by name.

    ``pytorch`` is U(-1/sqrt(H), 1/sqrt(H)) as in torch.nn.RNN/LSTM/GRU;
    ``identity`` is the IRNN init (Le et al. 2015); ``uniform:0.1`` is
    U(-0.1, 0.1) (Zaremba et al. 2014); ``normal:0.01`` is N(0, 0.01^2).
    """
    nn_init = jax.nn.initializers
    if name == "orthogonal":
        return nn_init.orthogonal()
    if name == "lecun_normal":
        return nn_init.lecun_normal()
    if name == "glorot_uniform":
        return nn_init.glorot_uniform()
    if name == "glorot_normal":
        return nn_init.glorot_normal()
    if name == "zeros":
        return nn_init.zeros
    if name == "pytorch":
        return _uniform(1.0 / math.sqrt(d_h))
    if name == "identity":
        return lambda key, shape, dtype=jnp.float32: jnp.eye(*shape, dtype=dtype)
    if name.startswith("uniform:"):
        return _uniform(float(name.split(":", 1)[1]))
    if name.startswith("normal:"):
        return nn_init.normal(float(name.split(":", 1)[1]))
    raise ValueError(f"unknown initializer {name!r}; expected one of {INITIALIZERS}")


def _uniform(scale: float) -> Initializer:
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


def init_gate_blocks(
    key: Array, name: str, d_rows: int, d_h: int, n_gates: int, dtype=jnp.float32
) -> Array:
    """A ``d_rows x (n_gates*d_h)`` matrix initialised one H-wide gate block at a
    time, so ``orthogonal`` makes each gate's recurrent matrix orthogonal (as
    Flax and Keras do) rather than the fused rectangle."""
    init = initializer(name, d_h)
    keys = jax.random.split(key, n_gates)
    return jnp.concatenate([init(k, (d_rows, d_h), dtype) for k in keys], axis=1)


def init_dense(
    key: Array, d_in: int, d_h: int, n_gates: int, *, input_init: str, recurrent_init: str,
    bias_init: str, dtype=jnp.float32,
) -> dict[str, Array]:
    """The parameters every dense-gated cell has: ``w_x_DxG``, ``w_h_HxG``, ``b_G``
    (G = n_gates * H), each initialised gate block by gate block."""
    kx, kh, kb = jax.random.split(key, 3)
    return {
        "w_x_DxG": init_gate_blocks(kx, input_init, d_in, d_h, n_gates, dtype),
        "w_h_HxG": init_gate_blocks(kh, recurrent_init, d_h, d_h, n_gates, dtype),
        "b_G": initializer(bias_init, d_h)(kb, (n_gates * d_h,), dtype),
    }


def chrono_bias(key: Array, d_h: int, t_max: int, dtype, cell: str) -> Array:
    """Chrono initialisation (Tallec & Ollivier 2018, eq. 13): log(u), u ~ U(1, t_max - 1)
    per unit, the bias of the gate that keeps the state (LSTM forget, GRU keep), so the
    units' memory times spread over 2 .. t_max steps. Drawn from its own stream of
    ``key``: the weights stay those of the same key without chrono."""
    if t_max <= 2:
        raise ValueError(f"{cell} chrono={t_max}: give the longest dependency to expect, T_MAX > 2 steps")
    u = jax.random.uniform(jax.random.fold_in(key, 0x6368726F), (d_h,), jnp.float32, 1.0, t_max - 1.0)
    return jnp.log(u).astype(dtype)


def split_gates(g_BxG: Array, n_gates: int) -> list[Array]:
    """Split gate pre-activations into ``n_gates`` blocks of H along the last axis."""
    return jnp.split(g_BxG, n_gates, axis=-1)


def recurrent_input(h_BxH: Array, h_mask_BxH: Array | None, w_dtype) -> Array:
    """h as it enters the recurrent matmul: masked by the per-sequence recurrent
    dropout mask (Gal & Ghahramani 2016) when one is given, cast to the weights'
    dtype (bfloat16 compute keeps a float32 carry)."""
    if h_mask_BxH is not None:
        h_BxH = h_BxH * h_mask_BxH
    return h_BxH.astype(w_dtype)


def dense_precompute(params: Params, x_TxBxD: Array) -> Array:
    """x @ W_x + b for every time step as ONE matmul: parallel in time, hoisted
    out of the sequential loop."""
    w = params["w_x_DxG"]
    return jnp.einsum("tbd,dg->tbg", x_TxBxD.astype(w.dtype), w) + params["b_G"]
