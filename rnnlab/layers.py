"""Stacks of recurrent layers: several layers, two directions, dropout kinds,
per-layer initial and final carries. ``Stack`` is a frozen description with
pure ``init`` / ``apply``; ``RecurrentStack`` is the thin Flax module around it.

Parameter and carry trees share one naming scheme::

    {'layer_0': {'forward': ..., 'backward': ...}, 'layer_1': {...}, ...}
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnnlab import cells as cells_lib
from rnnlab import scan
from rnnlab.cells._common import Array, Params

DROPOUT_KINDS = ("standard", "variational")  # standard: a new mask every step
MERGES = ("concat", "sum")


def _locked_mask(key: Array, rate: float, shape: tuple) -> Array:
    """Inverted-dropout mask scaled by 1/(1-rate); callers choose its shape, e.g.
    (1, B, D) for one mask per sequence (variational / locked dropout)."""
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return keep.astype(jnp.float32) / (1.0 - rate)


def _dropout(key: Array, rate: float, x: Array, shape: tuple) -> Array:
    if rate == 0.0:
        return x
    return x * _locked_mask(key, rate, shape).astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class Stack:
    """A stack of ``num_layers`` recurrent layers of one cell.

    Attributes:
      cell: a registered cell name or a ``cells.Cell`` with options bound.
      d_in, d_h: input features and hidden units per direction.
      bidirectional, merge: two directions merged by 'concat' (output 2H) or 'sum' (H).
      dropout, dropout_kind: dropout on the outputs of every layer but the last,
        'standard' (new mask per step, as torch.nn.LSTM(dropout=...)) or
        'variational' (one mask per sequence, Gal & Ghahramani 2016).
      input_dropout, output_dropout: locked (one mask per sequence) dropout on the
        stack's input and output (Merity et al. 2017's variational dropout).
      recurrent_dropout: one mask per sequence on h where it enters the
        recurrent matmul (Gal & Ghahramani 2016).
      unroll, remat, compute_dtype: passed to ``scan.run``.
    """

    cell: Any
    d_in: int
    d_h: int
    num_layers: int = 1
    bidirectional: bool = False
    merge: str = "concat"
    dropout: float = 0.0
    dropout_kind: str = "standard"
    input_dropout: float = 0.0
    output_dropout: float = 0.0
    recurrent_dropout: float = 0.0
    unroll: int = 1
    remat: bool = False
    compute_dtype: Any = None

    def __post_init__(self):
        object.__setattr__(self, "cell", cells_lib.get(self.cell))
        if self.dropout_kind not in DROPOUT_KINDS:
            raise ValueError(f"dropout_kind must be one of {DROPOUT_KINDS}, got {self.dropout_kind!r}")
        if self.merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, got {self.merge!r}")
        for name in ("dropout", "input_dropout", "output_dropout", "recurrent_dropout"):
            rate = getattr(self, name)
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{name} must be a rate in [0, 1), got {rate}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if self.recurrent_dropout and not self.cell.supports_recurrent_dropout:
            raise ValueError(
                f"recurrent_dropout: cell {self.cell.name!r} has no h_mask_BxH argument in step"
            )

    @property
    def directions(self) -> tuple[str, ...]:
        return ("forward", "backward") if self.bidirectional else ("forward",)

    @property
    def d_out(self) -> int:
        return 2 * self.d_h if self.bidirectional and self.merge == "concat" else self.d_h

    def layer_d_in(self, layer: int) -> int:
        return self.d_in if layer == 0 else self.d_out

    def init_layer(self, key: Array, layer: int, dtype=jnp.float32) -> Params:
        keys = jax.random.split(key, len(self.directions))
        return {
            d: self.cell.init(k, self.layer_d_in(layer), self.d_h, dtype=dtype)
            for d, k in zip(self.directions, keys, strict=True)
        }

    def init(self, key: Array, dtype=jnp.float32) -> Params:
        keys = jax.random.split(key, self.num_layers)
        return {f"layer_{i}": self.init_layer(k, i, dtype) for i, k in enumerate(keys)}

    def initial_carries(self, batch: int) -> Params:
        return {
            f"layer_{i}": {d: self.cell.initial_carry(batch, self.d_h) for d in self.directions}
            for i in range(self.num_layers)
        }

    def apply(
        self,
        params: Params,
        xs_TxBxD: Array,
        *,
        lengths_B: Array | None = None,
        reset_TxB: Array | None = None,
        carries: Params | None = None,
        rng: Array | None = None,
        train: bool = False,
    ) -> tuple[Array, Params]:
        """Run the stack. Returns (ys_TxBxO, final carries per layer and direction).

        Dropout is active only when ``train`` is True, and then needs ``rng``.
        """
        scan.check_inputs(xs_TxBxD, lengths_B, reset_TxB, self.d_in)
        n_steps, batch, _ = xs_TxBxD.shape
        if carries is None:
            carries = self.initial_carries(batch)
        dropping = train and any(
            (self.dropout, self.input_dropout, self.output_dropout, self.recurrent_dropout)
        )
        if dropping and rng is None:
            raise ValueError("rng: dropout is on (train=True with a nonzero rate) and needs a PRNG key")

        def key(*path: str) -> Array:  # crc32, not hash(): str hashes are salted per process
            return jax.random.fold_in(rng, zlib.crc32("/".join(path).encode()) % (2**31))

        x = xs_TxBxD
        if dropping:
            x = _dropout(key("input"), self.input_dropout, x, (1, batch, x.shape[-1]))
        if scan.choose_stack(self, params, x, reset_TxB=reset_TxB, dropping=dropping).path == "cudnn":
            from rnnlab import cudnn

            x, finals = cudnn.apply(self, params, x, lengths_B=lengths_B, carries=carries)
            if dropping:
                x = _dropout(key("output"), self.output_dropout, x, (1,) + x.shape[1:])
            return x, finals
        finals = {}
        for i in range(self.num_layers):
            name = f"layer_{i}"
            outs, finals[name] = [], {}
            for direction in self.directions:
                h_mask = None
                if dropping and self.recurrent_dropout:
                    h_mask = _locked_mask(key(name, direction, "h"), self.recurrent_dropout, (batch, self.d_h))
                finals[name][direction], ys = scan.run(
                    self.cell, params[name][direction], carries[name][direction], x,
                    reset_TxB=reset_TxB, lengths_B=lengths_B, reverse=direction == "backward",
                    unroll=self.unroll, remat=self.remat, compute_dtype=self.compute_dtype,
                    h_mask_BxH=h_mask,
                )
                outs.append(ys)
            x = outs[0] if len(outs) == 1 else (
                jnp.concatenate(outs, axis=-1) if self.merge == "concat" else outs[0] + outs[1]
            )
            if dropping and i < self.num_layers - 1 and self.dropout:
                shape = x.shape if self.dropout_kind == "standard" else (1,) + x.shape[1:]
                x = _dropout(key(name, "between"), self.dropout, x, shape)
        if dropping:
            x = _dropout(key("output"), self.output_dropout, x, (1,) + x.shape[1:])
        return x, finals


class RecurrentStack(nn.Module):
    """Flax module around ``Stack``, so recurrent layers compose with Flax models.

    Parameters live under ``layer_{i}`` -> ``forward``/``backward`` -> the cell's
    own names (``w_x_DxG``, ``w_h_HxG``, ``b_G`` ...). Dropout draws from the
    'dropout' RNG stream when ``deterministic`` is False.

    Call: ``ys, carries = module(xs, lengths=None, reset=None, carries=None)``;
    ``xs`` is batch-major (B, T, D) unless ``time_major``.
    """

    cell: Any = "lstm"
    features: int = 128
    num_layers: int = 1
    bidirectional: bool = False
    merge: str = "concat"
    dropout: float = 0.0
    dropout_kind: str = "standard"
    input_dropout: float = 0.0
    output_dropout: float = 0.0
    recurrent_dropout: float = 0.0
    unroll: int = 1
    remat: bool = False
    compute_dtype: Any = None
    param_dtype: Any = jnp.float32
    time_major: bool = False

    def stack(self, d_in: int) -> Stack:
        fields = {f.name for f in dataclasses.fields(Stack)} - {"d_in", "d_h"}
        return Stack(d_in=d_in, d_h=self.features, **{f: getattr(self, f) for f in fields})

    @nn.compact
    def __call__(self, xs, lengths=None, reset=None, carries=None, *, deterministic: bool = True):
        if getattr(xs, "ndim", None) != 3:
            raise ValueError(f"xs must have rank 3, got shape {getattr(xs, 'shape', None)}")
        xs_TxBxD = xs if self.time_major else jnp.swapaxes(xs, 0, 1)
        if reset is not None and not self.time_major:
            reset = jnp.swapaxes(reset, 0, 1)
        stack = self.stack(xs_TxBxD.shape[-1])
        params = {
            f"layer_{i}": self.param(f"layer_{i}", lambda k, i=i: stack.init_layer(k, i, self.param_dtype))
            for i in range(stack.num_layers)
        }
        rng = None if deterministic else self.make_rng("dropout")
        ys, finals = stack.apply(
            params, xs_TxBxD, lengths_B=lengths, reset_TxB=reset, carries=carries,
            rng=rng, train=not deterministic,
        )
        return (ys if self.time_major else jnp.swapaxes(ys, 0, 1)), finals
