"""Sequence classification sets that ship inside well-kept packages (no download),
for the cell report card: one class per sequence, read out at each sequence's last
step.

    'mnist1d'          MNIST-1D (Greydanus 2020, the ``mnist1d`` package): 10 digit
                       templates turned into 1-D signals of T = 40 by random padding,
                       translation, scaling, shear and noise, regenerated from the
                       package's own templates and default arguments (seed 42, 5,000
                       examples: its 4,000 / 1,000 train / test split). D = 1.
    'japanese_vowels'  Japanese Vowels (Kudo, Toyama & Shimbo 1999; UCI), 9 male
                       speakers uttering /ae/, 12 LPC cepstrum coefficients per frame,
                       7..29 frames: the classes are the speakers. Read with aeon's
                       loader from the ``.ts`` file inside its wheel (270 / 370 train /
                       test, the set's own split). D = 12, each channel standardised by
                       the train split's mean and deviation.

Validation is carved from each set's train split, never from its test split: a
fixed, class-stratified tenth (MNIST-1D) or sixth (Japanese Vowels, 5 of each
speaker's 30 utterances) drawn from ``SPLIT_SEED``. Training batches are a pure
function of (seed, step) (an epoch's permutation from (seed, epoch), as
``rnnlab.data.digits``). A batch is time-major, padded with zeros to the split's
longest sequence; ``mask_TxB`` is 1.0 at each sequence's last step only, where its
target stands (the padding after it cannot change a causal model's output there).

Use::

    from rnnlab.data import seqclass
    b = seqclass.batch("japanese_vowels", seed, step, batch_size=32)
    test = seqclass.split("japanese_vowels", "test")      # the whole split, one Batch
"""

from __future__ import annotations

import functools

import numpy as np

from rnnlab.data.synthetic import Batch

DATASETS = ("mnist1d", "japanese_vowels")
SPLITS = ("train", "valid", "test")
SPLIT_SEED = 0
_TASK_IDS = {"mnist1d": 9, "japanese_vowels": 10}  # folded into every seed (synthetic 1-3, 7, 8; digits 4; music 5)


def _check(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown sequence classification set {name!r}; choose one of {', '.join(DATASETS)}")


def _stratified_valid(labels: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of a class-stratified validation part of the train split (fixed seed)."""
    rng = np.random.default_rng(SPLIT_SEED)
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        out.append(rng.permutation(idx)[: round(fraction * len(idx))])
    return np.sort(np.concatenate(out))


def _mnist1d() -> tuple[list, np.ndarray, list, np.ndarray]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:
        raise ImportError("the 'mnist1d' set needs the mnist1d package: pip install mnist1d "
                          "(or pip install -e '.[card]')") from e
    d = make_dataset(get_dataset_args())  # regenerated from the templates in the package: no download
    to_seq = lambda xs: [x.astype(np.float32)[:, None] for x in xs]  # noqa: E731  T x 1
    return to_seq(d["x"]), d["y"].astype(np.int32), to_seq(d["x_test"]), d["y_test"].astype(np.int32)


def _japanese_vowels() -> tuple[list, np.ndarray, list, np.ndarray]:
    try:
        from aeon.datasets import load_japanese_vowels
    except ImportError as e:
        raise ImportError("the 'japanese_vowels' set needs aeon (its wheel ships the .ts file): pip install aeon "
                          "(or pip install -e '.[card]')") from e
    x_tr, y_tr = load_japanese_vowels(split="train")
    x_te, y_te = load_japanese_vowels(split="test")
    to_seq = lambda xs: [np.asarray(x, np.float32).T for x in xs]  # noqa: E731  aeon: channels x T -> T x 12
    labels = lambda y: np.asarray([int(v) - 1 for v in y], np.int32)  # noqa: E731  speakers '1'..'9' -> 0..8
    return to_seq(x_tr), labels(y_tr), to_seq(x_te), labels(y_te)


_VALID_FRACTION = {"mnist1d": 0.1, "japanese_vowels": 1 / 6}


@functools.cache
def _splits(name: str) -> dict[str, tuple[list, np.ndarray]]:
    _check(name)
    x_tr, y_tr, x_te, y_te = _mnist1d() if name == "mnist1d" else _japanese_vowels()
    valid = _stratified_valid(y_tr, _VALID_FRACTION[name])
    train = np.setdiff1d(np.arange(len(y_tr)), valid)
    parts = {"train": ([x_tr[i] for i in train], y_tr[train]), "valid": ([x_tr[i] for i in valid], y_tr[valid]),
             "test": (x_te, y_te)}
    if name == "japanese_vowels":  # standardise each channel by the train split's statistics
        frames = np.concatenate(parts["train"][0])
        mean, std = frames.mean(0), frames.std(0)
        parts = {k: ([(x - mean) / std for x in xs], y) for k, (xs, y) in parts.items()}
    return parts


def n_classes(name: str) -> int:
    return int(_splits(name)["train"][1].max()) + 1


def n_features(name: str) -> int:
    return int(_splits(name)["train"][0][0].shape[1])


def max_length(name: str) -> int:
    return max(len(x) for part in _splits(name).values() for x in part[0])


def _pad(xs: list, labels: np.ndarray, length: int) -> Batch:
    batch, d = len(xs), xs[0].shape[1]
    xs_TxBxD = np.zeros((length, batch, d), np.float32)
    targets_TxB = np.zeros((length, batch), np.int32)
    mask_TxB = np.zeros((length, batch), np.float32)
    for b, x in enumerate(xs):
        xs_TxBxD[: len(x), b] = x
        targets_TxB[len(x) - 1, b] = labels[b]
        mask_TxB[len(x) - 1, b] = 1.0
    return Batch(xs_TxBxD, targets_TxB, mask_TxB)


def batch(name: str, seed: int, step: int, *, batch_size: int) -> Batch:
    """Training batch ``step``: examples step*B .. step*B + B - 1 of the endless stream of
    per-epoch permutations of the train split, padded to the set's longest sequence."""
    if seed < 0 or step < 0:
        raise ValueError(f"seed and step must be >= 0, got seed={seed}, step={step}")
    xs, labels = _splits(name)["train"]
    n = len(labels)
    index_B = step * batch_size + np.arange(batch_size)
    epoch_B, pos_B = index_B // n, index_B % n
    rows = np.empty(batch_size, np.int64)
    for e in np.unique(epoch_B):
        perm = np.random.default_rng(np.random.SeedSequence([_TASK_IDS[name], int(seed), int(e)])).permutation(n)
        rows[epoch_B == e] = perm[pos_B[epoch_B == e]]
    return _pad([xs[r] for r in rows], labels[rows], max_length(name))


def split(name: str, which: str) -> Batch:
    """The whole 'train', 'valid' or 'test' split as one batch, in a fixed order."""
    if which not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {which!r}")
    xs, labels = _splits(name)[which]
    return _pad(xs, labels, max_length(name))


def split_size(name: str, which: str) -> int:
    return len(_splits(name)[which][1])


def baseline(name: str) -> float:
    """Cross-entropy (nats) of the best memoryless predictor: the train split's class frequencies."""
    counts = np.bincount(_splits(name)["train"][1])
    p = counts[counts > 0] / counts.sum()
    return float(-np.sum(p * np.log(p)))


__all__ = ["DATASETS", "baseline", "batch", "max_length", "n_classes", "n_features", "split", "split_size"]
