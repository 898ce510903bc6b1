"""Synthetic long-range tasks with known baselines: the adding problem, the
copying memory task (both in the form of Arjovsky et al. 2016), the temporal
order task (Hochreiter & Schmidhuber 1997, experiment 6a), selective copying
(Gu & Dao 2023) and multi-query associative recall (MQAR, Arora et al. 2023).

Every batch is a pure function of ``(seed, step)`` and the task's size
arguments: a numpy Generator is seeded by (task id, seed, step), so resuming at
step s reproduces the same batches, whatever came before, and two tasks with the
same seed draw independent streams.

Arrays are numpy, time-major (shape legend as in ``rnnlab.cells._common``)::

    xs_TxBxD    float32 inputs
    targets_TxB a target per step: float32 (adding) or int32 class ids
    mask_TxB    float32, 1.0 where the step's loss counts, else 0.0

A loss over a batch is ``sum(mask * loss_TxB) / sum(mask)``; each task's
``*_baseline`` is that loss for the best memoryless predictor.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = [
    "Batch", "TASKS", "TEMPORAL_ORDER_CLASSES", "TEMPORAL_ORDER_SYMBOLS",
    "adding_baseline", "adding_problem", "copy_memory", "copy_memory_baseline",
    "temporal_order", "temporal_order_baseline", "selective_copy", "selective_copy_baseline",
    "mqar", "mqar_baseline",
]


class Batch(NamedTuple):
    xs_TxBxD: np.ndarray
    targets_TxB: np.ndarray
    mask_TxB: np.ndarray


# Folded into every seed so tasks sharing a seed draw independent streams.
_TASK_IDS = {"adding": 1, "copy": 2, "temporal_order": 3, "selective_copy": 7, "mqar": 8}  # 4: digits, 5: music


def _rng(task: str, seed: int, step: int) -> np.random.Generator:
    if seed < 0 or step < 0:
        raise ValueError(f"seed and step must be >= 0, got seed={seed}, step={step}")
    return np.random.default_rng(np.random.SeedSequence([_TASK_IDS[task], int(seed), int(step)]))


def _last_step_mask(length: int, batch_size: int) -> np.ndarray:
    mask = np.zeros((length, batch_size), np.float32)
    mask[-1] = 1.0
    return mask


# --------------------------------------------------------------------------- adding problem


def adding_problem(seed: int, step: int, *, batch_size: int, length: int) -> Batch:
    """Adding problem, Arjovsky et al. (2016) form.

    xs_TxBx2: channel 0 values ~ U[0, 1); channel 1 a marker with exactly two
    1s, one uniformly in the first half [0, T//2) and one in the second half
    [T//2, T). Target: the sum of the two marked values, at the last step
    (``targets_TxB[-1]``; zeros elsewhere, where the mask is 0).
    """
    if length < 2:
        raise ValueError(f"length must be >= 2 (one marker per half), got {length}")
    rng = _rng("adding", seed, step)
    values_TxB = rng.random((length, batch_size), dtype=np.float32)
    half = length // 2
    first_B = rng.integers(0, half, batch_size)
    second_B = rng.integers(half, length, batch_size)
    marker_TxB = np.zeros((length, batch_size), np.float32)
    cols = np.arange(batch_size)
    marker_TxB[first_B, cols] = 1.0
    marker_TxB[second_B, cols] = 1.0
    targets_TxB = np.zeros((length, batch_size), np.float32)
    targets_TxB[-1] = values_TxB[first_B, cols] + values_TxB[second_B, cols]
    xs_TxBx2 = np.stack([values_TxB, marker_TxB], axis=-1)
    return Batch(xs_TxBx2, targets_TxB, _last_step_mask(length, batch_size))


def adding_baseline() -> float:
    """MSE of always predicting 1, the target's mean: Var(U1 + U2) = 2/12 = 1/6."""
    return 1.0 / 6.0


# --------------------------------------------------------------------------- copying memory


def copy_memory(
    seed: int, step: int, *, batch_size: int, delay: int, n_copy: int = 10, n_symbols: int = 8
) -> Batch:
    """Copying memory task, Arjovsky et al. (2016).

    Input tokens (length delay + 2 * n_copy): ``n_copy`` symbols drawn uniformly
    from 1..n_symbols, then ``delay - 1`` blanks (0), the delimiter (9), then
    ``n_copy`` blanks. Target tokens: blanks for the first delay + n_copy steps,
    then the ``n_copy`` symbols. xs is the one-hot of the input tokens over
    n_symbols + 2 classes (0 blank, 1..n_symbols, n_symbols + 1 delimiter; 10
    classes by default). Every step counts (cross-entropy averaged over all
    delay + 2 * n_copy steps, as in the paper).
    """
    if delay < 1:
        raise ValueError(f"delay must be >= 1 (the delimiter takes one step), got {delay}")
    if n_symbols < 1 or n_copy < 1:
        raise ValueError(f"n_symbols and n_copy must be >= 1, got {n_symbols}, {n_copy}")
    delimiter = n_symbols + 1  # 9 by default
    length = delay + 2 * n_copy
    rng = _rng("copy", seed, step)
    tokens_TxB = np.zeros((length, batch_size), np.int32)
    tokens_TxB[:n_copy] = rng.integers(1, n_symbols + 1, (n_copy, batch_size))  # the symbols to recall
    tokens_TxB[n_copy + delay - 1] = delimiter
    targets_TxB = np.zeros((length, batch_size), np.int32)
    targets_TxB[-n_copy:] = tokens_TxB[:n_copy]
    xs_TxBxD = np.eye(n_symbols + 2, dtype=np.float32)[tokens_TxB]
    return Batch(xs_TxBxD, targets_TxB, np.ones((length, batch_size), np.float32))


def copy_memory_baseline(delay: int, n_copy: int = 10, n_symbols: int = 8) -> float:
    """Cross-entropy (nats per step) of the memoryless strategy: blanks with
    certainty until the last n_copy steps, then uniform over the n_symbols:
    n_copy * log(n_symbols) / (delay + 2 * n_copy)."""
    return n_copy * math.log(n_symbols) / (delay + 2 * n_copy)


# --------------------------------------------------------------------------- temporal order


TEMPORAL_ORDER_SYMBOLS = ("a", "b", "c", "d", "B", "E", "X", "Y")  # one-hot index = position here
_DISTRACTORS = 4  # a, b, c, d
_B, _E, _X, _Y = 4, 5, 6, 7
TEMPORAL_ORDER_CLASSES = ("XX", "XY", "YX", "YY")  # H&S's Q, R, S, U


def temporal_order(seed: int, step: int, *, batch_size: int, length: int = 100) -> Batch:
    """Temporal order task, Hochreiter & Schmidhuber (1997), experiment 6a.

    A sequence starts with E, ends with the trigger B, and is otherwise random
    distractors from {a, b, c, d}, except at t1 and t2 where X or Y stands. The
    class (at the last step) is the order: XX=0, XY=1, YX=2, YY=3. As in the
    paper for length 100: t1 in [10, 20], t2 in [50, 60]; for other lengths the
    windows scale with it (t1 in [0.1T, 0.2T], t2 in [0.5T, 0.6T]). The paper
    draws each length in [100, 110]; here a batch has one fixed length.
    xs_TxBx8 one-hot over ``TEMPORAL_ORDER_SYMBOLS``.
    """
    if length < 10:
        raise ValueError(f"length must be >= 10, got {length}")
    rng = _rng("temporal_order", seed, step)
    tokens_TxB = rng.integers(0, _DISTRACTORS, (length, batch_size)).astype(np.int32)
    tokens_TxB[0], tokens_TxB[-1] = _E, _B
    t1_B = rng.integers(round(0.1 * length), round(0.2 * length) + 1, batch_size)
    t2_B = rng.integers(round(0.5 * length), round(0.6 * length) + 1, batch_size)
    is_y_2xB = rng.integers(0, 2, (2, batch_size))  # 0: X, 1: Y
    cols = np.arange(batch_size)
    tokens_TxB[t1_B, cols] = _X + is_y_2xB[0]
    tokens_TxB[t2_B, cols] = _X + is_y_2xB[1]
    targets_TxB = np.zeros((length, batch_size), np.int32)
    targets_TxB[-1] = 2 * is_y_2xB[0] + is_y_2xB[1]
    xs_TxBxD = np.eye(len(TEMPORAL_ORDER_SYMBOLS), dtype=np.float32)[tokens_TxB]
    return Batch(xs_TxBxD, targets_TxB, _last_step_mask(length, batch_size))


def temporal_order_baseline() -> float:
    """Cross-entropy of chance: the four classes are equally likely, log 4 nats."""
    return math.log(4.0)


# --------------------------------------------------------------------------- selective copying


def selective_copy(
    seed: int, step: int, *, batch_size: int, length: int, n_copy: int = 16, n_symbols: int = 16
) -> Batch:
    """Selective copying, Gu & Dao 2023 (Mamba, §3.1 and §4.1.1).

    A region of ``length`` steps holds ``n_copy`` symbols (uniform over 1..n_symbols)
    at random positions (distinct, different in every sequence) among blanks (0);
    then ``n_copy`` markers (n_symbols + 1), at which the model outputs the symbols
    in the order they came. Where they stand varies, so a time-invariant recurrence
    (a fixed convolution) cannot pick them out by position; the gate must look at
    the content. xs: one-hot over n_symbols + 2 tokens; targets at the markers:
    symbol - 1 (n_symbols classes); only the markers count. T = length + n_copy.
    """
    if n_copy < 1 or n_symbols < 1:
        raise ValueError(f"n_copy and n_symbols must be >= 1, got {n_copy}, {n_symbols}")
    if length < n_copy:
        raise ValueError(f"length {length} cannot hold n_copy={n_copy} symbols; use length >= n_copy")
    rng = _rng("selective_copy", seed, step)
    n_steps = length + n_copy
    tokens_TxB = np.zeros((n_steps, batch_size), np.int32)
    symbols_CxB = rng.integers(1, n_symbols + 1, (n_copy, batch_size))
    positions_CxB = np.sort(np.argsort(rng.random((length, batch_size)), axis=0)[:n_copy], axis=0)
    tokens_TxB[positions_CxB, np.arange(batch_size)] = symbols_CxB
    tokens_TxB[length:] = n_symbols + 1
    targets_TxB = np.zeros((n_steps, batch_size), np.int32)
    targets_TxB[length:] = symbols_CxB - 1
    mask_TxB = np.zeros((n_steps, batch_size), np.float32)
    mask_TxB[length:] = 1.0
    return Batch(np.eye(n_symbols + 2, dtype=np.float32)[tokens_TxB], targets_TxB, mask_TxB)


def selective_copy_baseline(n_symbols: int = 16) -> float:
    """Cross-entropy of chance at the markers: the symbols are uniform, log(n_symbols) nats
    (accuracy 1 / n_symbols)."""
    return math.log(n_symbols)


# --------------------------------------------------------------------------- associative recall


def mqar(seed: int, step: int, *, batch_size: int, n_pairs: int, n_symbols: int = 64) -> Batch:
    """Multi-query associative recall, MQAR (Arora et al. 2023, "Zoology", §3).

    ``n_pairs`` key-value pairs, k_1 v_1 k_2 v_2 ..., keys distinct (uniform over
    n_symbols key tokens, n_symbols >= n_pairs), values uniform over n_symbols value
    tokens; then every key once more, in a random order, as a query, at which the
    model outputs that key's value. As in Zoology, every key is queried, and the
    state must hold all n_pairs associations at once. xs: one-hot over 2 * n_symbols
    tokens (keys 0..n-1, values n..2n-1); targets at the queries: the value's index
    (n_symbols classes); only the queries count. T = 3 * n_pairs.
    """
    if n_pairs < 1 or n_symbols < n_pairs:
        raise ValueError(f"mqar needs 1 <= n_pairs <= n_symbols (distinct keys), got n_pairs={n_pairs}, "
                         f"n_symbols={n_symbols}")
    rng = _rng("mqar", seed, step)
    keys_PxB = np.argsort(rng.random((n_symbols, batch_size)), axis=0)[:n_pairs]
    values_PxB = rng.integers(0, n_symbols, (n_pairs, batch_size))
    order_PxB = np.argsort(rng.random((n_pairs, batch_size)), axis=0)
    cols = np.arange(batch_size)
    n_steps = 3 * n_pairs
    tokens_TxB = np.zeros((n_steps, batch_size), np.int32)
    tokens_TxB[0:2 * n_pairs:2] = keys_PxB
    tokens_TxB[1:2 * n_pairs:2] = n_symbols + values_PxB
    tokens_TxB[2 * n_pairs:] = keys_PxB[order_PxB, cols]
    targets_TxB = np.zeros((n_steps, batch_size), np.int32)
    targets_TxB[2 * n_pairs:] = values_PxB[order_PxB, cols]
    mask_TxB = np.zeros((n_steps, batch_size), np.float32)
    mask_TxB[2 * n_pairs:] = 1.0
    return Batch(np.eye(2 * n_symbols, dtype=np.float32)[tokens_TxB], targets_TxB, mask_TxB)


def mqar_baseline(n_symbols: int = 64) -> float:
    """Cross-entropy of chance at the queries: values are uniform, log(n_symbols) nats."""
    return math.log(n_symbols)


TASKS = {"adding": adding_problem, "copy": copy_memory, "temporal_order": temporal_order,
         "selective_copy": selective_copy, "mqar": mqar}
