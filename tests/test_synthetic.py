"""Synthetic tasks: shapes, purity in (seed, step), structure and baselines."""

import math

import numpy as np
import pytest

from rnnlab.data import synthetic

SMALL = {
    "adding": dict(batch_size=4, length=30),
    "copy": dict(batch_size=4, delay=15),
    "temporal_order": dict(batch_size=4, length=100),
    "selective_copy": dict(batch_size=4, length=40, n_copy=6, n_symbols=5),
    "mqar": dict(batch_size=4, n_pairs=8, n_symbols=16),
}


@pytest.mark.parametrize("task", sorted(SMALL))
def test_batches_are_a_pure_function_of_seed_and_step(task):
    fn, kw = synthetic.TASKS[task], SMALL[task]
    a, again = fn(0, 5, **kw), fn(0, 5, **kw)
    for x, y in zip(a, again, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.xs_TxBxD, fn(0, 6, **kw).xs_TxBxD)
    assert not np.array_equal(a.xs_TxBxD, fn(1, 5, **kw).xs_TxBxD)


@pytest.mark.parametrize(
    "task, shape_x, target_dtype",
    [("adding", (30, 4, 2), np.float32), ("copy", (35, 4, 10), np.int32), ("temporal_order", (100, 4, 8), np.int32),
     ("selective_copy", (46, 4, 7), np.int32), ("mqar", (24, 4, 32), np.int32)],
)
def test_shapes_and_dtypes(task, shape_x, target_dtype):
    batch = synthetic.TASKS[task](3, 0, **SMALL[task])
    assert batch.xs_TxBxD.shape == shape_x and batch.xs_TxBxD.dtype == np.float32
    assert batch.targets_TxB.shape == shape_x[:2] and batch.targets_TxB.dtype == target_dtype
    assert batch.mask_TxB.shape == shape_x[:2] and batch.mask_TxB.dtype == np.float32


def test_adding_problem_markers_and_targets():
    length = 31
    b = synthetic.adding_problem(0, 0, batch_size=500, length=length)
    values, marker = b.xs_TxBxD[..., 0], b.xs_TxBxD[..., 1]
    assert np.all((values >= 0) & (values < 1))
    assert set(np.unique(marker)) == {0.0, 1.0}
    np.testing.assert_array_equal(marker[: length // 2].sum(0), 1.0)  # one in the first half
    np.testing.assert_array_equal(marker[length // 2 :].sum(0), 1.0)  # one in the second half
    np.testing.assert_allclose(b.targets_TxB[-1], (values * marker).sum(0), rtol=1e-6)
    np.testing.assert_array_equal(b.mask_TxB[-1], 1.0)
    assert b.mask_TxB[:-1].sum() == 0


def test_adding_problem_baseline_predicting_one():
    b = synthetic.adding_problem(1, 0, batch_size=20_000, length=10)
    mse = np.sum(b.mask_TxB * (1.0 - b.targets_TxB) ** 2) / np.sum(b.mask_TxB)
    assert abs(mse - 0.167) < 0.01
    assert abs(synthetic.adding_baseline() - 1 / 6) < 1e-12
    assert abs(mse - synthetic.adding_baseline()) < 0.01


def test_copy_memory_structure():
    delay, n_copy = 15, 10
    b = synthetic.copy_memory(0, 0, batch_size=64, delay=delay)
    tokens = b.xs_TxBxD.argmax(-1)
    np.testing.assert_array_equal(b.xs_TxBxD.sum(-1), 1.0)  # one-hot
    data = tokens[:n_copy]
    assert data.min() >= 1 and data.max() <= 8
    np.testing.assert_array_equal(tokens[n_copy + delay - 1], 9)  # the delimiter
    rest = np.delete(tokens[n_copy:], delay - 1, axis=0)
    np.testing.assert_array_equal(rest, 0)  # blanks: delay - 1 before, n_copy after the delimiter
    np.testing.assert_array_equal(b.targets_TxB[-n_copy:], data)
    np.testing.assert_array_equal(b.targets_TxB[:-n_copy], 0)
    np.testing.assert_array_equal(b.mask_TxB, 1.0)


@pytest.mark.parametrize("delay", [1, 15, 100])
def test_copy_memory_baseline_strategy_achieves_the_formula(delay):
    n_copy, n_symbols = 10, 8
    b = synthetic.copy_memory(2, 3, batch_size=32, delay=delay)
    length = delay + 2 * n_copy
    # memoryless: blank with certainty until the last n_copy steps, then uniform over 1..8
    probs_TxV = np.zeros((length, n_symbols + 2))
    probs_TxV[:-n_copy, 0] = 1.0
    probs_TxV[-n_copy:, 1 : n_symbols + 1] = 1.0 / n_symbols
    p_TxB = probs_TxV[np.arange(length)[:, None], b.targets_TxB]
    ce = np.sum(b.mask_TxB * -np.log(p_TxB)) / np.sum(b.mask_TxB)
    expected = 10 * math.log(8) / (delay + 20)
    np.testing.assert_allclose(ce, expected, rtol=1e-12)
    np.testing.assert_allclose(synthetic.copy_memory_baseline(delay), expected, rtol=1e-12)


def test_temporal_order_structure_and_classes():
    length = 100
    b = synthetic.temporal_order(0, 0, batch_size=4000, length=length)
    tokens = b.xs_TxBxD.argmax(-1)
    sym = synthetic.TEMPORAL_ORDER_SYMBOLS
    assert np.all(tokens[0] == sym.index("E")) and np.all(tokens[-1] == sym.index("B"))
    relevant = (tokens == sym.index("X")) | (tokens == sym.index("Y"))
    np.testing.assert_array_equal(relevant.sum(0), 2)
    t1, t2 = np.nonzero(relevant[:50].T)[1], 50 + np.nonzero(relevant[50:].T)[1]
    assert t1.min() >= 10 and t1.max() <= 20 and t2.min() >= 50 and t2.max() <= 60
    cols = np.arange(tokens.shape[1])
    first_is_y = tokens[t1, cols] == sym.index("Y")
    second_is_y = tokens[t2, cols] == sym.index("Y")
    np.testing.assert_array_equal(b.targets_TxB[-1], 2 * first_is_y + second_is_y)
    assert np.all(tokens[1:-1][~relevant[1:-1]] < 4)  # distractors a..d elsewhere
    counts = np.bincount(b.targets_TxB[-1], minlength=4) / tokens.shape[1]
    np.testing.assert_allclose(counts, 0.25, atol=0.03)
    np.testing.assert_array_equal(b.mask_TxB[-1], 1.0)
    assert b.mask_TxB[:-1].sum() == 0
    assert abs(synthetic.temporal_order_baseline() - math.log(4)) < 1e-12


def _ce_and_accuracy(logits_TxBxC, batch):
    """Masked mean cross-entropy and accuracy, written out in numpy."""
    z = logits_TxBxC - logits_TxBxC.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, batch.targets_TxB[..., None], -1)[..., 0]
    m = batch.mask_TxB
    correct = (logits_TxBxC.argmax(-1) == batch.targets_TxB)
    return float((nll * m).sum() / m.sum()), float((correct * m).sum() / m.sum()), int(m.sum())


def _oracle_selective_copy(batch, n_symbols):
    """The answer read off the inputs: the non-blank symbols of the region, in order."""
    tokens = batch.xs_TxBxD.argmax(-1)
    n_copy = int(batch.mask_TxB[:, 0].sum())
    logits = np.zeros(batch.targets_TxB.shape + (n_symbols,))
    for b in range(tokens.shape[1]):
        seq = tokens[: tokens.shape[0] - n_copy, b]
        symbols = seq[(seq >= 1) & (seq <= n_symbols)] - 1
        logits[tokens.shape[0] - n_copy:, b, :] = np.eye(n_symbols)[symbols] * 10
    return logits


def _oracle_mqar(batch, n_symbols):
    """The answer read off the inputs: each query's value from the pairs before it."""
    tokens = batch.xs_TxBxD.argmax(-1)
    n_pairs = tokens.shape[0] // 3
    logits = np.zeros(batch.targets_TxB.shape + (n_symbols,))
    for b in range(tokens.shape[1]):
        table = {int(tokens[2 * i, b]): int(tokens[2 * i + 1, b]) - n_symbols for i in range(n_pairs)}
        for t in range(2 * n_pairs, 3 * n_pairs):
            logits[t, b, table[int(tokens[t, b])]] = 10
    return logits


@pytest.mark.parametrize("task", ["selective_copy", "mqar"])
def test_recall_tasks_oracle_is_perfect_and_chance_scores_the_baseline(task):
    """Known answers: the generator's own answer, read back from the inputs, scores accuracy 1;
    uniform logits score exactly the baseline cross-entropy, and the accuracy of a fixed guess
    (class 0) is 1/n_symbols within two standard errors."""
    n_symbols = 8
    kw = (dict(length=60, n_copy=10, n_symbols=n_symbols) if task == "selective_copy"
          else dict(n_pairs=6, n_symbols=n_symbols))
    batch = synthetic.TASKS[task](0, 3, batch_size=400, **kw)
    oracle = (_oracle_selective_copy if task == "selective_copy" else _oracle_mqar)(batch, n_symbols)
    _, acc, _ = _ce_and_accuracy(oracle, batch)
    assert acc == 1.0
    baseline = (synthetic.selective_copy_baseline if task == "selective_copy" else synthetic.mqar_baseline)(n_symbols)
    ce, acc, n = _ce_and_accuracy(np.zeros(batch.targets_TxB.shape + (n_symbols,)), batch)
    assert ce == pytest.approx(baseline, rel=1e-12) and baseline == pytest.approx(math.log(n_symbols))
    p = 1 / n_symbols
    assert abs(acc - p) < 2 * math.sqrt(p * (1 - p) / n)


def test_selective_copy_positions_vary_and_mqar_keys_are_distinct():
    b = synthetic.selective_copy(1, 0, batch_size=50, length=30, n_copy=5, n_symbols=4)
    tokens = b.xs_TxBxD.argmax(-1)
    where = [tuple(np.flatnonzero((tokens[:30, i] >= 1) & (tokens[:30, i] <= 4))) for i in range(50)]
    assert all(len(w) == 5 for w in where) and len(set(where)) > 40  # positions differ between sequences
    assert np.all(tokens[30:] == 5) and np.all(b.mask_TxB[:30] == 0) and np.all(b.mask_TxB[30:] == 1)
    m = synthetic.mqar(1, 0, batch_size=50, n_pairs=10, n_symbols=12)
    keys = m.xs_TxBxD.argmax(-1)[0:20:2]
    assert all(len(set(keys[:, i])) == 10 for i in range(50)) and keys.max() < 12
    with pytest.raises(ValueError, match="n_pairs <= n_symbols"):
        synthetic.mqar(0, 0, batch_size=1, n_pairs=20, n_symbols=12)
    with pytest.raises(ValueError, match="use length >= n_copy"):
        synthetic.selective_copy(0, 0, batch_size=1, length=3, n_copy=5)


@pytest.mark.parametrize("name, length, n_copy, n_symbols", [("selective_copy", 20, 4, 6), ("mqar", 5, 1, 9)])
def test_the_sequence_task_reads_the_recall_tasks_from_a_config(name, length, n_copy, n_symbols):
    import ml_collections

    from rnnlab.tasks import sequence

    task = ml_collections.ConfigDict(dict(name=name, length=length, n_copy=n_copy, n_symbols=n_symbols))
    spec = sequence.task_spec(task)
    b = spec.batch(0, 0, 3)
    assert b.xs_TxBxD.shape == (spec.length, 3, spec.d_in) and spec.loss == "ce" and spec.readout == "all"
    assert b.targets_TxB.max() < spec.d_out and spec.baseline == pytest.approx(math.log(n_symbols))


@pytest.mark.slow
def test_mqar_accuracy_of_an_lstm_falls_as_pairs_grow_at_a_fixed_state_size(tmp_path):
    """Zoology's finding (Arora et al. 2023, Fig. 2) at a small scale: one LSTM of 16 units
    (a fixed state), trained alike on 2, 4 and 8 key-value pairs over 16 symbols, recalls
    less as the pairs grow; each is above chance (1/16) by far more than two standard errors."""
    from experiments import lstm_vs_gru as base
    from rnnlab.tasks import sequence

    acc = {}
    for p in (2, 4, 8):
        c = base.base_config()
        base._set_task(c, "smoke")
        c.task.update(name="mqar", length=p, n_symbols=16, batch_size=32, eval_batches=2, eval_batch_size=250)
        c.model.update(cell="lstm", d_hidden=16)
        c.optim.lr = 1e-2
        c.train.update(num_steps=600, log_every=600, eval_every=600, checkpoint_every=600)
        acc[p] = sequence.train_and_evaluate(c, str(tmp_path / f"p{p}"))["test_accuracy"]
    n = {p: 500 * p for p in acc}  # queries scored: 2 batches of 250 sequences, p queries each
    se = {p: math.sqrt(a * (1 - a) / n[p]) for p, a in acc.items()}
    assert acc[2] > acc[4] + 2 * (se[2] + se[4]) and acc[4] > acc[8] + 2 * (se[4] + se[8]), acc
    assert acc[8] > 1 / 16 + 2 * math.sqrt((1 / 16) * (15 / 16) / n[8]), acc
