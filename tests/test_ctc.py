"""CTC: the loss against a brute-force sum over every alignment, padding
invariance, greedy decoding, prefix beam search against brute-force labelling
probabilities, LM fusion, error rates, vocabulary errors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnlab import ctc
from rnnlab.data.text import Vocab


def _labelling_probs(logits_TxV: np.ndarray) -> dict[tuple, float]:
    """P(labelling) for every labelling: enumerate all V^T paths over the extended
    alphabet, collapse each (merge repeats, drop blanks), sum path probabilities."""
    p_TxV = np.exp(ctc.log_softmax(logits_TxV))
    n_t, n_v = p_TxV.shape
    out: dict[tuple, float] = {}
    for path in itertools.product(range(n_v), repeat=n_t):
        prob = float(np.prod(p_TxV[np.arange(n_t), path]))
        key = ctc.collapse(path)
        out[key] = out.get(key, 0.0) + prob
    return out


def _collapse_reference(path):  # written out separately: a run of equal symbols -> one; then blanks out
    runs = [k for i, k in enumerate(path) if i == 0 or path[i - 1] != k]
    return tuple(k for k in runs if k != 0)


def test_ctc_loss_equals_brute_force_sum_over_alignments():
    rng = np.random.default_rng(0)
    n_b, n_t, n_v = 4, 5, 3
    logits = rng.normal(size=(n_b, n_t, n_v)) * 2.0
    lengths = np.array([5, 4, 5, 3])
    labels = np.array([[1, 2, 0], [1, 1, 0], [2, 1, 2], [2, 0, 0]])
    label_lengths = np.array([2, 2, 3, 1])
    got = np.asarray(jax.jit(ctc.ctc_loss)(jnp.asarray(logits), lengths, jnp.asarray(labels), label_lengths))
    for b in range(n_b):
        probs = _labelling_probs(logits[b, :lengths[b]])
        want = -np.log(probs.get(tuple(labels[b, :label_lengths[b]]), 0.0))
        np.testing.assert_allclose(got[b], want, rtol=1e-9)
    # the alignments of all labellings sum to one: a check of the brute force itself
    assert abs(sum(_labelling_probs(logits[0]).values()) - 1.0) < 1e-12


def test_junk_frames_and_labels_past_the_lengths_change_neither_loss_nor_gradients():
    rng = np.random.default_rng(1)
    n_b, n_t, n_v = 3, 6, 4
    logits = jnp.asarray(rng.normal(size=(n_b, n_t, n_v)))
    lengths = jnp.asarray([6, 4, 5])
    labels = jnp.asarray([[1, 2, 3], [3, 3, 0], [2, 0, 0]])
    label_lengths = jnp.asarray([3, 2, 1])
    junk = jnp.asarray(rng.normal(size=(n_b, 7, n_v)) * 100.0)
    padded = jnp.concatenate([logits, junk], axis=1)
    padded = padded.at[1, 4:6].set(1e4)  # also junk inside the array, past utterance 1's length
    padded_labels = jnp.concatenate([labels, jnp.asarray([[5, 5], [7, 7], [9, 9]])], axis=1)
    padded_labels = padded_labels.at[2, 1:3].set(3)

    def total(lg, lb):
        return jnp.sum(ctc.ctc_loss(lg, lengths, lb, label_lengths))

    grad_fn = jax.jit(jax.value_and_grad(total))
    l0, g0 = grad_fn(logits.at[1, 4:6].set(0.0), labels)
    l1, g1 = grad_fn(padded, padded_labels)
    np.testing.assert_allclose(l1, l0, rtol=1e-12)
    np.testing.assert_allclose(g1[:, :n_t], g0, atol=1e-12)
    assert float(jnp.max(jnp.abs(g1[:, n_t:]))) == 0.0 and float(jnp.max(jnp.abs(g1[1, 4:6]))) == 0.0


def test_greedy_decoding_collapses_repeats_then_drops_blanks():
    def onehot(path, n_v=4):
        return np.eye(n_v)[path] * 5.0

    assert ctc.greedy_decode(onehot([1, 1, 0, 1, 2, 2, 0, 0, 2, 3])) == (1, 1, 2, 2, 3)
    assert ctc.greedy_decode(onehot([0, 0, 0])) == ()
    assert ctc.greedy_decode(onehot([3, 3, 3, 3])) == (3,)
    assert ctc.greedy_decode(onehot([1, 2, 1, 2, 3]), length=3) == (1, 2, 1)  # frames past length ignored
    rng = np.random.default_rng(2)
    for _ in range(50):
        path = rng.integers(0, 4, 12)
        assert ctc.collapse(path) == _collapse_reference(list(path))


def test_beam_width_one_equals_greedy_on_confident_frames():
    # Confident frames (best label p ~ 0.9), as a trained CTC model emits: the
    # single best prefix is the best path's labelling.
    rng = np.random.default_rng(3)
    for _ in range(100):
        n_t, n_v = rng.integers(3, 20), rng.integers(2, 6)
        logits = rng.normal(size=(n_t, n_v))
        logits[np.arange(n_t), rng.integers(0, n_v, n_t)] += 6.0
        assert ctc.prefix_beam_search(logits, beam_width=1) == ctc.greedy_decode(logits)


def test_wide_beam_finds_the_most_probable_labelling_where_greedy_does_not():
    # Two frames, blank 0.6 / 'a' 0.4 each: best path is blank-blank (''), p = 0.36,
    # but 'a' collects aa + a_ + _a = 0.16 + 0.24 + 0.24 = 0.64.
    logits = np.log(np.array([[0.6, 0.4], [0.6, 0.4]]))
    assert ctc.greedy_decode(logits) == ()
    assert ctc.prefix_beam_search(logits, beam_width=4) == (1,)
    probs = _labelling_probs(logits)
    assert probs[(1,)] == pytest.approx(0.64) and probs[()] == pytest.approx(0.36)
    # random small cases: a beam as wide as every prefix returns the brute-force argmax
    rng = np.random.default_rng(4)
    wins = 0
    for _ in range(40):
        lg = rng.normal(size=(5, 3)) * 1.5
        probs = _labelling_probs(lg)
        best = max(probs, key=probs.get)
        got = ctc.prefix_beam_search(lg, beam_width=64, prune=-np.inf)
        assert probs[got] == pytest.approx(probs[best], rel=1e-12)
        wins += probs[got] > probs.get(ctc.greedy_decode(lg), 0.0) + 1e-12
    assert wins > 0  # on some of these, greedy is strictly worse


def test_language_model_fusion_can_change_the_decision():
    # frames split evenly between labels 1 and 2: an LM that prefers 2 decides
    logits = np.log(np.array([[0.05, 0.48, 0.47], [0.9, 0.05, 0.05]]))
    assert ctc.prefix_beam_search(logits, beam_width=4) == (1,)

    def lm(prefix):
        return np.log(np.array([1.0, 0.1, 0.9]))

    assert ctc.prefix_beam_search(logits, beam_width=4, lm=lm, lm_weight=1.0) == (2,)


def test_rnn_language_model_adapter_gives_normalised_next_label_scores():
    from rnnlab.layers import Stack
    from rnnlab.models.lm import LM

    model = LM(vocab_size=6, d_embed=4, stack=Stack("lstm", 4, 8))
    params = model.init(jax.random.key(0))
    fn = ctc.lm_from_rnn(model, params, bos=0, label_to_lm=[0, 1, 2, 3, 4, 5])  # identity map; blank unused
    apply = jax.jit(lambda tokens: model.apply(params, tokens, model.initial_carries(1))[0])
    for prefix in [(), (2, 3)]:
        lp = fn(prefix)
        logits = np.asarray(apply(jnp.asarray([[0, *prefix]], jnp.int32)))
        want = ctc.log_softmax(logits[0, -1])  # numpy, float64
        np.testing.assert_allclose(lp[1:], want[1:], rtol=1e-5)


def test_error_rates_against_hand_counts():
    assert ctc.edit_distance("kitten", "sitting") == 3
    assert ctc.edit_distance([], [1, 2]) == 2 and ctc.edit_distance([1, 2, 3], [1, 3]) == 1
    r = ctc.error_rates(["1 2 3", "4 5"], ["1 3", "4 5"])
    assert r["wer"] == pytest.approx(1 / 5) and r["string_accuracy"] == 0.5
    r = ctc.error_rates(["one two"], ["one too"])
    assert r["wer"] == 0.5 and r["cer"] == pytest.approx(1 / 6)


def test_vocabulary_encodes_decodes_and_names_bad_characters():
    digits = Vocab.for_ctc("0123456789", spaced=True)
    assert digits.itos[ctc.BLANK] == digits.blank  # the vocabulary ids are the CTC labels
    np.testing.assert_array_equal(digits.encode("3 1 4"), [4, 2, 5])
    assert digits.decode([4, 2, 5]) == "3 1 4" and digits.num_labels == 11
    assert digits.decode([ctc.BLANK, 4, ctc.BLANK, 2]) == "3 1"  # the blank is no symbol
    with pytest.raises(ValueError, match=r"outside the vocabulary.*'x'"):
        digits.encode("3 x 4")
    chars = Vocab.for_ctc("abc ")
    assert chars.decode(chars.encode("ab c")) == "ab c"
    with pytest.raises(ValueError, match="'D'"):
        chars.encode("aD")
    with pytest.raises(ValueError, match="distinct"):
        Vocab.for_ctc("aa")


def test_ctc_vocabulary_saves_and_loads_and_a_language_model_vocab_json_is_unchanged(tmp_path):
    digits = Vocab.for_ctc("0123456789", spaced=True)
    digits.save(tmp_path / "digits.json")
    assert Vocab.load(tmp_path / "digits.json") == digits
    assert digits != Vocab(digits.itos, level="char", unk=None)  # blank and spaced are part of its identity
    # a vocab.json written before CTC shared the class (no 'blank'/'spaced' keys) loads as it was
    (tmp_path / "vocab.json").write_text('{"format": "rnnlab.vocab/1", "level": "word", "unk": "<unk>", '
                                         '"itos": ["<unk>", "<eos>", "the"]}')
    old = Vocab.load(tmp_path / "vocab.json")
    assert old == Vocab(["<unk>", "<eos>", "the"], level="word") and old.blank is None and not old.spaced
    assert set(old.to_json()) == {"format", "level", "unk", "itos"}  # its fingerprint is unchanged


@pytest.mark.parametrize("hyps, weights, want", [
    ([(1, 2, 3)], None, (1, 2, 3)),
    ([(1, 2, 3), (1, 2, 3), (1, 4, 3)], None, (1, 2, 3)),  # a substitution outvoted
    ([(1, 4, 3), (1, 2, 3), (1, 2, 3)], None, (1, 2, 3)),  # ... whichever system makes it
    ([(1, 2, 3), (1, 3), (1, 2, 3)], None, (1, 2, 3)),  # a deletion outvoted
    ([(1, 2, 3), (1, 3), (1, 3)], None, (1, 3)),  # a deletion by the majority wins
    ([(1, 3), (1, 2, 3), (1, 3)], None, (1, 3)),  # an insertion outvoted
    ([(1, 3), (1, 2, 3), (1, 2, 3)], None, (1, 2, 3)),  # a word the first system missed
    ([(5, 6), (7, 8), (9,)], None, (5, 6)),  # no agreement: the first system's words
    ([(1, 2), (1, 3)], None, (1, 2)),  # a tie goes to the earlier system
    ([(1, 2), (1, 3), (1, 3)], (3.0, 1.0, 1.0), (1, 2)),  # weights count
    ([(), (4,), (4,)], None, (4,)),
    ([(4, 4), (4,), (4, 4)], None, (4, 4)),  # repeated words are separate slots
])
def test_rover_votes_word_by_word(hyps, weights, want):
    assert ctc.rover(hyps, weights) == want


def test_rover_alignment_is_a_minimum_edit_alignment():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = tuple(rng.integers(0, 4, rng.integers(0, 7)))
        b = tuple(rng.integers(0, 4, rng.integers(0, 7)))
        pairs = ctc._align(a, b)
        assert [i for i, _ in pairs if i is not None] == list(range(len(a)))
        assert [j for _, j in pairs if j is not None] == list(range(len(b)))
        cost = sum(1 if i is None or j is None else int(a[i] != b[j]) for i, j in pairs)
        assert cost == ctc.edit_distance(a, b)


def test_best_path_counts_count_each_utterances_collapsed_best_path():
    """Against collapse of each utterance's argmax, written out: a label ending one
    utterance and starting the next is two emissions, not one run."""
    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(n, 5)) for n in (7, 1, 12, 4)]
    logits[1][0] = [0, 0, 0, 9, 0]  # the same label as the end of utterance 0 ...
    logits[0][-1] = [0, 0, 0, 9, 0]  # ... counted once in each
    for bias in (None, np.array([0.0, 0.5, -0.5, 0.2, 0.0])):
        want = np.zeros(5)
        for lo in logits:
            for lab in _collapse_reference(list(np.argmax(lo + (0 if bias is None else bias), -1))):
                want[lab] += 1
        np.testing.assert_array_equal(ctc.best_path_counts(logits, bias), want)
    assert ctc.best_path_counts(logits)[3] >= 2


def _biased_digits(rng, truth, shift):
    """One-digit utterances (labels 1..10) whose spike frame prefers the true label by
    a margin of ~1 over the rest, with ``shift`` added to every frame's logits: a
    model biased towards some labels (blank frames stay blank)."""
    out = []
    for lab in truth:
        lo = rng.normal(0.0, 0.4, (5, 11))
        lo[[0, 1, 3, 4], 0] += 6.0
        lo[2, lab] += 3.0
        out.append(lo + shift)
    return out


def test_prior_matching_undoes_a_label_bias_from_unlabelled_utterances():
    """A model that hears many labels as label 5 (its logits shifted by +2.6) and never
    emits label 3 (-1.5): the fitted biases, which never see the true labels, make it
    emit every label about equally often and read nearly every utterance right again;
    the blank's bias stays 0 and the others' mean 0."""
    rng = np.random.default_rng(1)
    truth = np.repeat(np.arange(1, 11), 60)
    shift = np.zeros(11)
    shift[5], shift[3] = 2.6, -1.5
    logits = _biased_digits(rng, truth, shift)

    def accuracy(bias):
        return np.mean([ctc.greedy_decode(lo + bias) == (t,) for lo, t in zip(logits, truth, strict=True)])

    assert accuracy(np.zeros(11)) < 0.8
    bias = ctc.fit_label_bias(logits)
    assert accuracy(bias) > 0.98
    counts = ctc.best_path_counts(logits, bias)[1:]
    assert counts.max() - counts.min() <= 0.1 * counts.mean()
    assert bias[0] == 0.0 and abs(bias[1:].mean()) < 1e-12
    assert bias[5] - np.median(bias[1:]) < -0.8 and bias[3] - np.median(bias[1:]) > 0.8  # undone enough to flip back
    # a known uneven prior: label 1 three times as frequent; matching the uniform one instead hurts
    uneven = np.concatenate([truth, np.repeat(1, 120)])
    logits = _biased_digits(rng, uneven, shift)
    truth = uneven
    prior = np.ones(10)
    prior[0] = 3.0
    assert accuracy(ctc.fit_label_bias(logits, prior)) > 0.98
    assert accuracy(ctc.fit_label_bias(logits)) < 0.95


def test_prior_matching_refuses_too_few_labels_and_a_bad_prior():
    logits = _biased_digits(np.random.default_rng(2), np.arange(1, 11), np.zeros(11))
    with pytest.raises(ValueError, match="needs at least 400 decoded labels to count, got 10"):
        ctc.fit_label_bias(logits, min_labels=400)
    with pytest.raises(ValueError, match=r"prior: expected 10 non-negative weights"):
        ctc.fit_label_bias(logits, np.ones(11))
    with pytest.raises(ValueError, match="at least one T x V array"):
        ctc.fit_label_bias([])
