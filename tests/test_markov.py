"""Markov-chain corpora: the closed-form entropy rate against a hand computation
and against Monte-Carlo estimates from sampled corpora."""

import numpy as np
import pytest

from rnnlab.data import markov


def _binary_entropy(p: float) -> float:
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


def test_two_state_chain_by_hand():
    # P = [[1-a, a], [b, 1-b]]: pi = (b, a) / (a + b), H = pi_0 h(a) + pi_1 h(b).
    a, b = 0.1, 0.3
    chain = markov.MarkovChain(np.array([[1 - a, a], [b, 1 - b]]))
    np.testing.assert_allclose(markov.stationary_distribution(chain), [0.75, 0.25], atol=1e-14)
    expected = 0.75 * _binary_entropy(0.1) + 0.25 * _binary_entropy(0.3)
    assert markov.entropy_rate(chain) == pytest.approx(expected, rel=1e-12)
    # On paper: h(0.1) = 0.230259 + 0.094824 = 0.325083, h(0.3) = 0.361192 + 0.249672 = 0.610864,
    # H = 0.75 * 0.325083 + 0.25 * 0.610864 = 0.396528 nats.
    assert markov.entropy_rate(chain) == pytest.approx(0.396528, abs=1e-6)


def test_iid_chain_rate_is_row_entropy():
    row = np.array([0.5, 0.25, 0.125, 0.125])
    chain = markov.MarkovChain(np.tile(row, (4, 1)))
    np.testing.assert_allclose(markov.stationary_distribution(chain), row, atol=1e-14)
    assert markov.entropy_rate(chain) == pytest.approx(1.75 * np.log(2), rel=1e-12)


def test_random_chain_is_stochastic_and_seeded():
    chain = markov.random_chain(12, alpha=0.5, seed=3)
    assert chain.probs.shape == (12, 12) and chain.order == 1 and chain.n_symbols == 12
    np.testing.assert_allclose(chain.probs.sum(1), 1.0)
    pi = markov.stationary_distribution(chain)
    np.testing.assert_allclose(pi @ chain.probs, pi, atol=1e-14)
    np.testing.assert_array_equal(markov.random_chain(12, alpha=0.5, seed=3).probs, chain.probs)
    assert not np.array_equal(markov.random_chain(12, alpha=0.5, seed=4).probs, chain.probs)
    assert 0 < markov.entropy_rate(chain) < np.log(12)
    # Higher concentration -> flatter rows -> higher entropy rate.
    assert markov.entropy_rate(markov.random_chain(12, alpha=50.0)) > markov.entropy_rate(chain)


def test_entropy_rate_matches_monte_carlo_order1():
    chain = markov.random_chain(16, alpha=0.5, seed=0)
    tokens_S = markov.sample(chain, 200_000, seed=1)
    assert tokens_S.dtype == np.int32 and tokens_S.min() >= 0 and tokens_S.max() < 16
    h = markov.entropy_rate(chain)
    assert markov.cross_entropy(chain, tokens_S) == pytest.approx(h, rel=0.01)
    # The sample visits states in the stationary proportions.
    freq = np.bincount(tokens_S, minlength=16) / tokens_S.size
    np.testing.assert_allclose(freq, markov.stationary_distribution(chain), atol=0.01)


def test_entropy_rate_matches_monte_carlo_order2():
    chain = markov.random_chain(6, alpha=0.3, order=2, seed=5)
    assert chain.probs.shape == (6, 6, 6) and chain.order == 2
    pi_VxV = markov.stationary_distribution(chain)
    # Stationarity of the pair chain: sum_a pi[a, b] P[a, b, c] = pi[b, c].
    np.testing.assert_allclose(np.einsum("ab,abc->bc", pi_VxV, chain.probs), pi_VxV, atol=1e-13)
    tokens_S = markov.sample(chain, 200_000, seed=2)
    assert markov.cross_entropy(chain, tokens_S) == pytest.approx(markov.entropy_rate(chain), rel=0.01)


def test_order2_chain_that_ignores_x_t_minus_2_equals_order1():
    q = markov.random_chain(5, alpha=1.0, seed=9)
    chain2 = markov.MarkovChain(np.broadcast_to(q.probs, (5, 5, 5)).copy())
    assert markov.entropy_rate(chain2) == pytest.approx(markov.entropy_rate(q), rel=1e-10)
    np.testing.assert_allclose(markov.stationary_distribution(chain2).sum(0), markov.stationary_distribution(q))


def test_sample_is_seeded():
    chain = markov.random_chain(8, seed=0)
    np.testing.assert_array_equal(markov.sample(chain, 1000, seed=7), markov.sample(chain, 1000, seed=7))
    assert not np.array_equal(markov.sample(chain, 1000, seed=7), markov.sample(chain, 1000, seed=8))


def test_impossible_transitions_never_sampled():
    # A deterministic cycle 0 -> 1 -> 2 -> 0: zero-probability entries must never be drawn.
    chain = markov.MarkovChain(np.roll(np.eye(3), 1, axis=1))
    tokens_S = markov.sample(chain, 300, seed=0)
    np.testing.assert_array_equal(np.diff(tokens_S) % 3, 1)
    assert markov.entropy_rate(chain) == 0.0
    assert markov.cross_entropy(chain, tokens_S) == 0.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="sum to 1"):
        markov.MarkovChain(np.array([[0.5, 0.6], [0.5, 0.5]]))
    with pytest.raises(ValueError, match="shape"):
        markov.MarkovChain(np.ones((2, 3)) / 3)
    with pytest.raises(ValueError, match="order"):
        markov.random_chain(4, order=3)
    with pytest.raises(ValueError, match="alpha"):
        markov.random_chain(4, alpha=0.0)
    with pytest.raises(ValueError, match="lie in"):
        markov.log_probs(markov.random_chain(4), np.array([0, 5]))
