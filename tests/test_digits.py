"""Sequential digits (rnnlab.data.digits): the fixed split partitions sklearn's
1,797 images, sequences read the 8x8 image pixel by pixel (or row by row) as
sklearn's ``images`` lay it out, batches are pure in (seed, step) and visit
each training example once per epoch, and the sequence task evaluates on
the whole valid/test split."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from sklearn.datasets import load_digits

from rnnlab.data import digits
from rnnlab.tasks import sequence

SK = load_digits()


def _row_of(image_64: np.ndarray) -> int:
    """Index in sklearn's data of an image given as 64 values in [0, 1]."""
    hits = np.flatnonzero(np.all(SK.data / 16.0 == image_64.astype(np.float64), axis=1))
    assert len(hits) >= 1
    return int(hits[0])


def test_split_partitions_the_dataset():
    sizes = {s: digits.split_size(s) for s in ("train", "valid", "test")}
    assert sizes == {"train": 1257, "valid": 180, "test": 360} and sum(sizes.values()) == len(SK.target)
    # as multisets of (image, label), the three splits together are sklearn's data
    rows = []
    for split in ("train", "valid", "test"):
        b = digits.digits_split(split)
        images_Sx64 = b.xs_TxBxD[:, :, 0].T
        rows += [tuple(np.round(im * 16).astype(int)) + (int(y),) for im, y in zip(images_Sx64, b.targets_TxB[-1], strict=True)]
    reference = [tuple(d.astype(int)) + (int(y),) for d, y in zip(SK.data, SK.target, strict=True)]
    assert sorted(rows) == sorted(reference)


@pytest.mark.parametrize("order", ["pixel", "row"])
def test_sequence_layout_matches_sklearn_images(order):
    b = digits.digits_split("test", order=order)
    length, d = (64, 1) if order == "pixel" else (8, 8)
    assert b.xs_TxBxD.shape == (length, 360, d) and b.xs_TxBxD.dtype == np.float32
    assert np.all(b.mask_TxB[:-1] == 0) and np.all(b.mask_TxB[-1] == 1)
    pixel = digits.digits_split("test", order="pixel")
    for i in (0, 17, 359):
        k = _row_of(pixel.xs_TxBxD[:, i, 0])
        image_8x8 = SK.images[k] / 16.0  # sklearn's own 8x8 layout: rows then columns
        assert b.targets_TxB[-1, i] == SK.target[k]
        for t in range(length):
            expected = image_8x8[t // 8, t % 8] if order == "pixel" else image_8x8[t]
            np.testing.assert_allclose(b.xs_TxBxD[t, i].ravel(), np.ravel(expected), rtol=0, atol=1e-7)


def test_batches_pure_and_one_pass_per_epoch():
    a, b = digits.digits_batch(3, 5, batch_size=16), digits.digits_batch(3, 5, batch_size=16)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    c = digits.digits_batch(4, 5, batch_size=16)
    assert not np.array_equal(a.xs_TxBxD, c.xs_TxBxD)
    # batch 419 divides the 1257 training examples: steps 0..2 are one epoch, a permutation of the split
    epoch = [digits.digits_batch(7, s, batch_size=419) for s in range(3)]
    seen = np.concatenate([e.xs_TxBxD[:, :, 0].T for e in epoch])
    train = digits.digits_split("train").xs_TxBxD[:, :, 0].T
    assert sorted(map(tuple, seen)) == sorted(map(tuple, train))
    # a batch across the epoch boundary: the tail of epoch 0 then the head of epoch 1
    whole0 = digits.digits_batch(7, 0, batch_size=1257).xs_TxBxD
    whole1 = digits.digits_batch(7, 1, batch_size=1257).xs_TxBxD
    across = digits.digits_batch(7, 1, batch_size=1000).xs_TxBxD
    np.testing.assert_array_equal(across[:, :257], whole0[:, 1000:])
    np.testing.assert_array_equal(across[:, 257:], whole1[:, :743])
    assert not np.array_equal(whole0, whole1)  # each epoch its own order


def test_baseline_is_the_class_prior_entropy():
    counts = np.bincount(digits.digits_split("train").targets_TxB[-1], minlength=10)
    assert digits.digits_baseline() == pytest.approx(stats.entropy(counts / counts.sum()), rel=1e-12)
    assert abs(digits.digits_baseline() - math.log(10)) < 0.01


def test_task_spec_and_evaluation_on_the_whole_split():
    import ml_collections

    from experiments import gradient_flow as gf

    c = gf.get_config("smoke")
    c.unlock()
    c.task.update(name="digits", length=8)
    c.lock()
    model, spec = sequence.build(c)
    assert (spec.d_in, spec.d_out, spec.length, spec.loss, spec.readout) == (8, 10, 8, "ce", "last")
    params = model.init(jax.random.key(0))
    got = sequence.evaluate(model, params, c, spec, "test")
    # reference: the model applied to sklearn's test images by hand, mean CE and accuracy over all 360
    b = digits.digits_split("test", order="row")
    logits_BxO = np.asarray(model.apply(params, jnp.asarray(b.xs_TxBxD))[-1], np.float64)
    labels_B = b.targets_TxB[-1]
    log_p = logits_BxO - np.log(np.sum(np.exp(logits_BxO - logits_BxO.max(1, keepdims=True)), 1, keepdims=True)) \
        - logits_BxO.max(1, keepdims=True)
    assert got["loss"] == pytest.approx(-np.mean(log_p[np.arange(360), labels_B]), rel=1e-5)
    assert got["accuracy"] == pytest.approx(np.mean(np.argmax(logits_BxO, 1) == labels_B), abs=1e-9)
    with pytest.raises(ValueError, match="64 .pixel by pixel. or 8"):
        sequence.task_spec(ml_collections.ConfigDict({"name": "digits", "length": 10}))


def test_the_permuted_variant_reads_the_pixels_in_one_fixed_permutation():
    """'permuted' (task permuted_digits): step t of every image is pixel perm[t] of sklearn's
    image, the same permutation for every image, split and call, and not the identity."""
    import ml_collections

    from rnnlab.tasks import sequence

    perm = digits.permutation()
    assert sorted(perm) == list(range(64)) and (perm != np.arange(64)).sum() > 50
    pixel, permuted = digits.digits_split("test", order="pixel"), digits.digits_split("test", order="permuted")
    np.testing.assert_array_equal(permuted.xs_TxBxD, pixel.xs_TxBxD[perm])
    np.testing.assert_array_equal(permuted.targets_TxB, pixel.targets_TxB)
    a, b = digits.digits_batch(3, 5, batch_size=16, order="permuted"), digits.digits_batch(3, 5, batch_size=16)
    np.testing.assert_array_equal(a.xs_TxBxD, b.xs_TxBxD[perm])
    spec = sequence.task_spec(ml_collections.ConfigDict(dict(name="permuted_digits", length=64)))
    np.testing.assert_array_equal(spec.split("test")[0].xs_TxBxD, permuted.xs_TxBxD)
    with pytest.raises(ValueError, match="task.length must be 64"):
        sequence.task_spec(ml_collections.ConfigDict(dict(name="permuted_digits", length=8)))
