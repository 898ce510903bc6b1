"""CTC acoustic model, as pure functions:

    log-mel_BxTxM -> features (MFCC/deltas/normalisation; SpecAugment when training)
                  -> optional 1-D convolutions over time (stride s each: T -> Q = ceil(T / s))
                  -> bidirectional recurrent stack (any registered cell, rnnlab.layers.Stack)
                  -> linear -> logits over blank + vocabulary -> CTC

Every stage respects each utterance's length: frames past it are zeroed before
each convolution (so 'same' padding sees zeros whether or not the batch is padded
further), the stack freezes its carries there, and the CTC loss masks them. So
padding never changes the loss or the gradients (tested).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnlab import ctc
from rnnlab import features as feat
from rnnlab.cells._common import Array, Params, initializer
from rnnlab.layers import Stack


def front_end_width(features: feat.FeatureSpec, conv) -> int:
    """Per-frame width of the front end's output: the last conv's channels, else the features'."""
    return conv[-1][2] if conv else features.dim


@dataclasses.dataclass(frozen=True)
class SpeechModel:
    """Hashable: a static argument of ``jax.jit``.

    Attributes:
      features: the feature spec (log-mel/MFCC, deltas, normalisation).
      conv: ((kernel, stride, channels), ...) of the 1-D front end (over time); () for none.
      stack: a bidirectional Stack whose d_in is the front end's output width.
      num_labels: blank + vocabulary.
      spec_augment: (freq_masks, freq_width, time_masks, time_width); zeros: off.
      members: > 1: an ensemble of that many networks of this architecture, trained
        together on the same batches from their own initial weights, dropout and
        SpecAugment draws. Their parameters are stacked on a leading axis; ``apply``
        returns every member's logits stacked (E x B x Q x V), each decoded on its
        own and the transcripts combined by voting (``decode_labels``, ROVER;
        averaging CTC posteriors deletes words: the members' label spikes do not
        line up); the loss is the sum of the members' own CTC losses (each
        member's gradient is its own loss's).
      sliced: the parameters are some of an ensemble's members (``slice_of``; stacked even
        for one). Which members of the whole they are is given at run time (``ids`` of
        ``apply`` and ``loss_and_metrics``), so that each member draws the dropout and
        SpecAugment masks it draws in the whole (``fold_in(rng, id)``), and slices of one
        size share one compiled program.
    """

    features: feat.FeatureSpec
    conv: tuple[tuple[int, int, int], ...]
    stack: Stack
    num_labels: int
    spec_augment: tuple[int, int, int, int] = (0, 0, 0, 0)
    members: int = 1
    sliced: bool = False

    def __post_init__(self):
        d = self.front_end_width
        if self.stack.d_in != d:
            raise ValueError(f"stack.d_in={self.stack.d_in} must equal the front end's output width {d}")
        for k, s, _ in self.conv:
            if k % 2 == 0 or s < 1:
                raise ValueError(f"model.conv: kernel {k} must be odd and stride {s} >= 1 ('same' padding k // 2)")
        if self.members < 1:
            raise ValueError(f"model.members must be >= 1 (networks in the ensemble), got {self.members}")

    @property
    def ensemble(self) -> bool:
        """Whether the parameters are stacked members (an ensemble, or a slice of one)."""
        return self.members > 1 or self.sliced

    def _ids(self, ids: Array | None) -> Array:
        if ids is None:
            return jnp.arange(self.members)
        if ids.shape != (self.members,):
            raise ValueError(f"ids {ids.shape}: expected one per member, ({self.members},)")
        return ids

    def slice_of(self, size: int) -> SpeechModel:
        """A model of ``size`` of this ensemble's members: its parameters are those members'
        rows; pass which members they are as ``ids`` (each then computes what it computes
        in the whole)."""
        if not self.ensemble or not 1 <= size <= self.members:
            raise ValueError(f"a slice of {size} members: this model has {self.members}")
        return dataclasses.replace(self, members=size, sliced=True)

    @property
    def front_end_width(self) -> int:
        return front_end_width(self.features, self.conv)

    @property
    def subsampling(self) -> int:
        out = 1
        for _, s, _ in self.conv:
            out *= s
        return out

    def init(self, key: Array) -> Params:
        """One network's parameters, or (members > 1) the members' stacked, member k from
        fold_in(key, k)."""
        if self.members == 1:
            return self._init_one(key)
        return jax.vmap(lambda k: self._init_one(jax.random.fold_in(key, k)))(jnp.arange(self.members))

    def _init_one(self, key: Array) -> Params:
        k_conv, k_stack, k_out = jax.random.split(key, 3)
        params: dict[str, Any] = {"conv": []}
        d = self.features.dim
        for i, (k, _, c) in enumerate(self.conv):
            w = initializer("lecun_normal", 1)(jax.random.fold_in(k_conv, i), (k * d, c), jnp.float32)
            params["conv"].append({"w_WxCxO": w.reshape(k, d, c), "b_O": jnp.zeros((c,), jnp.float32)})
            d = c
        params["stack"] = self.stack.init(k_stack)
        params["out_w_OxV"] = initializer("glorot_uniform", 1)(k_out, (self.stack.d_out, self.num_labels), jnp.float32)
        params["out_b_V"] = jnp.zeros((self.num_labels,), jnp.float32)
        return params

    def output_lengths(self, lengths_B: Array) -> Array:
        for _, s, _ in self.conv:
            lengths_B = (lengths_B + s - 1) // s
        return lengths_B

    def apply(self, params: Params, logmel_BxTxM: Array, lengths_B: Array, *, rng: Array | None = None,
              train: bool = False, ids: Array | None = None) -> tuple[Array, Array]:
        """(logits_BxQxV, output lengths_B), Q = ceil(T / subsampling). An ensemble:
        (logits_ExBxQxV, lengths_B), one row of logits per member (``ids``: which members of
        the whole, for a slice; default 0, 1, ...)."""
        if not self.ensemble:
            return self._apply_one(params, logmel_BxTxM, lengths_B, rng=rng, train=train)
        logits_ExBxQxV, lengths_ExB = jax.vmap(
            lambda p, k: self._apply_one(p, logmel_BxTxM, lengths_B, train=train,
                                         rng=None if rng is None else jax.random.fold_in(rng, k)))(
            params, self._ids(ids))
        return logits_ExBxQxV, lengths_ExB[0]

    def decode_labels(self, logits: np.ndarray, lengths_B: np.ndarray, beam_width: int = 0) -> list[tuple[int, ...]]:
        """Label sequences of ``apply``'s output: greedy (beam_width 0) or prefix beam
        search; an ensemble decodes each member and combines them with ``ctc.rover``
        (member 0 wins ties; the vote of one network is its own sequence)."""
        return [ctc.rover(h) for h in self.member_labels(logits, lengths_B, beam_width)]

    def member_labels(self, logits: np.ndarray, lengths_B: np.ndarray, beam_width: int = 0,
                      bias_ExV: np.ndarray | None = None) -> list[list[tuple[int, ...]]]:
        """Per utterance, every member's decoded label sequence (one for a single network).
        ``bias_ExV``: per member, added to its logits first (E = 1 for one network)."""
        logits = np.asarray(logits, np.float32)
        stacked = logits if self.ensemble else logits[None]
        if bias_ExV is not None:
            bias = np.asarray(bias_ExV, np.float32)
            if bias.shape != (stacked.shape[0], stacked.shape[-1]):
                raise ValueError(f"bias_ExV has shape {bias.shape}; this model's logits need "
                                 f"{(stacked.shape[0], stacked.shape[-1])} (members x labels)")
            stacked = stacked + bias[:, None, None, :]

        def one(lo, n):
            return ctc.prefix_beam_search(lo, beam_width, length=n) if beam_width else ctc.greedy_decode(lo, n)

        return [[tuple(one(stacked[k, b], int(n))) for k in range(stacked.shape[0])]
                for b, n in enumerate(np.asarray(lengths_B))]

    def with_floor(self, floor_db: float) -> SpeechModel:
        """This model with another noise floor (features.floor_db; 0: none): the same
        parameters, used at test time."""
        return dataclasses.replace(self, features=dataclasses.replace(self.features, floor_db=float(floor_db)))

    def front_end(self, params: Params, x_BxTxD: Array, lengths_B: Array) -> tuple[Array, Array]:
        """The convolutions over time before the recurrent stack (``conv``), on
        model-input features, each 'same'-padded, GELU, with frames past each length
        zeroed before it. Returns (x_BxQxD', lengths_B after the strides)."""
        x = x_BxTxD
        for layer, (k, s, _) in zip(params["conv"], self.conv, strict=True):
            x = x * feat.valid_mask(lengths_B, x.shape[1])[..., None].astype(x.dtype)
            x = jax.lax.conv_general_dilated(x, layer["w_WxCxO"].astype(x.dtype), (s,), [(k // 2, k // 2)],
                                             dimension_numbers=("NWC", "WIO", "NWC")) + layer["b_O"]
            x = jax.nn.gelu(x)
            lengths_B = (lengths_B + s - 1) // s
        return x, lengths_B

    def _apply_one(self, params: Params, logmel_BxTxM: Array, lengths_B: Array, *, rng: Array | None = None,
                   train: bool = False) -> tuple[Array, Array]:
        x = feat.postprocess(self.features, logmel_BxTxM, lengths_B)
        if train and any(self.spec_augment):
            if rng is None:
                raise ValueError("model.spec_augment is on: training needs an rng key")
            fm, fw, tm, tw = self.spec_augment
            x = feat.spec_augment(jax.random.fold_in(rng, 1), x, lengths_B, freq_masks=fm, freq_width=fw,
                                  time_masks=tm, time_width=tw)
        x, lengths_B = self.front_end(params, x, lengths_B)
        ys_TxBxO, _ = self.stack.apply(params["stack"], jnp.swapaxes(x, 0, 1), lengths_B=lengths_B,
                                       rng=None if rng is None else jax.random.fold_in(rng, 2), train=train)
        logits = jnp.swapaxes(ys_TxBxO, 0, 1) @ params["out_w_OxV"] + params["out_b_V"]
        return logits, lengths_B

    def loss_and_metrics(self, params: Params, batch: dict, *, rng: Array | None = None,
                         train: bool = False, ids: Array | None = None) -> tuple[Array, dict]:
        """CTC negative log-likelihood per label (summed over the batch, divided by
        its number of labels), and the per-utterance mean for logging. An ensemble:
        the sum of the members' losses (metrics: their mean)."""
        if not self.ensemble:
            return self._loss_one(params, batch, rng=rng, train=train)
        loss_E, metrics = jax.vmap(
            lambda p, k: self._loss_one(p, batch, train=train,
                                        rng=None if rng is None else jax.random.fold_in(rng, k)))(
            params, self._ids(ids))
        return jnp.sum(loss_E), jax.tree.map(jnp.mean, metrics)

    def _loss_one(self, params: Params, batch: dict, *, rng: Array | None = None,
                  train: bool = False) -> tuple[Array, dict]:
        logits, out_lengths = self._apply_one(params, batch["logmel"], batch["lengths"], rng=rng, train=train)
        nll_B = ctc.ctc_loss(logits, out_lengths, batch["labels"], batch["label_lengths"])
        n_labels = jnp.maximum(jnp.sum(batch["label_lengths"]), 1)
        loss = jnp.sum(nll_B) / n_labels
        return loss, {"loss": loss, "nll_per_utterance": jnp.mean(nll_B)}


def build(model_cfg: Any, features: feat.FeatureSpec, num_labels: int) -> SpeechModel:
    """From a config's ``model`` section."""
    def layers(spec: str, key: str) -> tuple[tuple[int, int, int], ...]:
        try:
            return tuple((int(k), int(s), int(c)) for k, s, c in
                         (item.split(":") for item in spec.split(",") if item.strip()))
        except ValueError:
            raise ValueError(f"model.{key}={spec!r}: expected kernel:stride:channels per layer, comma-separated "
                             "(e.g. '5:2:128,3:2:128'), or '' for none") from None

    conv = layers(model_cfg.conv, "conv")
    d_in = front_end_width(features, conv)
    from rnnlab import cells as cells_lib
    from rnnlab import configs

    cell = cells_lib.get(model_cfg.cell, **configs.parse_options(model_cfg.cell_options))
    stack = Stack(cell, d_in, model_cfg.d_hidden, num_layers=model_cfg.num_layers, bidirectional=True,
                  dropout=model_cfg.dropout, dropout_kind="variational", unroll=model_cfg.unroll)
    sa = tuple(int(v) for v in model_cfg.spec_augment.split(",")) if model_cfg.spec_augment else (0, 0, 0, 0)
    return SpeechModel(features, conv, stack, num_labels, sa, members=model_cfg.members)
