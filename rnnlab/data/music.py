"""Polyphonic music: piano rolls of the Bach chorales that ship inside the
``music21`` wheel (no download), in the manner of the JSB Chorales set of
Boulanger-Lewandowski et al. 2012: one step per quarter note, 88 pitches (MIDI
21..108, the piano's range), a binary multi-hot frame per step, and the
negative log-likelihood per time step of independent Bernoulli outputs as the
metric (``piano_roll_nll``).

Use::

    from rnnlab.data import music
    rolls = music.load_split('train')                  # [roll_TixD bool, ...], D = 88
    b = music.batch(seed, step, batch_size=16, max_len=64)   # RollBatch, time-major float32
    for b in music.split_batches('valid', batch_size=64):    # whole pieces, one shape
        ...  # nll of the split = sum(nll_b * sum(mask_b)) / sum(sum(mask_b))
    loss = music.piano_roll_nll(logits_TxBxD, b.targets_TxBxD, b.mask_TxB)

The roll (``piano_roll``): pitch p is on at step t when a note of a vocal part
with MIDI number p sounds at time t quarter notes, i.e. offset <= t < offset +
duration on the score's time line (music21's parsing: ``part.flatten().notes``,
chord pitches, ``pitch.midi``); rests are off. T = ceil(highest time of the
voices). Decisions:

  * voices only: parts whose name starts with Soprano, Alto, Tenor or Bass
    (``VOICES``; also 'Soprano 1', 'Bass Continuo'). JSB is the four-part
    harmonisations; about 40 files here also hold instrumental parts (horns,
    trumpets, timpani, obbligato violins, continuo) that are left out.
  * ties: nothing to do. The roll records what sounds, not onsets, so a note
    tied over a bar line is on at every step it sounds, with or without
    music21's ``stripTies`` (a test checks this).
  * pickup measures: time 0 is the start of the first, incomplete, measure
    (music21 places it at offset 0), as a MIDI rendering of the score starts.
    Steps fall on the written quarter beats when the pickup is a whole number
    of quarters (every file but one 12/8 chorale, BWV 248.23, which is sampled
    on the same quarter-note grid). Grace notes have no duration: never on.
  * files: the MusicXML files (.mxl, .xml) of ``music21.corpus.getComposer('bach')``
    (409 in music21 10.5.1) less ``NOT_CHORALES`` (the C major prelude of the
    Well-Tempered Clavier). The .rntxt files are Roman-numeral analyses, the
    three .krn files duplicates of .mxl ones.
  * a file that is not one chorale -- several scores (an Opus), no vocal part,
    or a note outside 21..108 -- is skipped, and named with the reason in the
    build's printout and in the cache (``skipped_files()``); none is, in music21
    10.5.1. ``piano_roll`` itself raises ``NotAChorale`` for these.

Split by piece, fixed: a piece is a BWV movement number, so the variants of
one chorale (``bwv18.5-lz`` and ``bwv18.5-w``, ``bwv248.23-2`` and
``bwv248.23-s`` ...) and the pairs in ``SAME_CHORALE`` (one harmonisation under
two numbers: equal rolls, up to a transposition, on at least 95% of the frames)
fall in the same split. The pieces, sorted, are permuted by ``SPLIT_SEED`` and
cut 60/20/20 into train/valid/test (``split_files``, ``split_counts()``): with
music21 10.5.1, 409 files in 395 pieces, 237/79/79 pieces = 248/79/82 files;
pieces are 24..272 frames long, 57 on average. This is NOT the original JSB
split (229/76/77 of 382 pieces, from MIDI files): the pieces and the split
differ, so losses are comparable in kind, not digit for digit, with published ones.

Sequences: inputs x_t = roll_t, targets roll_{t+1}, so a piece of T_i frames
gives T_i - 1 scored steps (its first frame is only an input, where a model
of the whole sequence, as Boulanger-Lewandowski et al.'s, also scores it).

Cache: parsing the corpus takes under a minute on one core, so the rolls are
kept in one .npz under ``$RNNLAB_CACHE_DIR`` (default ``~/.cache/rnnlab``, or
the ``cache_dir`` argument), named by the music21 version and
``PIPELINE_VERSION`` (a stale cache is never read; bump the version when the
roll changes; the split is computed from the file names), written atomically
(temp file + ``os.replace``), with progress printed while it is built.
"""

from __future__ import annotations

import fcntl
import functools
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

PIPELINE_VERSION = 1  # bump when the roll or the cache layout changes (the split is computed from names)
LOWEST_MIDI = 21  # A0, the piano's lowest key
N_PITCHES = 88  # MIDI 21..108: D of every roll
VOICES = ("soprano", "alto", "tenor", "bass")  # first word of a vocal part's name (case ignored)
SPLITS = ("train", "valid", "test")
SPLIT_SEED = 0
FRACTIONS = (0.6, 0.2, 0.2)  # of the pieces: train, valid, test
NOT_CHORALES = {"bach/bwv846.mxl": "Well-Tempered Clavier I, Prelude in C major (piano, no voices)"}
# One harmonisation under two BWV numbers: pairs of equal length whose rolls agree, up to a
# transposition, on at least 95% of the frames (100%: the first two), found by comparing every
# pair in music21 10.5.1's corpus (a slow test keeps it so); the pair is one piece for the split.
# Variants of one movement number (bwv18.5-lz / -w, bwv190.7 / -inst ...) are grouped by name.
SAME_CHORALE = {"bwv197.7": "bwv398", "bwv274": "bwv62.6", "bwv279": "bwv158.4", "bwv59.3": "bwv175.7",
                "bwv414": "bwv253"}
_TASK_ID = 5  # folded into every seed, as rnnlab.data.synthetic and digits do


class RollBatch(NamedTuple):
    xs_TxBxD: np.ndarray  # float32 frames roll_t, 0 on padding
    targets_TxBxD: np.ndarray  # float32 frames roll_{t+1}, 0 on padding
    mask_TxB: np.ndarray  # float32, 1.0 on real steps, 0.0 on padding


class NotAChorale(ValueError):
    """A score that is not one chorale in the piano range (the cache build skips it)."""


# --------------------------------------------------------------------------- music21


def _music21():
    try:
        import music21
    except ImportError as e:
        raise ImportError("rnnlab.data.music reads the Bach chorales bundled with music21: "
                          "pip install music21 (or pip install -e . in the repository)") from e
    return music21


def chorale_files() -> list[str]:
    """The chorale files, as corpus names ('bach/bwv66.6.mxl'), sorted. Fast: lists, parses nothing."""
    m21 = _music21()
    root = Path(m21.corpus.__file__).parent
    names = sorted(Path(p).relative_to(root).as_posix() for p in m21.corpus.getComposer("bach"))
    files = [n for n in names if n.endswith((".mxl", ".xml")) and n not in NOT_CHORALES]
    if not files:
        raise RuntimeError(f"music21 {m21.__version__} lists no Bach MusicXML files in its corpus at {root}; "
                           "reinstall it with its corpus: pip install --force-reinstall music21")
    return files


def _is_voice(part) -> bool:
    words = str(part.partName or "").lower().split()
    return bool(words) and words[0] in VOICES


def piano_roll(score, *, name: str = "score") -> np.ndarray:
    """roll_TxD bool (D = 88) of a music21 Score: pitch LOWEST_MIDI + d is on at
    step t when a vocal part has a note or chord with that pitch sounding at t
    quarter notes (offset <= t < offset + duration). Raises NotAChorale for an
    Opus, a score without vocal parts, or a pitch outside MIDI 21..108."""
    m21 = _music21()
    if isinstance(score, m21.stream.Opus):
        raise NotAChorale(f"{name}: an Opus of {len(score.scores)} scores, not one chorale")
    voices = [p for p in score.parts if _is_voice(p)]
    if not voices:
        raise NotAChorale(f"{name}: no vocal part (names starting with {VOICES}) among "
                          f"{[p.partName for p in score.parts]}")
    end = max(p.offset + p.highestTime for p in voices)  # quarter notes (float or Fraction)
    roll_TxD = np.zeros((math.ceil(end), N_PITCHES), bool)
    for part in voices:
        for n in part.flatten().notes:  # Note and Chord; rests are not in .notes
            start = part.offset + n.offset
            first, stop = math.ceil(start), math.ceil(start + n.quarterLength)  # integer t in [start, end)
            for p in n.pitches:
                if not LOWEST_MIDI <= p.midi < LOWEST_MIDI + N_PITCHES:
                    raise NotAChorale(f"{name}: {p.nameWithOctave} (MIDI {p.midi}) at quarter {float(start)} "
                                      f"is outside the piano range {LOWEST_MIDI}..{LOWEST_MIDI + N_PITCHES - 1}")
                roll_TxD[first:stop, p.midi - LOWEST_MIDI] = True
    return roll_TxD


def parse_chorale(name: str) -> np.ndarray:
    """The roll of one corpus file ('bach/bwv66.6.mxl' or 'bach/bwv66.6'), parsed by music21."""
    # forceSource: never read music21's own pickle cache, which it writes in place (not atomically): a
    # process reading a file another is writing got "Error -5 while decompressing data"
    return piano_roll(_music21().corpus.parse(name, forceSource=True), name=name)


# --------------------------------------------------------------------------- split


def piece_of(name: str) -> str:
    """The piece a file belongs to: its BWV movement number ('bach/bwv18.5-lz.mxl' -> 'bwv18.5')."""
    stem = re.sub(r"\.(mxl|xml)$", "", name.rsplit("/", 1)[-1]).split("-")[0]
    return SAME_CHORALE.get(stem, stem)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"music split must be one of {SPLITS}, got {split!r}")


@functools.cache
def _split_of_files() -> dict[str, str]:
    files = chorale_files()
    pieces = sorted({piece_of(f) for f in files})
    order = np.random.default_rng(SPLIT_SEED).permutation(len(pieces))
    n_train = round(FRACTIONS[0] * len(pieces))
    n_valid = round(FRACTIONS[1] * len(pieces))
    split_of_piece = {pieces[i]: ("train" if k < n_train else "valid" if k < n_train + n_valid else "test")
                      for k, i in enumerate(order)}
    return {f: split_of_piece[piece_of(f)] for f in files}


def split_files(split: str) -> list[str]:
    """The files of 'train', 'valid' or 'test', sorted. Fast: parses nothing."""
    _check_split(split)
    return [f for f, s in _split_of_files().items() if s == split]


def split_counts() -> dict[str, dict[str, int]]:
    """{'files'|'pieces': {split: count}} of the fixed split."""
    return {"files": {s: len(split_files(s)) for s in SPLITS},
            "pieces": {s: len({piece_of(f) for f in split_files(s)}) for s in SPLITS}}


# --------------------------------------------------------------------------- cache


def cache_path(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir is None:
        from rnnlab.cache import cache_dir as default

        cache_dir = default()
    version = _music21().__version__
    return Path(cache_dir).expanduser() / f"music21_bach_chorales-m21_{version}-v{PIPELINE_VERSION}.npz"


def build_cache(path: str | os.PathLike, files: Sequence[str] | None = None) -> None:
    """Parse ``files`` (default: every chorale file) into one .npz at ``path``, written atomically."""
    m21 = _music21()
    files = chorale_files() if files is None else list(files)
    names, rolls, skipped, reasons = [], [], [], []
    t0 = time.perf_counter()
    for i, name in enumerate(files, 1):
        try:
            rolls.append(parse_chorale(name))
            names.append(name)
        except NotAChorale as e:
            skipped.append(name)
            reasons.append(str(e))
            print(f"rnnlab.data.music: skipped {e}", file=sys.stderr, flush=True)
        if i % 25 == 0 or i == len(files):
            elapsed = time.perf_counter() - t0
            print(f"rnnlab.data.music: {i}/{len(files)} chorales parsed, {elapsed:.0f} s, "
                  f"about {elapsed / i * (len(files) - i):.0f} s left", file=sys.stderr, flush=True)
    if not rolls:
        raise RuntimeError(f"no chorale could be read from {len(files)} files (skipped: {reasons[:3]})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "names": np.array(names), "lengths": np.array([len(r) for r in rolls], np.int64),
        "rolls_SxD": np.concatenate(rolls), "skipped": np.array(skipped, dtype=str),
        "skipped_reasons": np.array(reasons, dtype=str), "music21_version": np.array(m21.__version__),
        "pipeline_version": np.array(PIPELINE_VERSION), "build_seconds": np.array(time.perf_counter() - t0),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)  # readers see the old file or the whole new one, never half of it
    except BaseException:
        os.unlink(tmp)
        raise


@functools.cache
def read_cache(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str], float]:
    """({file: roll_TxD}, {skipped file: reason}, seconds the build took) of a cache file."""
    with np.load(path, allow_pickle=False) as z:
        if str(z["music21_version"]) != _music21().__version__ or int(z["pipeline_version"]) != PIPELINE_VERSION:
            raise RuntimeError(f"{path} was built by another music21 or pipeline version; delete it to rebuild")
        rolls = np.split(z["rolls_SxD"], np.cumsum(z["lengths"])[:-1])
        pieces = dict(zip(z["names"].tolist(), rolls, strict=True))
        return pieces, dict(zip(z["skipped"].tolist(), z["skipped_reasons"].tolist(), strict=True)), float(
            z["build_seconds"])


def build_once(path: Path, build=None) -> None:
    """``build(path)`` (default ``build_cache``) unless ``path`` exists, under a file lock: of
    several processes that find no cache (a sweep's first trials), one builds, the others
    wait for it and then read its file."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            print(f"rnnlab.data.music: building {path} (once; under a minute)", file=sys.stderr, flush=True)
            (build or build_cache)(path)


def _pieces(cache_dir) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    path = cache_path(cache_dir)
    build_once(path)
    pieces, skipped, _ = read_cache(path)
    missing = [f for f in _split_of_files() if f not in pieces and f not in skipped]
    if missing:
        raise RuntimeError(f"{path} lacks {len(missing)} chorale files (e.g. {missing[:3]}); delete it to rebuild")
    return pieces, skipped


def skipped_files(cache_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """{file: reason} of the files the cache build skipped."""
    return _pieces(cache_dir)[1]


def load_split(split: str, *, cache_dir: str | os.PathLike | None = None) -> list[np.ndarray]:
    """The rolls (roll_TixD bool, D = 88) of 'train', 'valid' or 'test', in sorted file order.
    Builds the cache on first use (under a minute)."""
    _check_split(split)
    pieces, _ = _pieces(cache_dir)
    return [pieces[f] for f in split_files(split) if f in pieces]


# --------------------------------------------------------------------------- batches


def _fill(windows: Sequence[np.ndarray | None], length: int) -> RollBatch:
    """Time-major batch of windows (each W_i x D frames, W_i <= length + 1; None: an empty column)."""
    xs_TxBxD = np.zeros((length, len(windows), N_PITCHES), np.float32)
    targets_TxBxD = np.zeros_like(xs_TxBxD)
    mask_TxB = np.zeros((length, len(windows)), np.float32)
    for b, w in enumerate(windows):
        if w is None or len(w) < 2:
            continue
        steps = len(w) - 1
        xs_TxBxD[:steps, b] = w[:-1]
        targets_TxBxD[:steps, b] = w[1:]
        mask_TxB[:steps, b] = 1.0
    return RollBatch(xs_TxBxD, targets_TxBxD, mask_TxB)


def roll_batch(rolls: Sequence[np.ndarray], seed: int, step: int, *, batch_size: int,
               max_len: int | None = None) -> RollBatch:
    """Training batch ``step`` of the endless stream of per-epoch permutations of
    ``rolls`` (epoch e in the order drawn from (seed, e)), a pure function of
    (seed, step). With ``max_len``, each piece is a window of max_len + 1 frames
    (max_len steps) at a start drawn from (seed, step), and T = max_len; without,
    whole pieces and T = the longest piece of ``rolls`` less one (one shape)."""
    if seed < 0 or step < 0:
        raise ValueError(f"seed and step must be >= 0, got seed={seed}, step={step}")
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be >= 1 or None (whole pieces), got {max_len}")
    n = len(rolls)
    index_B = step * batch_size + np.arange(batch_size)
    epoch_B, pos_B = index_B // n, index_B % n
    pick_B = np.empty(batch_size, np.int64)
    for e in np.unique(epoch_B):
        perm = np.random.default_rng(np.random.SeedSequence([_TASK_ID, 0, int(seed), int(e)])).permutation(n)
        pick_B[epoch_B == e] = perm[pos_B[epoch_B == e]]
    if max_len is None:
        return _fill([rolls[i] for i in pick_B], max(len(r) for r in rolls) - 1)
    u_B = np.random.default_rng(np.random.SeedSequence([_TASK_ID, 1, int(seed), int(step)])).random(batch_size)
    windows = []
    for i, u in zip(pick_B, u_B, strict=True):
        start = int(u * max(len(rolls[i]) - max_len, 1))  # uniform over the len - max_len full windows
        windows.append(rolls[i][start:start + max_len + 1])
    return _fill(windows, max_len)


def roll_batches(rolls: Sequence[np.ndarray], *, batch_size: int) -> list[RollBatch]:
    """All of ``rolls``, whole pieces in the given order, batch_size at a time;
    every batch is padded to T = the longest piece less one and B = batch_size
    (the last batch's spare columns are all padding), so one program runs them all."""
    length = max(len(r) for r in rolls) - 1
    out = []
    for lo in range(0, len(rolls), batch_size):
        chunk = list(rolls[lo:lo + batch_size])
        out.append(_fill(chunk + [None] * (batch_size - len(chunk)), length))
    return out


def batch(seed: int, step: int, batch_size: int, max_len: int | None = None, *,
          cache_dir: str | os.PathLike | None = None) -> RollBatch:
    """Training batch ``step`` of the train split (``roll_batch``), pure in (seed, step)."""
    return roll_batch(load_split("train", cache_dir=cache_dir), seed, step, batch_size=batch_size, max_len=max_len)


def split_batches(split: str, batch_size: int, *, cache_dir: str | os.PathLike | None = None) -> list[RollBatch]:
    """The whole split, whole pieces in sorted file order (``roll_batches``), for evaluation."""
    return roll_batches(load_split(split, cache_dir=cache_dir), batch_size=batch_size)


def marginal_nll(*, cache_dir: str | os.PathLike | None = None) -> float:
    """The NLL per step (nats) of the best memoryless predictor on the training split: each
    pitch on with its frequency q over the training targets (frames 1..T-1), so
    sum_p -[q log q + (1 - q) log(1 - q)] (0 log 0 = 0). A model below it has learnt
    something from the past frames."""
    q = np.concatenate([r[1:] for r in load_split("train", cache_dir=cache_dir)]).astype(np.float64).mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(q > 0, q * np.log(q), 0.0) + np.where(q < 1, (1 - q) * np.log1p(-q), 0.0))
    return float(h.sum())


# --------------------------------------------------------------------------- loss


def piano_roll_nll(logits_TxBxD: jax.Array, targets_TxBxD: jax.Array, mask_TxB: jax.Array) -> jax.Array:
    """Negative log-likelihood per time step (nats) of independent Bernoulli
    outputs p = sigmoid(logits): the sum over the D pitches of
    -[y log p + (1 - y) log(1 - p)], averaged over the steps where mask is 1.
    Stable for any finite logits (log-sigmoid form, optax). Padding is excluded
    by ``where``, so its logits may be any finite values. To combine batches, weight each
    by ``sum(mask)``."""
    ce_TxB = optax.sigmoid_binary_cross_entropy(logits_TxBxD, targets_TxBxD).sum(-1)
    real_TxB = mask_TxB > 0
    return jnp.sum(jnp.where(real_TxB, ce_TxB, 0.0)) / jnp.sum(real_TxB, dtype=ce_TxB.dtype)


__all__ = [
    "FRACTIONS", "LOWEST_MIDI", "NOT_CHORALES", "N_PITCHES", "PIPELINE_VERSION", "SAME_CHORALE", "SPLITS",
    "SPLIT_SEED", "VOICES", "NotAChorale", "RollBatch", "batch", "build_cache", "build_once", "cache_path", "chorale_files",
    "load_split", "marginal_nll", "parse_chorale", "read_cache", "piano_roll", "piano_roll_nll", "piece_of", "roll_batch", "roll_batches",
    "skipped_files", "split_batches", "split_counts", "split_files",
]
