"""Speech data: WAV folders (the Free Spoken Digit Dataset's ``{digit}_{speaker}_{index}.wav``
naming), Hugging Face audio datasets (a hub name or local files), resampling,
speaker-independent splits, a log-mel feature cache, and connected-digit
utterances built from single-digit clips.

Connected utterances are assembled in the log-mel domain from cached clip
features, so a training batch costs a few numpy concatenations, not an STFT:

    clip log-mel (silence-trimmed) + gain          log(g^2 P) = log P + 2 log g: exact
    joined with silences (zero speech power)       random lengths before, between, after
    background noise: log(P_speech + P_noise)      power addition: exact in expectation
                                                   (the cross term has mean zero)

where the noise frames are log-mel frames of real white noise (a cached
template, a random window per utterance) at a random SNR. Every batch is a pure
function of (seed, step): ``np.random.default_rng([seed, step])``.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.io.wavfile
import scipy.signal

from rnnlab import features as feat
from rnnlab.data.text import Vocab

FSDD_PATTERN = re.compile(r"^(?P<text>\d)_(?P<speaker>[A-Za-z]+)_(?P<index>\d+)\.wav$")
DIGITS = Vocab.for_ctc("0123456789", spaced=True)


class Clip(NamedTuple):
    path: str  # a file, or '<dataset>[i]' for in-memory audio
    speaker: str
    text: str  # the transcript
    index: int  # the take number (FSDD) or the row (datasets)


# ----------------------------------------------------------------------------- waveforms


def resample(wave_S: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling (scipy.signal.resample_poly, Kaiser-windowed FIR
    anti-aliasing filter) by the exact ratio rate_out / rate_in."""
    if rate_in == rate_out:
        return wave_S
    g = math.gcd(int(rate_in), int(rate_out))
    return scipy.signal.resample_poly(wave_S, rate_out // g, rate_in // g).astype(np.float32)


def to_mono_float(data: np.ndarray, name: str) -> np.ndarray:
    """PCM (int16/int32/uint8) or float samples -> float32 in [-1, 1]; channels
    (N x C) are averaged down to mono."""
    if data.dtype == np.int16:
        x = data.astype(np.float32) / 32768.0
    elif data.dtype == np.int32:
        x = data.astype(np.float32) / 2147483648.0
    elif data.dtype == np.uint8:
        x = (data.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.floating):
        x = data.astype(np.float32)
    else:
        raise ValueError(f"{name}: unsupported sample type {data.dtype}; use PCM 8/16/32-bit or float WAV")
    if x.ndim == 2:
        x = x.mean(axis=1)  # mix down: the mean keeps the level of a centred mono source
    elif x.ndim != 1:
        raise ValueError(f"{name}: audio of shape {data.shape} is neither mono (N,) nor channels-last (N, C)")
    return x


def read_wav(path: str, target_rate: int) -> np.ndarray:
    """A WAV file as float32 mono at ``target_rate`` Hz. An empty, truncated or
    non-WAV file raises ValueError naming the file."""
    try:
        rate, data = scipy.io.wavfile.read(path)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - scipy raises ValueError, EOFError, struct.error ...
        raise ValueError(f"{path}: not a readable WAV file ({type(e).__name__}: {e}); "
                         "re-export it as PCM WAV or remove it from the folder") from e
    if data.size == 0:
        raise ValueError(f"{path}: the WAV file holds no samples; remove it from the folder")
    return resample(to_mono_float(data, path), rate, target_rate)


# ----------------------------------------------------------------------------- sources


def wav_folder(root: str, pattern: re.Pattern = FSDD_PATTERN) -> list[Clip]:
    """Every ``*.wav`` under ``root`` whose name matches ``pattern`` (groups text,
    speaker, index), sorted by name. FSDD: '7_jackson_32.wav' -> text '7'."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root} is not a folder of WAV files (FSDD: .../fsdd/recordings)")
    clips = []
    for path in sorted(glob.glob(os.path.join(root, "**", "*.wav"), recursive=True)):
        m = pattern.match(os.path.basename(path))
        if m:
            clips.append(Clip(path, m["speaker"], m["text"], int(m["index"])))
    if not clips:
        raise ValueError(f"no WAV file in {root} is named like {pattern.pattern!r}")
    return clips


def hf_audio(name_or_dataset, *, split: str = "train", audio_column: str = "audio", text_column: str = "text",
             speaker_column: str | None = None, target_rate: int = 8000, data_files=None,
             max_items: int | None = None) -> tuple[list[Clip], list[np.ndarray]]:
    """Clips and waveforms from a Hugging Face dataset: a hub name (e.g.
    'speech_commands', where the hub is reachable), a loader name with local
    ``data_files`` ('csv' with a column of WAV paths), or a ``datasets.Dataset``.
    The audio column may hold file paths, {'path', 'bytes'} or {'array',
    'sampling_rate'}; decoding is ours (scipy), so no audio backend is needed."""
    import datasets

    ds = name_or_dataset
    if isinstance(ds, str):
        ds = datasets.load_dataset(ds, split=split, data_files=data_files)
    missing = [c for c in (audio_column, text_column, speaker_column) if c and c not in ds.column_names]
    if missing:
        raise ValueError(f"dataset has no column {missing}; it has {ds.column_names} "
                         "(set audio_column / text_column / speaker_column)")
    if isinstance(ds.features.get(audio_column), datasets.Audio):
        ds = ds.cast_column(audio_column, datasets.Audio(decode=False))
    clips, waves = [], []
    for i, row in enumerate(ds):
        if max_items is not None and i >= max_items:
            break
        a = row[audio_column]
        label = f"{getattr(ds, 'info', None) and ds.info.dataset_name or 'dataset'}[{i}]"
        if isinstance(a, str):
            wave, label = read_wav(a, target_rate), a
        elif isinstance(a, dict) and a.get("array") is not None:
            wave = resample(to_mono_float(np.asarray(a["array"]), label), int(a["sampling_rate"]), target_rate)
        elif isinstance(a, dict) and a.get("bytes"):
            import io

            wave = read_wav(io.BytesIO(a["bytes"]), target_rate)  # type: ignore[arg-type]
        elif isinstance(a, dict) and a.get("path"):
            wave, label = read_wav(a["path"], target_rate), a["path"]
        else:
            raise ValueError(f"{label}: column {audio_column!r} holds {type(a).__name__}, not audio")
        speaker = str(row[speaker_column]) if speaker_column else "unknown"
        clips.append(Clip(label, speaker, str(row[text_column]), i))
        waves.append(wave)
    return clips, waves


def split_by_speaker(clips: Sequence[Clip], test_speakers: Sequence[str]) -> tuple[list[Clip], list[Clip]]:
    """(train, test): no speaker in both. Unknown names are an error, not an empty set."""
    speakers = sorted({c.speaker for c in clips})
    unknown = sorted(set(test_speakers) - set(speakers))
    if unknown:
        raise ValueError(f"held-out speakers {unknown} are not in the data; speakers: {speakers}")
    test = [c for c in clips if c.speaker in test_speakers]
    train = [c for c in clips if c.speaker not in test_speakers]
    return train, test


def split_adaptation(clips: Sequence[Clip]) -> tuple[list[Clip], list[Clip]]:
    """(adaptation, test) of held-out speakers' clips, disjoint: per speaker, the first
    half of its takes (``index`` < n // 2, n = its number of takes; FSDD: takes 0-24
    of 50) are the unlabelled audio a test-time adaptation may read (speaker and rate
    statistics, prior matching); the test utterances are built from the rest (25-49),
    which no statistic reads."""
    adapt, test = [], []
    for speaker in sorted({c.speaker for c in clips}):
        mine = [c for c in clips if c.speaker == speaker]
        n = max(c.index for c in mine) + 1
        if n < 2:
            raise ValueError(f"held-out speaker {speaker} has one take per word: adaptation and test need two "
                             "disjoint halves of its takes (use more takes: data.takes_per_digit >= 2 or 0)")
        adapt += [c for c in mine if c.index < n // 2]
        test += [c for c in mine if c.index >= n // 2]
    return adapt, test


# ----------------------------------------------------------------------------- feature cache


class FeatureBank(NamedTuple):
    """Log-mel frames of many clips, concatenated: clip i is
    ``logmel_FxM[offsets[i]:offsets[i + 1]]``; ``level[i]`` its mean log power."""

    logmel_FxM: np.ndarray
    offsets: np.ndarray
    level: np.ndarray
    clips: list[Clip]

    def frames(self, i: int) -> np.ndarray:
        return self.logmel_FxM[self.offsets[i]:self.offsets[i + 1]]

    @classmethod
    def from_parts(cls, parts: Sequence[np.ndarray], clips: Sequence[Clip]) -> FeatureBank:
        """A bank of the clips' frames ``parts`` (one T x M array per clip), each clip's
        ``level`` computed from its frames."""
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
        level = np.asarray([np.log(np.mean(np.exp(p.astype(np.float64)))) for p in parts], np.float32)
        return cls(np.concatenate(parts).astype(np.float32, copy=False), offsets, level, list(clips))

    @classmethod
    def concat(cls, banks: Sequence[FeatureBank]) -> FeatureBank:
        """The clips of ``banks`` in order, as one bank."""
        sizes = [len(b.logmel_FxM) for b in banks]
        starts = np.cumsum([0] + sizes[:-1])
        offsets = np.concatenate([[0]] + [b.offsets[1:] + s for b, s in zip(banks, starts, strict=True)])
        return cls(np.concatenate([b.logmel_FxM for b in banks]), offsets.astype(np.int64),
                   np.concatenate([b.level for b in banks]), [c for b in banks for c in b.clips])

    def subset(self, keep: Sequence[int]) -> FeatureBank:
        parts = [self.frames(i) for i in keep]
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
        return FeatureBank(np.concatenate(parts), offsets, self.level[list(keep)], [self.clips[i] for i in keep])


_PAD = 2048  # samples: clips are padded to a multiple of this so log_mel compiles a handful of shapes


def clip_log_mel(spec: feat.FeatureSpec, wave_S: np.ndarray) -> np.ndarray:
    """log-mel of one waveform (float32, T x M), computed on a zero-padded copy
    (frames are not centred, so the first T frames are unchanged by the padding)."""
    n = len(wave_S)
    t = spec.num_frames(n)
    if t < 1:
        raise ValueError(f"a clip of {n} samples is shorter than one analysis window ({spec.win_length})")
    padded = np.zeros(-(-n // _PAD) * _PAD, np.float32)
    padded[:n] = wave_S
    return np.asarray(_log_mel_jit(spec, jnp.asarray(padded)))[:t]


_log_mel_jit = jax.jit(feat.log_mel, static_argnums=0)


def _loud_frames(logmel_TxM: np.ndarray, top_db: float) -> np.ndarray:
    """Indices of the frames whose power is within ``top_db`` of the loudest frame's."""
    power_T = np.log(np.mean(np.exp(logmel_TxM.astype(np.float64)), axis=1))
    return np.nonzero(power_T > power_T.max() - top_db * math.log(10) / 10)[0]


def trim_silence(logmel_TxM: np.ndarray, top_db: float = 35.0, margin: int = 3) -> np.ndarray:
    """Drop leading/trailing frames whose power is ``top_db`` below the loudest frame
    (keeping ``margin`` frames of context): the clips' own silences vary from 0.1 to
    1 s, and the utterance builder adds its own."""
    loud = _loud_frames(logmel_TxM, top_db)
    lo, hi = max(loud[0] - margin, 0), min(loud[-1] + margin + 1, len(logmel_TxM))
    return logmel_TxM[lo:hi]


def build_bank(clips: Sequence[Clip], spec: feat.FeatureSpec, waves: Sequence[np.ndarray] | None = None,
               *, trim_db: float = 35.0) -> FeatureBank:
    """Silence-trimmed log-mel frames of ``clips`` (their WAV files, or ``waves``)."""
    parts = []
    for i, c in enumerate(clips):
        wave = waves[i] if waves is not None else read_wav(c.path, spec.sample_rate)
        lm = clip_log_mel(spec, wave)
        parts.append(trim_silence(lm, trim_db) if trim_db > 0 else lm)
    return FeatureBank.from_parts(parts, clips)


def cached_bank(clips: Sequence[Clip], spec: feat.FeatureSpec, cache_dir: str, *,
                trim_db: float = 35.0) -> FeatureBank:
    """``build_bank`` of WAV clips, stored as .npy in ``cache_dir/<hash of files, sizes
    and spec>``; a later call (another run, a resumed one) only reads it back."""
    key = json.dumps([dataclasses.asdict(spec), trim_db,
                      [(c.path, os.path.getsize(c.path), c.speaker, c.text, c.index) for c in clips]])
    d = os.path.join(cache_dir, "logmel_" + hashlib.sha256(key.encode()).hexdigest()[:16])
    names = ("logmel.npy", "offsets.npy", "level.npy")
    if all(os.path.exists(os.path.join(d, n)) for n in names):
        arrays = [np.load(os.path.join(d, n)) for n in names]
        return FeatureBank(*arrays, list(clips))
    bank = build_bank(clips, spec, trim_db=trim_db)
    os.makedirs(d, exist_ok=True)
    for n, a in zip(names, bank[:3], strict=True):
        tmp = os.path.join(d, f".{n}.{os.getpid()}.npy")  # write then rename: concurrent runs never see half a file
        np.save(tmp, a)
        os.replace(tmp, os.path.join(d, n))
    return bank


SPEAKER_NORMS = ("none", "mean", "meanvar")


def speaker_stats(bank: FeatureBank) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per speaker: mean and standard deviation (float64, per mel channel) of the log-mel
    frames of all that speaker's clips. Uses no transcript: only the speaker name."""
    out = {}
    for speaker in sorted({c.speaker for c in bank.clips}):
        out[speaker] = channel_stats([bank.frames(i) for i, c in enumerate(bank.clips) if c.speaker == speaker])
    return out


def channel_stats(clips_TxM: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per channel (float64) over all frames of the clips."""
    x = np.concatenate(list(clips_TxM)).astype(np.float64)
    return x.mean(axis=0), x.std(axis=0)


def speaker_transform(frames_TxM: np.ndarray, mean_M: np.ndarray, std_M: np.ndarray, mode: str) -> np.ndarray:
    """``normalise_speakers``' map of one clip's frames, given its speaker's statistics."""
    if mode == "none":
        return frames_TxM
    x = frames_TxM.astype(np.float64) - mean_M
    if mode == "meanvar":
        x = x * (std_M.mean() / np.maximum(std_M, 1e-3))
    return (x + mean_M.mean()).astype(np.float32)


def normalise_speakers(bank: FeatureBank, mode: str = "mean",
                       stats: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> FeatureBank:
    """Speaker-level cepstral-style mean (and variance) normalisation in the log-mel
    domain, from each speaker's own unlabelled clips (the statistics need no
    transcript). ``mean``: subtract the speaker's per-channel mean
    and add back its mean over channels, i.e. a per-channel gain that flattens the
    speaker's average spectrum (microphone, vocal tract tilt) and keeps its level,
    so gains and noise power addition stay exact. ``meanvar``: additionally scale
    each channel's deviations to the speaker's mean standard deviation over channels.
    ``level`` (mean log power per clip) is recomputed. ``stats``: ``speaker_stats`` of
    other clips of the same speakers (a held-out speaker's adaptation takes), applied
    to these; None: of ``bank`` itself."""
    if mode not in SPEAKER_NORMS:
        raise ValueError(f"data.speaker_norm must be one of {SPEAKER_NORMS}, got {mode!r}")
    if mode == "none":
        return bank
    stats = speaker_stats(bank) if stats is None else stats
    parts = [speaker_transform(bank.frames(i), *stats[c.speaker], mode) for i, c in enumerate(bank.clips)]
    return FeatureBank.from_parts(parts, bank.clips)


def active_span(frames_TxM: np.ndarray, top_db: float = 25.0) -> int:
    """Frames from the first to the last one within ``top_db`` of the clip's loudest
    frame: the spoken part of a clip, whatever silence or noise surrounds it."""
    loud = _loud_frames(frames_TxM, top_db)
    return int(loud[-1] - loud[0] + 1)


def speaker_rates(bank: FeatureBank) -> dict[str, float]:
    """Per speaker: the median ``active_span`` of its clips (frames). Uses no
    transcript: only the speaker name."""
    spans: dict[str, list[int]] = {}
    for i, c in enumerate(bank.clips):
        spans.setdefault(c.speaker, []).append(active_span(bank.frames(i)))
    return {s: float(np.median(v)) for s, v in sorted(spans.items())}


def rate_transform(frames_TxM: np.ndarray, median_span: float, target: float) -> np.ndarray:
    """``normalise_rate``'s map of one clip, given its speaker's median active span."""
    return warp_clip(frames_TxM, target / median_span, 1.0)


def normalise_rate(bank: FeatureBank, target: float, rates: dict[str, float] | None = None) -> FeatureBank:
    """Speaking-rate normalisation, from each speaker's own unlabelled clips (a held-out
    speaker's adaptation takes, as ``normalise_speakers``): every clip of a speaker is
    stretched in time by ``target`` / (that speaker's median active span), so each
    speaker's words last about ``target`` frames at the median. A held-out slow
    speaker (FSDD's jackson: median 41 frames against 26-36 for the others) then
    does not look like another word's duration. ``target`` <= 0: unchanged.
    ``rates``: ``speaker_rates(bank)`` when the caller has it already."""
    if target <= 0:
        return bank
    rates = speaker_rates(bank) if rates is None else rates
    parts = [rate_transform(bank.frames(i), rates[c.speaker], target) for i, c in enumerate(bank.clips)]
    return FeatureBank.from_parts(parts, bank.clips)


def noise_template(spec: feat.FeatureSpec, n_frames: int = 4000, seed: int = 12345) -> np.ndarray:
    """log-mel frames of unit-variance white Gaussian noise, minus their mean log
    power (so adding ``level`` gives noise of that level)."""
    wave = np.random.default_rng(seed).standard_normal(spec.hop_length * (n_frames - 1) + spec.win_length)
    lm = clip_log_mel(spec, wave.astype(np.float32))
    return (lm - np.log(np.mean(np.exp(lm.astype(np.float64))))).astype(np.float32)


# ----------------------------------------------------------------------------- connected digits


@dataclasses.dataclass(frozen=True)
class ConnectedSpec:
    """How connected utterances are drawn (frames are hops of the feature spec)."""

    min_words: int = 1
    max_words: int = 7
    max_silence: int = 25  # frames of silence before, between and after clips: U{0..max}
    gain_db: float = 6.0  # per-clip gain U(-g, g) dB
    snr_db: tuple[float, float] = (10.0, 40.0)  # background white noise, U(lo, hi) dB below the speech level
    bucket: int = 64  # batches are padded to a multiple of this many frames (few shapes to compile)
    tempo: float = 0.0  # per-clip time stretch by U(1 - tempo, 1 + tempo) (speaking rate)
    mel_warp: float = 0.0  # per-clip mel-axis scaling by U(1 - w, 1 + w) (vocal tract length, as VTLP)


def warp_clip(frames_TxM: np.ndarray, stretch: float, warp: float) -> np.ndarray:
    """Linear interpolation of a clip's log-mel frames along time (``stretch``: the
    new length is round(T * stretch)) and along the mel axis (channel m reads the
    source at m * ``warp``, clamped: warp > 1 moves formants down, like a longer
    vocal tract). An approximation of speed/VTLP perturbation on cached features."""

    def interp(x, positions, axis):
        lo = np.clip(np.floor(positions).astype(np.int64), 0, x.shape[axis] - 1)
        hi = np.minimum(lo + 1, x.shape[axis] - 1)
        frac = (positions - lo).astype(np.float32)
        shape = [1, 1]
        shape[axis] = -1
        frac = frac.reshape(shape)
        return np.take(x, lo, axis=axis) * (1 - frac) + np.take(x, hi, axis=axis) * frac

    n_t, n_m = frames_TxM.shape
    out = frames_TxM
    if stretch != 1.0:
        new_t = max(1, int(round(n_t * stretch)))
        out = interp(out, np.linspace(0, n_t - 1, new_t), 0)
    if warp != 1.0:
        out = interp(out, np.clip(np.arange(n_m) * warp, 0, n_m - 1), 1)
    return out.astype(np.float32)


class Batch(NamedTuple):
    logmel_BxTxM: np.ndarray  # float32, zero past each length
    lengths_B: np.ndarray  # int32 frames
    labels_BxU: np.ndarray  # int32 CTC labels (1..V-1), zero padded
    label_lengths_B: np.ndarray
    texts: list[str]


def connected_utterance(bank: FeatureBank, noise_FxM: np.ndarray, rng: np.random.Generator, spec: ConnectedSpec,
                        clip_ids: Sequence[int] | None = None) -> tuple[np.ndarray, list[int]]:
    """One utterance: log-mel T x M and the clips it joins (drawn when not given)."""
    if clip_ids is None:
        n_words = int(rng.integers(spec.min_words, spec.max_words + 1))
        clip_ids = rng.integers(0, len(bank.clips), n_words).tolist()
    sil = rng.integers(0, spec.max_silence + 1, len(clip_ids) + 1)
    gains = rng.uniform(-spec.gain_db, spec.gain_db, len(clip_ids)) * math.log(10) / 10  # natural-log power
    floor = math.log(1e-6)  # the features' floor: zero speech power
    m = bank.logmel_FxM.shape[1]
    parts = [np.full((sil[0], m), floor, np.float32)]
    stretch = rng.uniform(1 - spec.tempo, 1 + spec.tempo, len(clip_ids)) if spec.tempo else np.ones(len(clip_ids))
    warp = rng.uniform(1 - spec.mel_warp, 1 + spec.mel_warp, len(clip_ids)) if spec.mel_warp else np.ones(len(clip_ids))
    for k, i in enumerate(clip_ids):
        clip = warp_clip(bank.frames(i), stretch[k], warp[k])
        parts += [clip + np.float32(gains[k]), np.full((sil[k + 1], m), floor, np.float32)]
    speech = np.concatenate(parts)
    level = float(np.mean(bank.level[list(clip_ids)] + gains))
    snr = rng.uniform(*spec.snr_db) * math.log(10) / 10
    start = int(rng.integers(0, len(noise_FxM) - len(speech) + 1)) if len(noise_FxM) > len(speech) else 0
    noise = np.resize(noise_FxM[start:start + len(speech)], speech.shape) + np.float32(level - snr)
    return np.logaddexp(speech, noise).astype(np.float32), list(clip_ids)


def pad_batch(utterances: Sequence[np.ndarray], label_seqs: Sequence[np.ndarray], texts: list[str], bucket: int,
              max_labels: int) -> Batch:
    lengths = np.asarray([len(u) for u in utterances], np.int32)
    t_pad = int(-(-lengths.max() // bucket) * bucket)
    x = np.zeros((len(utterances), t_pad, utterances[0].shape[1]), np.float32)
    for b, u in enumerate(utterances):
        x[b, :len(u)] = u
    labels = np.zeros((len(utterances), max_labels), np.int32)
    for b, s in enumerate(label_seqs):
        labels[b, :len(s)] = s
    return Batch(x, lengths, labels, np.asarray([len(s) for s in label_seqs], np.int32), texts)


def connected_batch(bank: FeatureBank, noise_FxM: np.ndarray, vocab: Vocab, spec: ConnectedSpec, seed: int,
                    step: int, batch_size: int) -> Batch:
    """A batch of connected utterances: a pure function of (seed, step)."""
    rng = np.random.default_rng([seed, step])
    utts, labels, texts = [], [], []
    for _ in range(batch_size):
        u, ids = connected_utterance(bank, noise_FxM, rng, spec)
        text = " ".join(bank.clips[i].text for i in ids)
        utts.append(u)
        labels.append(vocab.encode(text))
        texts.append(text)
    max_labels = max(len(vocab.encode(c.text)) for c in bank.clips) * spec.max_words
    return pad_batch(utts, labels, texts, spec.bucket, max_labels)
