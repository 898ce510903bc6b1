"""Training loop for CTC speech recognition (``models.speech.SpeechModel``) on
connected-digit utterances: a fork of ``train_tasks.py``'s loop.

    workdir/config.json, command.txt   written at start (refused on resume if changed)
    workdir/checkpoints/<step>/        periodic, for resume (the latest ``keep_checkpoints``)
    workdir/metrics.jsonl              train (loss, grad/param/update norms), eval (CER/WER), summary
    workdir/result.json                the final summary, once the run has finished
    <cache_dir>/logmel_<hash>/         log-mel features of every clip (.npy), shared by runs

Reproducibility: training batches are pure functions of (seed, step) (built from
cached clip features), SpecAugment/dropout keys of (seed, step); evaluation
utterances of (eval seed, EVAL_STEP0 + i), the eval seed being the run's seed
unless eval.seed is set. Params, optimizer state and step are in the
checkpoint and the learning rate is a function of the step, so the same command on
the same workdir resumes and continues bitwise on CPU. A non-finite loss or norm
stops the run before anything is saved.

Evaluation is on the held-out speakers only (speaker-independent); it is logged
and never used to pick a checkpoint: the result is the model at the last step.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import dataclasses
import functools
import json
import math
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from rnnlab import ctc, native
from rnnlab import features as feat
from rnnlab.data import audio
from rnnlab.models import speech as speech_lib
from rnnlab.train import checkpoint as ckpt_lib
from rnnlab.train import writers
from rnnlab.train.config import check_and_write as check_and_write_config
from rnnlab.train.loop import NonFiniteError
from rnnlab.train.optim import make_optimizer

EVAL_STEP0 = 10**9  # evaluation utterances are drawn at steps EVAL_STEP0 + i: never a training step
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
                            floor_db=f.get("floor_db", 0.0))


def connected_spec(d: ml_collections.ConfigDict) -> audio.ConnectedSpec:
    return audio.ConnectedSpec(min_words=d.min_words, max_words=d.max_words, max_silence=d.max_silence,
                               gain_db=d.gain_db, snr_db=(d.snr_min_db, d.snr_max_db), bucket=d.bucket,
                               tempo=d.tempo, mel_warp=d.mel_warp, tilt_db=d.get("tilt_db", 0.0))


class SpeechData(NamedTuple):
    train: audio.FeatureBank
    test: audio.FeatureBank
    noise_NxM: np.ndarray
    vocab: audio.Vocab
    utterances: audio.ConnectedSpec


def speed_factors(text: str) -> tuple[float, ...]:
    """data.speed_perturb ('0.9,1.1') as factors; '' -> none."""
    try:
        out = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"data.speed_perturb={text!r}: give comma-separated speed factors, e.g. '0.9,1.1'") from None
    bad = [f for f in out if not 0.5 <= f <= 2.0 or f == 1.0]
    if bad or len(set(out)) != len(out):
        raise ValueError(f"data.speed_perturb={text!r}: each factor once, between 0.5 and 2 and not 1 "
                         "(the clips at speed 1 are always used), e.g. '0.9,1.1'")
    return out


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


def load_data(config: ml_collections.ConfigDict, workdir: str) -> SpeechData:
    """Clip features of the training and held-out speakers (cached), the noise template."""
    d, spec = config.data, feature_spec(config)
    train, test = split_clips(config)
    cache = d.cache_dir or os.path.join(workdir, "feature_cache")
    speeds = speed_factors(d.get("speed_perturb", ""))  # runs from before the option have no such key
    bank = audio.cached_bank(train + test, spec, cache, trim_db=d.trim_db)
    if speeds:  # the training clips again at each speed, each (speaker, speed) a pseudo-speaker
        copies = [audio.cached_bank(train, spec, cache, trim_db=d.trim_db, speed=f) for f in speeds]
        copies = [b._replace(clips=[c._replace(speaker=f"{c.speaker}@{f:g}") for c in b.clips])
                  for b, f in zip(copies, speeds, strict=True)]
        bank = audio.FeatureBank.concat([bank.subset(range(len(train))), *copies,
                                         bank.subset(range(len(train), len(train) + len(test)))])
    if d.get("rate_norm", 0.0) > 0:  # per speaker, from its own clips: no labels
        rates = audio.speaker_rates(bank)
        spans = ", ".join(f"{s} {v:g}" for s, v in rates.items())
        print(f"speaking-rate normalisation: median spoken span per speaker ({spans}) frames -> {d.rate_norm:g}",
              flush=True)
        bank = audio.normalise_rate(bank, d.rate_norm, rates)
    bank = audio.normalise_speakers(bank, d.speaker_norm)  # per speaker, from its own clips: no labels
    n = len(train) * (1 + len(speeds))
    return SpeechData(bank.subset(range(n)), bank.subset(range(n, n + len(test))), audio.noise_template(spec),
                      audio.DIGITS, connected_spec(d))


def _device_batch(b: audio.Batch) -> dict:
    return {"logmel": b.logmel_BxTxM, "lengths": b.lengths_B, "labels": b.labels_BxU,
            "label_lengths": b.label_lengths_B}


def build(config: ml_collections.ConfigDict) -> speech_lib.SpeechModel:
    return speech_lib.build(config.model, feature_spec(config), audio.DIGITS.num_labels)


# ----------------------------------------------------------------------------- steps


def learning_rate(optim: ml_collections.ConfigDict, step: int, total: int) -> float:
    """Linear warmup over ``optim.warmup_steps``, then cosine to ``optim.final_lr_fraction``
    of lr (or constant). Host-side: a function of the step only."""
    warm = min(1.0, (step + 1) / max(optim.warmup_steps, 1))
    if optim.schedule == "cosine":
        frac = min(max(step - optim.warmup_steps, 0) / max(total - optim.warmup_steps, 1), 1.0)
        lo = optim.final_lr_fraction
        return optim.lr * warm * (lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * frac)))
    if optim.schedule != "constant":
        raise ValueError(f"optim.schedule must be 'constant' or 'cosine', got {optim.schedule!r}")
    return optim.lr * warm


BUDGET_MARGIN = 0.95  # train.fit_to_budget plans for this fraction of the time left (load noise: the step time
# moved between 0.73 and 0.85 s over one run after 0.71 s in warmup, docs/speech)
PLAN_MIN_STEPS = 20  # ... measured over at least the steps up to this one
PLAN_MIN_SAMPLES = 5  # ... and this many steps that compiled nothing


def budget_steps(available_s: float, step: int, num_steps: int, step_s: float, eval_s: float,
                 eval_every: int) -> int:
    """train.fit_to_budget: the most steps N (step <= N <= num_steps) whose remaining work fits in
    ``available_s`` seconds: (N - step) training steps of ``step_s`` seconds each, plus ``eval_s`` for
    every intermediate evaluation (the multiples of ``eval_every`` strictly between step and N; the
    final evaluation comes after training, as with train.max_minutes)."""
    if step_s <= 0:
        raise ValueError(f"budget_steps needs a positive step time, got {step_s}")

    def cost(n: int) -> float:
        evals = (n - 1) // eval_every - step // eval_every if eval_every else 0
        return (n - step) * step_s + max(evals, 0) * eval_s

    n = num_steps
    while n > step and cost(n) > available_s:
        n -= 1
    return n


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
    """The step-0 training state of ``config``: initial weights, optimizer state (one per ensemble member), EMA."""
    params = model.init(jax.random.key(config.seed))
    opt_state = jax.vmap(tx.init)(params) if model.ensemble else tx.init(params)
    state = {"params": params, "opt_state": opt_state, "step": jnp.asarray(0, jnp.int32)}
    if config.train.ema_decay:
        state["ema"] = jax.tree.map(jnp.zeros_like, params)
    return jax.tree.map(jnp.array, state)  # own every buffer: train_step donates them


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(2,))
def train_step(model: speech_lib.SpeechModel, tx: optax.GradientTransformation, state: dict, batch: dict, lr,
               rng, ema_decay=0.0, member_ids=None):
    """One step of every member (``member_ids``: which members of the whole a ``slice_of`` model's are)."""
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


class MemberThreads:
    """train.member_threads=G > 1: an ensemble's members trained in G groups of members / G, each
    group's ``train_step`` (on ``model.slice_of``, with the group's member ids, so each member computes
    what it computes in the whole, its own dropout and SpecAugment draws included; the groups share
    one compiled program per batch shape) run by a thread of its own, so that
    the groups run on separate cores at once. One program over all members leaves part of a second
    core waiting in XLA's and the native loop's thread pools; G programs, one core each, do not
    (docs/speech: fsdd_vote4_gru's step on 2 cores). While the groups' steps run (and are traced),
    the native loop's default thread count is divided among them (``native.options(thread_share=G)``);
    evaluations, between steps, keep every thread.

    Every member's update is the same function as in one program, but XLA batches the members'
    operations differently at another width, so the numbers agree with one program to float
    rounding, not bitwise; runs with the same G are bitwise reproducible and resume exactly. The
    checkpoints hold the whole ensemble's state as one program would (``join``): a run can be
    evaluated, transcribed, or resumed with another G."""

    def __init__(self, model: speech_lib.SpeechModel, tx: optax.GradientTransformation, groups: int, step=None):
        if not model.ensemble or model.members % groups:
            raise ValueError(f"train.member_threads={groups}: not a divisor of model.members={model.members}")
        k = model.members // groups
        self.slices = [slice(g * k, (g + 1) * k) for g in range(groups)]
        self.model = model.slice_of(k)
        self.ids = [jnp.arange(sl.start, sl.stop) for sl in self.slices]
        self.groups, self.tx, self.step = groups, tx, step or train_step  # step: benchmarks pass their own jit
        self.states: list[dict] = []
        self._running: list[concurrent.futures.Future] = []
        self.pool = concurrent.futures.ThreadPoolExecutor(groups, thread_name_prefix="rnnlab-members")

    def load(self, state: dict) -> None:
        """Take over ``state`` (the whole ensemble's), split into the groups' (copies)."""
        def part(sl):
            return {k: jnp.array(v) if k == "step" else jax.tree.map(lambda a: jnp.array(a[sl]), v)
                    for k, v in state.items()}

        self.states = [part(sl) for sl in self.slices]

    def join(self) -> dict:
        """The whole ensemble's state, as one program would hold it."""
        first = self.states[0]
        return {k: first[k] if k == "step" else
                jax.tree.map(lambda *xs: jnp.concatenate(xs), *[st[k] for st in self.states]) for k in first}

    def submit(self, batch: dict, lr, rng, ema_decay) -> None:
        """Start one training step of every group (``collect`` waits for them)."""
        def one(ids, state):
            out = self.step(self.model, self.tx, state, batch, lr, rng, ema_decay, ids)
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


def check_member_threads(config: ml_collections.ConfigDict) -> int:
    """train.member_threads, checked against model.members (see ``MemberThreads``)."""
    groups, members = config.train.get("member_threads", 1), config.model.get("members", 1)
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"train.member_threads={groups!r}: expected a thread count >= 1 (1: one program)")
    if groups > 1 and members == 1:
        raise ValueError(f"train.member_threads={groups}: this model is one network (model.members=1); member "
                         "threads train an ensemble's members apart: set model.members > 1, or train.member_threads=1")
    if members % groups:
        raise ValueError(f"train.member_threads={groups} must divide model.members={members} (each thread trains "
                         f"as many members); use a divisor of {members}, or 1 (one program)")
    return groups


@contextlib.contextmanager
def member_threads(model: speech_lib.SpeechModel, tx: optax.GradientTransformation, groups: int):
    """A ``MemberThreads`` for train.member_threads=``groups`` (None for 1: one program), its
    threads shut down afterwards."""
    if groups == 1:
        yield None
        return
    grouped = MemberThreads(model, tx, groups)
    try:
        yield grouped
    finally:
        grouped.close()


@functools.partial(jax.jit, static_argnums=(0,))
def logits_step(model: speech_lib.SpeechModel, params, logmel_BxTxM, lengths_B):
    return model.apply(params, logmel_BxTxM, lengths_B)


def eval_floors(config: ml_collections.ConfigDict) -> tuple[float, ...]:
    """eval.test_floors ('15,20,25'): the test-time noise floors voted over ('' = none)."""
    spec = config.eval.get("test_floors", "")
    try:
        floors = tuple(float(v) for v in spec.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"eval.test_floors={spec!r}: expected dB values, comma-separated (e.g. '15,20,25'), "
                         "or '' for none") from None
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
        logits, out_len = logits_step(m, params, x, lengths)
        out.append((np.asarray(logits, np.float32), np.asarray(out_len)))
    return out


def vote(model: speech_lib.SpeechModel, outputs: list[tuple[np.ndarray, np.ndarray]], vocab: audio.Vocab,
         beam_width: int = 0, bias_KxV: np.ndarray | None = None) -> list[str]:
    """Transcripts from one batch's ``floor_logits``: every (floor, member) decoded, greedy
    (beam_width 0) or by prefix beam search, then voted on with ROVER (ties go to the
    first floor's first member). ``bias_KxV``: added to each member's logits before
    decoding (``prior_bias``)."""
    hyps: list[list[tuple[int, ...]]] = [[] for _ in range(len(outputs[0][1]))]
    for logits, out_len in outputs:
        for h, new in zip(hyps, model.member_labels(logits, out_len, beam_width, bias_KxV), strict=True):
            h += new
    return [vocab.decode(ctc.rover(h)) for h in hyps]


def decode(model: speech_lib.SpeechModel, params, batch: audio.Batch, vocab: audio.Vocab,
           beam_width: int = 0, floors: tuple[float, ...] = (), bias_KxV: np.ndarray | None = None) -> list[str]:
    """Transcripts of a batch (``vote`` of its ``floor_logits``). ``floors``: test-time
    noise floors (features.floor_db, dB): the model runs once per floor and every
    (floor, member) transcript is voted on."""
    return vote(model, floor_logits(model, params, batch, floors), vocab, beam_width, bias_KxV)


PRIOR_MIN_LABELS = 400  # prior matching: decoded labels needed per (floor, member) pass, ~40 of each digit


def speaker_prior(config: ml_collections.ConfigDict) -> bool:
    """eval.speaker_prior (runs from before the key have none: off)."""
    v = config.eval.get("speaker_prior", False)
    if not isinstance(v, bool):
        raise ValueError(f"eval.speaker_prior={v!r}: expected True or False")
    return v


def prior_bias(model: speech_lib.SpeechModel, outputs) -> np.ndarray:
    """Prior matching for one speaker (eval.speaker_prior): per member, the output biases
    (``ctc.fit_label_bias``) under which its best paths over every floor emit each digit
    equally often on ``outputs``, the ``floor_logits`` of each batch of that speaker's
    unlabelled speech (no transcript is read). A model trained on few speakers hears a
    new one with a bias of its own (the held-out george's '2' is heard as '4' by the
    models of every seed); the speaker's digits being equally frequent is what undoes it.
    Returns members x labels (1 x V for one network), for ``decode``'s ``bias_KxV``.
    Refuses fewer than ``PRIOR_MIN_LABELS`` decoded labels a pass (a floor): counts that
    small are noise."""
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


def held_out_prior(model: speech_lib.SpeechModel, params, config: ml_collections.ConfigDict, data: SpeechData,
                   floors: tuple[float, ...]) -> np.ndarray:
    """``prior_bias`` on the held-out speakers' clips (``held_out_clips``) under ``floors``."""
    return prior_bias(model, (floor_logits(model, params, b, floors) for b in held_out_clips(config, data)))


def eval_seed(config: ml_collections.ConfigDict) -> int:
    """The seed the evaluation utterances are drawn with: eval.seed, or the run's seed
    when it is -1 (the default; runs from before the key have none)."""
    s = config.eval.get("seed", -1)
    if s < -1:
        raise ValueError(f"eval.seed={s}: expected a seed >= 0, or -1 for the run's seed ({config.seed})")
    return config.seed if s == -1 else s


def eval_utterance_spec(spec: audio.ConnectedSpec) -> audio.ConnectedSpec:
    """How held-out utterances are made: ``spec`` without its training perturbations
    (tempo, mel warps, spectral tilt)."""
    return dataclasses.replace(spec, tempo=0.0, mel_warp=0.0, tilt_db=0.0)


def evaluate(model: speech_lib.SpeechModel, params, config: ml_collections.ConfigDict, data: SpeechData,
             beam_width: int = 0, floors: tuple[float, ...] | None = None,
             bias_KxV: np.ndarray | None = None) -> dict:
    """CER / WER / digit-string accuracy on connected utterances of the held-out speakers,
    decoded as ``decode`` with ``floors`` (None: the config's eval.test_floors).
    ``bias_KxV``: as ``decode``'s; None: with eval.speaker_prior, ``prior_bias`` on the
    held-out clips (``held_out_prior``), otherwise none. With a bias the result says
    ``speaker_prior: True``."""
    ev = config.eval
    floors = eval_floors(config) if floors is None else floors
    if bias_KxV is None and speaker_prior(config):
        bias_KxV = held_out_prior(model, params, config, data, floors)
    refs, hyps = [], []
    test_utts, seed = eval_utterance_spec(data.utterances), eval_seed(config)
    for i in range(-(-ev.utterances // ev.batch_size)):
        n = min(ev.batch_size, ev.utterances - i * ev.batch_size)
        b = audio.connected_batch(data.test, data.noise_NxM, data.vocab, test_utts, seed, EVAL_STEP0 + i, n)
        refs += b.texts
        hyps += decode(model, params, b, data.vocab, beam_width, floors, bias_KxV)
    return (ctc.error_rates(refs, hyps) | {"examples": [[r, h] for r, h in list(zip(refs, hyps, strict=True))[:5]]}
            | ({"speaker_prior": True} if bias_KxV is not None else {}))


CONFUSION_STEP0 = 2 * 10**9  # isolated-clip utterances for confusions: seeds apart from training and evaluation


def held_out_clips(config: ml_collections.ConfigDict, data: SpeechData, batch_size: int = 100):
    """Every clip of the held-out speakers as a one-digit utterance made the way the
    evaluation utterances are (silences, gain, background noise drawn with the
    evaluation seed; no tempo or warps), in batches of ``batch_size``."""
    spec, seed = eval_utterance_spec(data.utterances), eval_seed(config)
    n = len(data.test.clips)
    for start in range(0, n, batch_size):
        utts, labels, texts = [], [], []
        for i in range(start, min(start + batch_size, n)):
            rng = np.random.default_rng([seed, CONFUSION_STEP0 + i])
            u, _ = audio.connected_utterance(data.test, data.noise_NxM, rng, spec, clip_ids=[i])
            utts.append(u)
            texts.append(data.test.clips[i].text)
            labels.append(data.vocab.encode(texts[-1]))
        yield audio.pad_batch(utts, labels, texts, spec.bucket, max(len(x) for x in labels))


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
    """Which digit each held-out clip is heard as (``held_out_clips``), decoded greedily
    as ``evaluate`` decodes (floors, eval.speaker_prior); counts as in
    ``confusion_counts`` with the words '0'..'9'."""
    floors, refs, outputs = eval_floors(config), [], []
    for b in held_out_clips(config, data, batch_size):  # the model runs once: the prior's fit reads these too
        refs += b.texts
        outputs.append(floor_logits(model, params, b, floors))
    bias = prior_bias(model, outputs) if speaker_prior(config) else None
    hyps = [h for out in outputs for h in vote(model, out, data.vocab, 0, bias)]
    return confusion_counts(refs, hyps, [str(d) for d in range(10)])


# ----------------------------------------------------------------------------- loop


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train (or resume) the speech model of ``config`` in ``workdir``; returns the
    final summary (also written to workdir/result.json once finished)."""
    t_start, cpu_start = time.time(), time.process_time()  # process_time: CPU seconds of all our threads
    eval_floors(config), eval_seed(config), speaker_prior(config)  # a bad eval.* fails now, not at the first evaluation
    speed_factors(config.data.get("speed_perturb", ""))  # and a bad data.speed_perturb before anything is written
    groups = check_member_threads(config)  # and a bad train.member_threads
    if config.train.get("fit_to_budget", False) and not config.train.max_minutes > 0:
        raise ValueError("train.fit_to_budget=True fits the schedule to train.max_minutes, which is "
                         f"{config.train.max_minutes}: set train.max_minutes > 0, or train.fit_to_budget=False")
    if speaker_prior(config) and len(held_out := split_clips(config)[1]) < PRIOR_MIN_LABELS:
        raise ValueError(f"eval.speaker_prior=True counts the digits heard in the held-out clips, and "
                         f"{config.data.test_speakers} has {len(held_out)}: too few for counts that mean "
                         f"something (at least {PRIOR_MIN_LABELS}); hold out a speaker with more clips, or set "
                         "eval.speaker_prior=False")
    check_and_write_config(config, workdir)
    result_path = os.path.join(workdir, "result.json")
    data = load_data(config, workdir)
    model = build(config)
    total, tr = config.train.num_steps, config.train
    tx = make_optimizer(config.optim)
    state = initial_state(model, tx, config)
    with member_threads(model, tx, groups) as grouped:  # None: one program trains every member
        params = state["params"]
        n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))

        checkpointer = ckpt_lib.Checkpointer(workdir, keep=tr.keep_checkpoints, async_save=tr.async_checkpoint)
        restored = checkpointer.restore_latest(state)
        start, seconds_before, cpu_before = 0, 0.0, 0.0
        deadline = t_start + 60 * tr.max_minutes if tr.max_minutes else None
        fit = bool(tr.get("fit_to_budget", False))  # with a deadline: refused above without one
        planned = None  # train.fit_to_budget: the step count planned at the end of warmup (kept in the checkpoints)
        if restored is not None:
            start, state, meta_in = restored
            seconds_before = meta_in.get("train_seconds", 0.0)
            cpu_before = meta_in.get("cpu_seconds", 0.0)
            print(f"resumed from step {start} in {workdir}", flush=True)
            if fit and meta_in.get("planned_steps") is not None:
                planned = total = int(meta_in["planned_steps"])
                print(f"budget plan of this run: {total} of {config.train.num_steps} steps", flush=True)
        if grouped is not None:  # the groups hold the state from here on
            grouped.load(state)
            state = None

        def whole() -> dict:  # the whole ensemble's training state
            return state if grouped is None else grouped.join()
        writer = writers.MetricWriter(workdir, tensorboard=tr.tensorboard)
        writer.truncate_after(start)
        if start >= total and (summary := writers.read_finished_result(result_path)) is not None:
            checkpointer.close()
            return summary

        print(f"speech: train speakers {sorted({c.speaker for c in data.train.clips})} ({len(data.train.clips)} clips), "
              f"held out {sorted({c.speaker for c in data.test.clips})} ({len(data.test.clips)} clips); model: "
              f"{f'conv2d {config.model.conv2d}, ' if config.model.get('conv2d') else ''}conv "
              f"{config.model.conv or 'none'} (x{model.subsampling}) -> {model.stack.num_layers}x{model.stack.d_h} "
              f"bi-{model.stack.cell.name}, {model.features.dim} {model.features.kind} features, {n_params:,} "
              f"parameters{f' in {model.members} ensemble members' if model.members > 1 else ''}"
              f"{f' ({groups} member threads)' if groups > 1 else ''}; "
              f"{config.optim.name} lr {config.optim.lr:g}; {total} steps", flush=True)
        progress = writers.Progress(total, start)
        ckpt_every = tr.checkpoint_every or total
        eval_every = tr.eval_every or total
        frames_per_step = [0]  # of the last batch: the throughput unit ('tok/s' = frames/s)
        key = jax.random.key(config.seed + 1)

        def host_copy(tree):  # the next step donates `state`: async saves must own their bytes
            return jax.tree.map(np.array, tree)

        def meta(step: int) -> dict:  # train_seconds: wall time over every session of this run; cpu_seconds:
            # CPU time of this process (all threads) over them: the cost on a shared machine, where wall time
            # also counts other people's jobs
            return {"step": step, "train_seconds": seconds_before + time.time() - t_start,
                    "cpu_seconds": cpu_before + time.process_time() - cpu_start,
                    **({"planned_steps": planned} if planned is not None else {})}

        def check(step: int, m: dict) -> dict:
            m = {k: float(v) for k, v in m.items()}
            if not all(math.isfinite(m[k]) for k in ("loss", "grad_norm", "param_norm")):
                checkpointer.wait()
                raise NonFiniteError(
                    f"non-finite training loss at step {step} (loss={m['loss']}, grad_norm={m['grad_norm']}, "
                    f"param_norm={m['param_norm']}); stopped without saving: the checkpoints in {workdir} "
                    "are from before it. Lower optim.lr or set optim.clip_norm."
                )
            return m

        def log(step: int, m: dict) -> None:
            if step % tr.log_every and step != start + 1 and step != total:
                return
            m.update(lr=learning_rate(config.optim, step - 1, total))
            loads.append(os.getloadavg()[0])  # the machine is shared: say how busy it was
            writer.write(step, m)
            progress.line(step, {"loss": m["loss"], "grad_norm": m["grad_norm"]}, frames_per_step[0])

        def eval_and_log(step: int, beam_width: int = 0, raw: bool = False) -> dict:
            """The EMA weights when train.ema_decay > 0 (raw=True: the last weights)."""
            use_ema = tr.ema_decay and not raw
            st = whole()
            params = ema_params(st["ema"], step, tr.ema_decay) if use_ema else st["params"]
            ev = evaluate(model, params, config, data, beam_width)
            prefix = "raw_" if tr.ema_decay and raw else ""
            writer.write(step, {prefix + k: v for k, v in ev.items() if k != "examples"}, kind="eval")
            print(f"eval at step {step}{f' (beam {beam_width})' if beam_width else ''}"
                  f"{' (EMA weights)' if use_ema else ''}: WER {ev['wer']:.2%} "
                  f"CER {ev['cer']:.2%} digit-string accuracy {ev['string_accuracy']:.2%} on {ev['utterances']} "
                  f"held-out utterances; e.g. {ev['examples'][:2]}", flush=True)
            return ev

        def intermediate_eval(step: int) -> dict:
            """The evaluation every eval_every steps: the evaluated weights, then the last ones beside them."""
            ev = eval_and_log(step)
            if tr.ema_decay:
                eval_and_log(step, raw=True)
            return ev

        def plan_budget(step: int, step_s: float) -> int:
            """train.fit_to_budget: evaluate now (timing one intermediate evaluation), then the step
            count whose schedule ends by the deadline (``budget_steps``)."""
            t0 = time.time()
            intermediate_eval(step)
            eval_s = time.time() - t0
            available = BUDGET_MARGIN * (deadline - time.time())
            n = budget_steps(available, step, total, step_s, eval_s, eval_every)
            exact = step <= config.optim.warmup_steps  # the lr so far did not depend on the step count
            print(f"budget: {n} of {total} steps fit in the {tr.max_minutes:g} minutes (measured {step_s:.3f} s per "
                  f"step over steps {start + 4}-{step}, {eval_s:.1f} s per evaluation); the schedule now ends at step "
                  f"{n}" + (f"; the same run anywhere: train.num_steps={n} train.fit_to_budget=False "
                            "train.max_minutes=0" if exact and n < total else ""), flush=True)
            progress.total = n
            return n

        loads: list[float] = []  # 1-minute load average at each logged step (this session)
        pending = None  # (step, device metrics): fetched after the next step is dispatched
        plan_at = max(config.optim.warmup_steps, PLAN_MIN_STEPS, start + PLAN_MIN_STEPS // 2)
        step_seconds: list[float] = []  # wall time of each loop pass that compiled nothing (fit_to_budget)
        shapes_seen: set = set()
        t_last = time.time()
        step, ev = start, None

        def batch_at(i: int) -> audio.Batch:
            return audio.connected_batch(data.train, data.noise_NxM, data.vocab, data.utterances, config.seed, i,
                                         config.data.batch_size)

        ahead = None  # member threads: the next step's batch, built while the groups train
        while step < total:
            lr = learning_rate(config.optim, step, total)
            b = ahead if ahead is not None else batch_at(step)
            ahead = None
            frames_per_step[0] = int(b.lengths_B.sum())
            args = (_device_batch(b), jnp.float32(lr), jax.random.fold_in(key, step), jnp.float32(tr.ema_decay))
            if grouped is None:
                state, dev_metrics = train_step(model, tx, state, *args)
            else:
                grouped.submit(*args)
                ahead = batch_at(step + 1) if step + 1 < total else None
                dev_metrics = grouped.collect()
            if pending is not None:  # host sync on the previous step only: keeps the device busy
                log(pending[0], check(*pending))
            step += 1
            pending = (step, dev_metrics)
            if fit and planned is None:  # time the passes until the plan
                shape = b.logmel_BxTxM.shape
                if step > start + 3 and shape in shapes_seen:  # a new shape's pass includes its compilation
                    step_seconds.append(time.time() - t_last)
                shapes_seen.add(shape)
                if step >= plan_at and len(step_seconds) >= PLAN_MIN_SAMPLES and step < total:
                    log(step, check(*pending))
                    pending = None
                    planned = total = plan_budget(step, float(np.mean(step_seconds)))
            last = step == total or (deadline is not None and time.time() > deadline)
            evaluating, saving = step % eval_every == 0 or last, step % ckpt_every == 0 or last
            if (evaluating or saving) and pending is not None:  # host sync now: nothing is saved before its check
                log(step, check(*pending))
                pending = None
            if evaluating and not last:
                ev = intermediate_eval(step)
            if saving:
                checkpointer.save(step, host_copy(whole()), meta(step))
            if last:
                break
            t_last = time.time()
        checkpointer.wait()
        finished = step >= total
        train_seconds = seconds_before + time.time() - t_start
        cpu_seconds = cpu_before + time.process_time() - cpu_start
        ev = eval_and_log(step)
        summary = {"step": step, "finished": finished, "parameters": n_params, "train_seconds": train_seconds,
                   "cpu_seconds": cpu_seconds, "load_average_1min_mean": float(np.mean(loads)) if loads else None,
                   **({"planned_steps": planned, "num_steps": config.train.num_steps} if planned is not None else {}),
                   "held_out": config.data.test_speakers,
                   **{f"eval_{k}": v for k, v in ev.items() if k != "examples"}, "examples": ev["examples"]}
        if tr.ema_decay:  # the last weights too, for comparison (not the result)
            evr = eval_and_log(step, raw=True)
            summary.update({f"eval_raw_{k}": v for k, v in evr.items() if k != "examples"})
        if config.eval.beam_width:
            evb = eval_and_log(step, config.eval.beam_width)
            summary.update({f"eval_beam_{k}": v for k, v in evb.items() if k != "examples"})
        summary["total_seconds"] = seconds_before + time.time() - t_start
        writer.write(step, {k: v for k, v in summary.items() if isinstance(v, (int, float))}, kind="summary")
        writer.close()
        checkpointer.close()
        print("summary: " + json.dumps(summary), flush=True)
        if finished:
            writers.write_json_atomic(result_path, summary)
        return summary
