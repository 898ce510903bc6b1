"""Sequential digit classification: scikit-learn's bundled 8x8 handwritten
digits (``sklearn.datasets.load_digits``: 1,797 images, 10 classes, pixel
values 0..16; UCI ML optical recognition of handwritten digits, test part),
read as a sequence, the small offline cousin of pixel-by-pixel MNIST
(Le et al. 2015):

    'pixel' (T = 64)  one pixel per step, row-major, 1 feature
    'row'   (T = 8)   one row per step, 8 features

The class is read out at the last step. The split is fixed (a permutation
drawn once from ``SPLIT_SEED``, the same on every machine): 1,257 train, 180
valid, 360 test. Training batches are a pure function of (seed, step): epoch
e visits the training set in the order of a permutation drawn from (seed, e),
so resuming at step s reproduces the same batches. Arrays as in
``rnnlab.data.synthetic`` (time-major ``Batch``, mask 1.0 at the last step).
"""

from __future__ import annotations

import functools

import numpy as np

from rnnlab.data.synthetic import Batch

ORDERS = {"pixel": 64, "row": 8, "permuted": 64}  # order -> sequence length T
SPLIT_SEED = 0
PERMUTATION_SEED = 1  # the fixed pixel order of 'permuted' (as permuted MNIST: one permutation for every image)
N_VALID, N_TEST = 180, 360
N_CLASSES = 10
_TASK_ID = 4  # folded into every seed, as rnnlab.data.synthetic does for its tasks


@functools.cache
def _splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train'|'valid'|'test': (images_Sx64 float32 in [0, 1], labels_S int32)}. ~20 ms, cached."""
    from sklearn.datasets import load_digits  # ships with scikit-learn: no download

    d = load_digits()
    images_Sx64 = (d.data / 16.0).astype(np.float32)
    labels_S = d.target.astype(np.int32)
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(labels_S))
    parts = {"test": perm[:N_TEST], "valid": perm[N_TEST:N_TEST + N_VALID], "train": perm[N_TEST + N_VALID:]}
    return {k: (images_Sx64[idx], labels_S[idx]) for k, idx in parts.items()}


def split_size(split: str) -> int:
    return len(_splits()[split][1])


def _as_sequences(images_Bx64: np.ndarray, labels_B: np.ndarray, order: str) -> Batch:
    if order not in ORDERS:
        raise ValueError(f"digits order must be one of {sorted(ORDERS)} (T = 64 or 8), got {order!r}")
    length = ORDERS[order]
    batch = len(labels_B)
    if order == "permuted":
        images_Bx64 = images_Bx64[:, permutation()]
    xs_BxTxD = images_Bx64.reshape(batch, length, 64 // length)
    xs_TxBxD = np.ascontiguousarray(xs_BxTxD.transpose(1, 0, 2))
    targets_TxB = np.zeros((length, batch), np.int32)
    targets_TxB[-1] = labels_B
    mask_TxB = np.zeros((length, batch), np.float32)
    mask_TxB[-1] = 1.0
    return Batch(xs_TxBxD, targets_TxB, mask_TxB)


def digits_batch(seed: int, step: int, *, batch_size: int, order: str = "pixel") -> Batch:
    """Training batch ``step``: examples step*B .. step*B + B - 1 of the endless
    stream of per-epoch permutations of the training split."""
    if seed < 0 or step < 0:
        raise ValueError(f"seed and step must be >= 0, got seed={seed}, step={step}")
    images, labels = _splits()["train"]
    n = len(labels)
    index_B = step * batch_size + np.arange(batch_size)
    epoch_B, pos_B = index_B // n, index_B % n
    rows = np.empty(batch_size, np.int64)
    for e in np.unique(epoch_B):  # at most two epochs meet in one batch (B <= n)
        perm = np.random.default_rng(np.random.SeedSequence([_TASK_ID, int(seed), int(e)])).permutation(n)
        rows[epoch_B == e] = perm[pos_B[epoch_B == e]]
    return _as_sequences(images[rows], labels[rows], order)


def digits_split(split: str, *, order: str = "pixel") -> Batch:
    """The whole 'train', 'valid' or 'test' split as one batch, in a fixed order."""
    if split not in ("train", "valid", "test"):
        raise ValueError(f"digits split must be 'train', 'valid' or 'test', got {split!r}")
    images, labels = _splits()[split]
    return _as_sequences(images, labels, order)


def digits_baseline() -> float:
    """Cross-entropy (nats) of the best memoryless predictor: the class
    frequencies of the training split (about log 10 = 2.303)."""
    counts = np.bincount(_splits()["train"][1], minlength=N_CLASSES)
    p = counts[counts > 0] / counts.sum()
    return float(-np.sum(p * np.log(p)))


@functools.cache
def permutation() -> np.ndarray:
    """The fixed order of the 64 pixels in 'permuted' (drawn once from PERMUTATION_SEED)."""
    return np.random.default_rng(PERMUTATION_SEED).permutation(64)


def order_for_length(length: int) -> str:
    """task.length 64 -> 'pixel', 8 -> 'row'."""
    by_length = {ORDERS["pixel"]: "pixel", ORDERS["row"]: "row"}
    if length not in by_length:
        raise ValueError(f"task.length for digits must be 64 (pixel by pixel) or 8 (row by row), got {length}")
    return by_length[length]


__all__ = ["ORDERS", "PERMUTATION_SEED", "digits_baseline", "digits_batch", "digits_split", "order_for_length", "permutation", "split_size"]
