"""The speech study's recipe on top of ``rnnlab.tasks.speech``: decoding under
test-time noise floors voted with ROVER (eval.test_floors), prior matching on a
speaker's unlabelled speech (eval.speaker_prior), which digit each held-out clip is
heard as (``digit_confusions``), and member threads (train.member_threads: an
ensemble's members trained in groups, each on a thread of its own).

Two evaluations of one trained model: ``evaluate(..., adapted=False)`` is inductive
(nothing computed from a held-out speaker's audio before an utterance is decoded:
the headline), ``adapted=True`` is test-time adaptation (speaker and rate statistics
and, with eval.speaker_prior, prior matching, all from the speaker's adaptation
takes, disjoint from the takes the test utterances are built from).

    recipe.evaluate(model, params, config, data)      # the study's held-out rates (inductive)
    recipe.evaluate(model, params, config, data, adapted=True)
    recipe.decode(model, params, batch, vocab, 0, (15.0, 20.0, 25.0))

Imports no training loop: ``experiments/speech/transcribe.py`` decodes with it.
"""

from __future__ import annotations

import concurrent.futures
import contextvars

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from rnnlab import ctc, native
from rnnlab.data import audio
from rnnlab.models import speech as speech_lib
from rnnlab.tasks import speech as speech_task
from rnnlab.tasks.speech import SpeechData

PRIOR_MIN_LABELS = 200  # prior matching: decoded labels needed per (floor, member) pass, ~20 of each digit
# (a held-out FSDD speaker's adaptation half: 250 clips)
CONFUSION_STEP0 = 2 * 10**9  # isolated-clip utterances for confusions: seeds apart from training and evaluation


# ----------------------------------------------------------------------------- noise floors and ROVER


def eval_floors(config: ml_collections.ConfigDict) -> tuple[float, ...]:
    """eval.test_floors, a tuple of dB values (e.g. (15.0, 20.0, 25.0); () for none): the
    test-time noise floors voted over."""
    spec = config.eval.test_floors
    try:
        floors = tuple(float(v) for v in spec)
    except (TypeError, ValueError):
        raise ValueError(f"eval.test_floors={spec!r}: expected dB values, e.g. (15.0, 20.0, 25.0) "
                         "(--config.eval.test_floors='15;20;25'; transcribe --test_floors=15,20,25), or () for none"
                         ) from None
    if any(f < 0 for f in floors):
        raise ValueError(f"eval.test_floors={spec!r}: floors are dB below the utterance's power, >= 0 (0: none)")
    return floors


def floor_logits(model: speech_lib.SpeechModel, params, batch: audio.Batch,
                 floors: tuple[float, ...] = ()) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per test-time noise floor (the model as it is when there are none): the model's
    logits (numpy, as ``apply`` gives them) and output lengths on ``batch``."""
    x, lengths = jnp.asarray(batch.logmel_BxTxM), jnp.asarray(batch.lengths_B)
    out = []
    for m in [model.with_floor(f) for f in floors] or [model]:
        logits, out_len = speech_task.logits_step(m, params, x, lengths)
        out.append((np.asarray(logits, np.float32), np.asarray(out_len)))
    return out


def vote(model: speech_lib.SpeechModel, outputs: list[tuple[np.ndarray, np.ndarray]], vocab: audio.Vocab,
         beam_width: int = 0, bias_ExV: np.ndarray | None = None) -> list[str]:
    """Transcripts from one batch's ``floor_logits``: every (floor, member) decoded, greedy
    (beam_width 0) or by prefix beam search, then voted on with ROVER (ties go to the
    first floor's first member). ``bias_ExV``: added to each member's logits before
    decoding (``prior_bias``)."""
    hyps: list[list[tuple[int, ...]]] = [[] for _ in range(len(outputs[0][1]))]
    for logits, out_len in outputs:
        for h, new in zip(hyps, model.member_labels(logits, out_len, beam_width, bias_ExV), strict=True):
            h += new
    return [vocab.decode(ctc.rover(h)) for h in hyps]


def decode(model: speech_lib.SpeechModel, params, batch: audio.Batch, vocab: audio.Vocab,
           beam_width: int = 0, floors: tuple[float, ...] = (), bias_ExV: np.ndarray | None = None) -> list[str]:
    """Transcripts of a batch (``vote`` of its ``floor_logits``). ``floors``: test-time
    noise floors (features.floor_db, dB): the model runs once per floor and every
    (floor, member) transcript is voted on."""
    return vote(model, floor_logits(model, params, batch, floors), vocab, beam_width, bias_ExV)


# ----------------------------------------------------------------------------- prior matching


def speaker_prior(config: ml_collections.ConfigDict) -> bool:
    """eval.speaker_prior, checked to be a bool."""
    v = config.eval.speaker_prior
    if not isinstance(v, bool):
        raise ValueError(f"eval.speaker_prior={v!r}: expected True or False")
    return v


def prior_bias(model: speech_lib.SpeechModel, outputs) -> np.ndarray:
    """Prior matching for one speaker (eval.speaker_prior): per member, the output biases
    (``ctc.fit_label_bias``) under which its best paths over every floor emit each digit
    equally often on ``outputs``, the ``floor_logits`` of each batch of that speaker's
    unlabelled speech (no transcript is read). A model trained on few speakers can hear
    a new one with a bias of its own; the speaker's digits being equally frequent is
    what undoes it. Returns members x labels (1 x V for one network), for ``decode``'s
    ``bias_ExV``. Refuses fewer than ``PRIOR_MIN_LABELS`` decoded labels a pass (a
    floor): counts that small are noise."""
    per_member: list[list[np.ndarray]] = []
    passes = 1
    for per_floor in outputs:
        passes = len(per_floor)
        for logits, out_len in per_floor:
            stacked = logits if model.ensemble else logits[None]
            per_member = per_member or [[] for _ in range(stacked.shape[0])]
            for k, lo in enumerate(stacked):
                per_member[k] += [lo[i, :n] for i, n in enumerate(out_len)]
    if not per_member:
        raise ValueError("prior matching needs the speaker's speech: no utterances were given")
    return np.stack([ctc.fit_label_bias(ls, min_labels=PRIOR_MIN_LABELS * passes) for ls in per_member])


def held_out_clips(config: ml_collections.ConfigDict, data: SpeechData, batch_size: int = 100,
                   bank: audio.FeatureBank | None = None):
    """Every clip of ``bank`` (default: the held-out test takes, ``data.test``) as a
    one-digit utterance made the way the evaluation utterances are (silences, gain,
    background noise drawn with the evaluation seed; no tempo or warps), in batches
    of ``batch_size``."""
    spec, seed = speech_task.eval_utterance_spec(data.utterances), speech_task.eval_seed(config)
    bank = data.test if bank is None else bank
    n = len(bank.clips)
    for start in range(0, n, batch_size):
        utts, labels, texts = [], [], []
        for i in range(start, min(start + batch_size, n)):
            rng = np.random.default_rng([seed, CONFUSION_STEP0 + i])
            u, _ = audio.connected_utterance(bank, data.noise_FxM, rng, spec, clip_ids=[i])
            utts.append(u)
            texts.append(bank.clips[i].text)
            labels.append(data.vocab.encode(texts[-1]))
        yield audio.pad_batch(utts, labels, texts, spec.bucket, max(len(x) for x in labels))


def held_out_prior(model: speech_lib.SpeechModel, params, config: ml_collections.ConfigDict, data: SpeechData,
                   floors: tuple[float, ...]) -> np.ndarray:
    """``prior_bias`` on the held-out speakers' adaptation takes (``data.adapt``, as
    ``held_out_clips``) under ``floors``: never on the takes the test utterances use."""
    return prior_bias(model, (floor_logits(model, params, b, floors)
                              for b in held_out_clips(config, data, bank=data.adapt)))


def evaluate(model: speech_lib.SpeechModel, params, config: ml_collections.ConfigDict, data: SpeechData,
             beam_width: int = 0, floors: tuple[float, ...] | None = None,
             bias_ExV: np.ndarray | None = None, adapted: bool = False) -> dict:
    """``rnnlab.tasks.speech.evaluate`` decoded as ``decode`` with ``floors`` (None: the
    config's eval.test_floors). ``adapted=False``: inductive, the test takes as
    recorded, no bias. ``adapted=True``: test-time adaptation, the test takes
    normalised with the adaptation takes' statistics (``speech_task.adapted``) and,
    with eval.speaker_prior, decoded with ``bias_ExV`` (None: ``held_out_prior``, fitted
    on the adaptation takes). With a bias the result says ``speaker_prior: True``."""
    floors = eval_floors(config) if floors is None else floors
    if not adapted and bias_ExV is not None:
        raise ValueError("a prior bias is test-time adaptation: pass adapted=True with bias_ExV")
    if adapted:
        if bias_ExV is None and speaker_prior(config):
            bias_ExV = held_out_prior(model, params, config, data, floors)
        data = speech_task.adapted(data)
    out = speech_task.evaluate(model, params, config, data, beam_width,
                               lambda b: decode(model, params, b, data.vocab, beam_width, floors, bias_ExV))
    return out | ({"speaker_prior": True} if bias_ExV is not None else {})


# ----------------------------------------------------------------------------- digit confusions


def confusion_counts(refs, hyps, words) -> np.ndarray:
    """Counts of (reference word, hypothesis) over one-word utterances: rows follow
    ``words``, columns ``words`` then one 'other' column (no word, several words, or
    a word outside ``words``)."""
    index = {w: k for k, w in enumerate(words)}
    out = np.zeros((len(words), len(words) + 1), np.int64)
    for r, h in zip(refs, hyps, strict=True):
        got = h.split()
        out[index[r], index[got[0]] if len(got) == 1 and got[0] in index else len(words)] += 1
    return out


def digit_confusions(model: speech_lib.SpeechModel, params, config: ml_collections.ConfigDict, data: SpeechData,
                     batch_size: int = 100) -> np.ndarray:
    """Which digit each held-out test take is heard as (``held_out_clips``), decoded
    greedily as the inductive ``evaluate`` decodes (floors, no bias); counts as in
    ``confusion_counts`` with the words '0'..'9'."""
    floors, refs, outputs = eval_floors(config), [], []
    for b in held_out_clips(config, data, batch_size):
        refs += b.texts
        outputs.append(floor_logits(model, params, b, floors))
    hyps = [h for out in outputs for h in vote(model, out, data.vocab, 0, None)]
    return confusion_counts(refs, hyps, [str(d) for d in range(10)])


# ----------------------------------------------------------------------------- member threads


def check_member_threads(config: ml_collections.ConfigDict) -> int:
    """train.member_threads, checked against model.members (see ``MemberThreads``)."""
    groups, members = config.train.member_threads, config.model.members
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"train.member_threads={groups!r}: expected a thread count >= 1 (1: one program)")
    if groups > 1 and members == 1:
        raise ValueError(f"train.member_threads={groups}: this model is one network (model.members=1); member "
                         "threads train an ensemble's members apart: set model.members > 1, or train.member_threads=1")
    if members % groups:
        raise ValueError(f"train.member_threads={groups} must divide model.members={members} (each thread trains "
                         f"as many members); use a divisor of {members}, or 1 (one program)")
    return groups


class MemberThreads:
    """A ``loop.Runner`` for train.member_threads=G > 1: an ensemble's members trained in G
    groups of members / G, each group's ``train_step`` (on ``model.slice_of``, with the
    group's member ids, so each member computes what it computes in the whole, its own
    dropout and SpecAugment draws included; the groups share one compiled program per
    batch shape) run by a thread of its own, so that the groups run on separate cores at
    once. While the groups' steps run (and are traced), the native loop's default thread
    count is divided among them (``native.options(thread_share=G)``); evaluations, between
    steps, keep every thread.

    Every member's update is the same function as in one program, but XLA batches the
    members' operations differently at another width, so the numbers agree with one
    program to float rounding, not bitwise; runs with the same G are bitwise reproducible
    and resume exactly. ``whole()`` is the whole ensemble's state as one program would
    hold it (what checkpoints hold): a run can be evaluated, transcribed, or resumed with
    another G.

    Use: ``MemberThreads(model, tx, G, state, ema_decay)``; ``submit(batch, lr)`` with a
    batch ``{"batch": device batch, "rng": key}`` starts every group's step,
    ``collect()`` waits and returns the whole's metrics (the members' mean loss, the
    global norms); ``close()`` (the loop calls it at the end) ends the worker threads."""

    def __init__(self, model: speech_lib.SpeechModel, tx: optax.GradientTransformation, groups: int,
                 state: dict, ema_decay: float = 0.0, step=None):
        if not model.ensemble or model.members % groups:
            raise ValueError(f"train.member_threads={groups}: not a divisor of model.members={model.members}")
        k = model.members // groups
        self.slices = [slice(g * k, (g + 1) * k) for g in range(groups)]
        self.model = model.slice_of(k)
        self.ids = [jnp.arange(sl.start, sl.stop) for sl in self.slices]
        self.groups, self.tx, self.ema_decay = groups, tx, jnp.float32(ema_decay)
        self.step = step or speech_task.train_step  # benchmarks pass their own jit
        self._running: list[concurrent.futures.Future] = []
        self.pool = concurrent.futures.ThreadPoolExecutor(groups, thread_name_prefix="rnnlab-members")
        self.states = [self._part(state, sl) for sl in self.slices]

    @staticmethod
    def _part(state: dict, sl: slice) -> dict:  # a group's copy of the whole's state
        return {k: jnp.array(v) if k == "step" else jax.tree.map(lambda a: jnp.array(a[sl]), v)
                for k, v in state.items()}

    def whole(self) -> dict:
        """The whole ensemble's state, as one program would hold it."""
        first = self.states[0]
        return {k: first[k] if k == "step" else
                jax.tree.map(lambda *xs: jnp.concatenate(xs), *[st[k] for st in self.states]) for k in first}

    def submit(self, batch: dict, lr) -> None:
        """Start one training step of every group (``collect`` waits for them)."""
        def one(ids, state):
            out = self.step(self.model, self.tx, state, batch["batch"], lr, batch["rng"], self.ema_decay, ids)
            return jax.block_until_ready(out)  # this thread runs its group's step to the end

        with native.options(thread_share=self.groups):  # read when a step is traced, in each group's thread
            self._running = [self.pool.submit(contextvars.copy_context().run, one, ids, st)
                             for ids, st in zip(self.ids, self.states, strict=True)]

    def collect(self) -> dict:
        """Wait for the groups' steps; the metrics of the whole: the members' mean loss, the global norms."""
        try:
            outs = [f.result() for f in self._running]
        finally:
            self._running = []
        self.states = [new for new, _ in outs]
        ms = [m for _, m in outs]
        norms = ("grad_norm", "param_norm", "update_norm")
        out = {k: jnp.mean(jnp.stack([m[k] for m in ms])) for k in ms[0] if k not in norms}
        out.update({k: jnp.sqrt(sum(jnp.square(m[k]) for m in ms)) for k in norms})
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=True)
