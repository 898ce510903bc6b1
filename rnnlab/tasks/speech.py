"""Speech recognition with CTC: the parts any speech study can use. The data of a
config (FSDD clips split by speaker, cached log-mel features, connected-digit
utterances), its ``models.speech.SpeechModel``, the jitted training step (with an
optional EMA of the weights), and greedy or beam evaluation (CER / WER /
digit-string accuracy) on connected utterances of the held-out speakers.

A study builds its ``loop.Task`` from these (``experiments/speech/task.py``); this
module imports no training loop, so decoding and transcription may use it.

Config sections read: ``data`` (root, speakers, test_speakers, takes_per_digit,
cache_dir, trim_db, batch_size, the utterance spec, rate_norm, speaker_norm),
``features``, ``model``, ``eval`` (utterances, seed, batch_size), ``train.ema_decay``,
``seed``; see ``experiments/speech_recognition.py`` for each key's meaning.

Purity: training batches are pure in (seed, step), their SpecAugment/dropout keys
in (seed, step) (``step_key``), evaluation utterances in (eval seed, EVAL_STEP0 + i).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from rnnlab import ctc
from rnnlab import features as feat
from rnnlab.data import audio
from rnnlab.models import speech as speech_lib

EVAL_STEP0 = 10**9  # evaluation utterances are drawn at steps EVAL_STEP0 + i: never a training step
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fsdd_root(root: str = "") -> str:
    """The FSDD recordings folder: ``root`` if given, else $RNNLAB_FSDD, else
    ../shared/data/fsdd/recordings next to the repository."""
    candidates = [root] if root else [os.environ.get("RNNLAB_FSDD", ""),
                                      os.path.join(REPO_ROOT, "..", "shared", "data", "fsdd", "recordings")]
    for c in filter(None, candidates):
        c = os.path.abspath(c)
        if os.path.isdir(os.path.join(c, "recordings")):
            c = os.path.join(c, "recordings")
        if os.path.isdir(c):
            return c
    raise FileNotFoundError(f"FSDD recordings not found (tried {[c for c in candidates if c]}); set "
                            "--config.data.root=/path/to/free-spoken-digit-dataset/recordings or $RNNLAB_FSDD")


def feature_spec(config: ml_collections.ConfigDict) -> feat.FeatureSpec:
    f = config.features
    return feat.FeatureSpec(sample_rate=f.sample_rate, win_ms=f.win_ms, hop_ms=f.hop_ms, n_fft=f.n_fft,
                            n_mels=f.n_mels, kind=f.kind, n_mfcc=f.n_mfcc, deltas=f.deltas, norm=f.norm,
                            floor_db=f.floor_db)


def connected_spec(d: ml_collections.ConfigDict) -> audio.ConnectedSpec:
    return audio.ConnectedSpec(min_words=d.min_words, max_words=d.max_words, max_silence=d.max_silence,
                               gain_db=d.gain_db, snr_db=(d.snr_min_db, d.snr_max_db), bucket=d.bucket,
                               tempo=d.tempo, mel_warp=d.mel_warp)


class SpeechData(NamedTuple):
    """The features of a config. ``test``: the held-out speakers' test takes as
    recorded (no statistic of a held-out speaker applied: the inductive evaluation);
    ``adapt``: their adaptation takes (``audio.split_adaptation``, disjoint from
    ``test``), normalised by their own statistics; ``adapted_test``: the test takes
    normalised by the adaptation takes' statistics (the test-time adaptation column).
    ``train``: the training speakers, each normalised by its own statistics."""
    train: audio.FeatureBank
    test: audio.FeatureBank
    noise_FxM: np.ndarray
    vocab: audio.Vocab
    utterances: audio.ConnectedSpec
    adapt: audio.FeatureBank
    adapted_test: audio.FeatureBank


def split_clips(config: ml_collections.ConfigDict) -> tuple[list[audio.Clip], list[audio.Clip]]:
    """(training, held-out) clips of config.data: its folder, speakers and takes."""
    d = config.data
    clips = audio.wav_folder(fsdd_root(d.root))
    if d.takes_per_digit:  # smaller runs: the first takes of each digit and speaker
        clips = [c for c in clips if c.index < d.takes_per_digit]
    speakers = [s.strip() for s in d.speakers.split(",") if s.strip()]
    if speakers:
        clips = [c for c in clips if c.speaker in speakers]
    return audio.split_by_speaker(clips, [s.strip() for s in d.test_speakers.split(",")])


class _Statistics(NamedTuple):
    """One group of speakers' normalisation, from their own unlabelled clips: median
    spoken spans (None: data.rate_norm off) and per-speaker log-mel statistics of the
    rate-normalised clips."""
    rates: dict | None
    stats: dict


def _statistics(source: audio.FeatureBank, d: ml_collections.ConfigDict, what: str
                ) -> tuple[_Statistics, audio.FeatureBank]:
    """The statistics of ``source`` and ``source`` normalised with them."""
    rates = None
    if d.rate_norm > 0:  # per speaker, from its unlabelled clips
        rates = audio.speaker_rates(source)
        spans = ", ".join(f"{s} {v:g}" for s, v in rates.items())
        print(f"speaking-rate normalisation ({what}): median spoken span per speaker ({spans}) frames -> "
              f"{d.rate_norm:g}", flush=True)
        source = audio.normalise_rate(source, d.rate_norm, rates)
    stats = _Statistics(rates, audio.speaker_stats(source) if d.speaker_norm != "none" else {})
    return stats, audio.normalise_speakers(source, d.speaker_norm, stats.stats)


def _apply(bank: audio.FeatureBank, d: ml_collections.ConfigDict, st: _Statistics) -> audio.FeatureBank:
    """``bank`` rate- and speaker-normalised with another bank's ``_statistics`` (the
    same speakers: a held-out speaker's adaptation takes)."""
    if st.rates is not None:
        bank = audio.normalise_rate(bank, d.rate_norm, st.rates)
    return audio.normalise_speakers(bank, d.speaker_norm, st.stats)


def load_data(config: ml_collections.ConfigDict, workdir: str) -> SpeechData:
    """Clip features of the training and held-out speakers (cached in data.cache_dir,
    default workdir/feature_cache) and the noise template. The training speakers are
    speaking-rate and speaker normalised from their own unlabelled clips; the
    held-out speakers' takes are split into adaptation and test halves
    (``audio.split_adaptation``): ``test`` is left as recorded, ``adapted_test`` is
    normalised with statistics of the adaptation half only (``SpeechData``)."""
    d, spec = config.data, feature_spec(config)
    train, held_out = split_clips(config)
    adapt, test = audio.split_adaptation(held_out)
    bank = audio.cached_bank(train + adapt + test, spec, d.cache_dir or os.path.join(workdir, "feature_cache"),
                             trim_db=d.trim_db)
    n, k = len(train), len(adapt)
    tr, ad, te = bank.subset(range(n)), bank.subset(range(n, n + k)), bank.subset(range(n + k, len(bank.clips)))
    _, train_bank = _statistics(tr, d, "training speakers")
    adapt_stats, adapt_bank = _statistics(ad, d, "held-out adaptation takes")
    return SpeechData(train_bank, te, audio.noise_template(spec), audio.DIGITS, connected_spec(d),
                      adapt=adapt_bank, adapted_test=_apply(te, d, adapt_stats))


def adapted(data: SpeechData) -> SpeechData:
    """``data`` with the test-time adaptation's view of the held-out test takes as
    ``test`` (evaluate it for the adapted column)."""
    return data._replace(test=data.adapted_test)


def device_batch(b: audio.Batch) -> dict:
    return {"logmel": b.logmel_BxTxM, "lengths": b.lengths_B, "labels": b.labels_BxU,
            "label_lengths": b.label_lengths_B}


def build(config: ml_collections.ConfigDict) -> speech_lib.SpeechModel:
    """The model of ``config`` (features, model sections) over the digit vocabulary."""
    return speech_lib.build(config.model, feature_spec(config), audio.DIGITS.num_labels)


def train_batch(config: ml_collections.ConfigDict, data: SpeechData, step: int) -> audio.Batch:
    """The connected utterances of training step ``step``: pure in (config.seed, step)."""
    return audio.connected_batch(data.train, data.noise_FxM, data.vocab, data.utterances, config.seed, step,
                                 config.data.batch_size)


def step_key(config: ml_collections.ConfigDict, step: int) -> jax.Array:
    """The SpecAugment/dropout key of training step ``step``: pure in (config.seed, step)."""
    return jax.random.fold_in(jax.random.key(config.seed + 1), step)


# ----------------------------------------------------------------------------- training


def ema_update(ema, params, decay):
    """One step of an exponential moving average of the parameters:
    ema <- decay * ema + (1 - decay) * params (started from zeros: see ``ema_params``)."""
    return jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params)


def ema_params(ema, step: int, decay: float):
    """The debiased average after ``step`` updates from zeros (Adam's bias correction,
    optax.ema(debias=True)): sum_i w_i params_i with w_i proportional to decay^(step - i)."""
    return jax.tree.map(lambda e: e / (1 - decay ** step), ema)


def initial_state(model: speech_lib.SpeechModel, tx: optax.GradientTransformation,
                  config: ml_collections.ConfigDict) -> dict:
    """The step-0 training state of ``config``: initial weights, optimizer state (one per
    ensemble member), and with train.ema_decay > 0 the EMA (zeros)."""
    params = model.init(jax.random.key(config.seed))
    opt_state = jax.vmap(tx.init)(params) if model.ensemble else tx.init(params)
    state = {"params": params, "opt_state": opt_state, "step": jnp.asarray(0, jnp.int32)}
    if config.train.ema_decay:
        state["ema"] = jax.tree.map(jnp.zeros_like, params)
    return jax.tree.map(jnp.array, state)  # own every buffer: train_step donates them


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(2,))
def train_step(model: speech_lib.SpeechModel, tx: optax.GradientTransformation, state: dict, batch: dict, lr,
               rng, ema_decay=0.0, member_ids=None):
    """One step of every member: (state, batch, lr, rng) -> (state, metrics).
    ``member_ids``: which members of the whole a ``slice_of`` model's are (None: all)."""
    def loss_fn(params):
        return model.loss_and_metrics(params, batch, rng=rng, train=True, ids=member_ids)

    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    # an ensemble's members are optimised apart (their own gradient clipping, Adam moments)
    update = jax.vmap(tx.update) if model.ensemble else tx.update
    direction, opt_state = update(grads, state["opt_state"], state["params"])
    updates = jax.tree.map(lambda d: -lr * d, direction)
    params = optax.apply_updates(state["params"], updates)
    metrics = {**aux, "grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(params),
               "update_norm": optax.tree.norm(updates)}
    new = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
    if "ema" in state:  # weight averaging: evaluated instead of the last weights (train.ema_decay)
        new["ema"] = ema_update(state["ema"], params, ema_decay)
    return new, metrics


def evaluated_params(state: dict, step: int, config: ml_collections.ConfigDict, raw: bool = False):
    """The weights a run is evaluated with: the debiased EMA when train.ema_decay > 0
    (``raw``: the last weights instead), else the last weights."""
    decay = config.train.ema_decay
    return ema_params(state["ema"], step, decay) if decay and not raw else state["params"]


# ----------------------------------------------------------------------------- evaluation


@functools.partial(jax.jit, static_argnums=(0,))
def logits_step(model: speech_lib.SpeechModel, params, logmel_BxTxM, lengths_B):
    return model.apply(params, logmel_BxTxM, lengths_B)


def decode(model: speech_lib.SpeechModel, params, batch: audio.Batch, vocab: audio.Vocab,
           beam_width: int = 0) -> list[str]:
    """Transcripts of a batch: greedy (beam_width 0) or prefix beam search; an ensemble's
    members each decoded, then voted on (``ctc.rover``)."""
    logits, out_len = logits_step(model, params, jnp.asarray(batch.logmel_BxTxM), jnp.asarray(batch.lengths_B))
    return [vocab.decode(labels) for labels in model.decode_labels(np.asarray(logits), np.asarray(out_len),
                                                                    beam_width)]


def eval_seed(config: ml_collections.ConfigDict) -> int:
    """The seed the evaluation utterances are drawn with: eval.seed, or the run's seed
    when it is -1."""
    s = config.eval.seed
    if s < -1:
        raise ValueError(f"eval.seed={s}: expected a seed >= 0, or -1 for the run's seed ({config.seed})")
    return config.seed if s == -1 else s


def eval_utterance_spec(spec: audio.ConnectedSpec) -> audio.ConnectedSpec:
    """How held-out utterances are made: ``spec`` without its training perturbations
    (tempo, mel warps)."""
    return dataclasses.replace(spec, tempo=0.0, mel_warp=0.0)


def evaluate(model: speech_lib.SpeechModel, params, config: ml_collections.ConfigDict, data: SpeechData,
             beam_width: int = 0, transcribe: Callable[[audio.Batch], list[str]] | None = None) -> dict:
    """CER / WER / digit-string accuracy (``ctc.error_rates``) on eval.utterances connected
    utterances of the held-out speakers, and the first five (reference, hypothesis)
    pairs as ``examples``. ``transcribe``: batch -> transcripts (default ``decode``
    with ``beam_width``), for a study's own decoding."""
    ev = config.eval
    if transcribe is None:
        def transcribe(b):
            return decode(model, params, b, data.vocab, beam_width)
    refs, hyps = [], []
    test_utts, seed = eval_utterance_spec(data.utterances), eval_seed(config)
    for i in range(-(-ev.utterances // ev.batch_size)):
        n = min(ev.batch_size, ev.utterances - i * ev.batch_size)
        b = audio.connected_batch(data.test, data.noise_FxM, data.vocab, test_utts, seed, EVAL_STEP0 + i, n)
        refs += b.texts
        hyps += transcribe(b)
    return ctc.error_rates(refs, hyps) | {"examples": [[r, h] for r, h in list(zip(refs, hyps, strict=True))[:5]]}
