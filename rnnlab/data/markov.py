"""Synthetic corpora with a known entropy rate: random Markov chains.

A language model trained on a long sample of a chain cannot beat the chain's
entropy rate (the cross-entropy of the true conditional distribution), so the
rate is an absolute target: a well-trained LM's loss should land within a few
percent of it. Everything here is numpy, float64, seeded, and in nats.

Shape legend (cells/_common.py): V symbols, S tokens; an order-k chain conditions on the last k
tokens, its transition table is ``probs`` with k+1 axes of size V (the last
axis is the next symbol).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MarkovChain:
    """An order-1 or order-2 Markov chain over V symbols.

    probs: order 1: ``P_VxV[i, j] = P(x_t=j | x_{t-1}=i)``;
      order 2: ``P_VxVxV[a, b, c] = P(x_t=c | x_{t-2}=a, x_{t-1}=b)``.
      Rows (the last axis) sum to 1.
    """

    probs: np.ndarray

    def __post_init__(self):
        p = np.asarray(self.probs, dtype=np.float64)
        v = p.shape[-1] if p.ndim else 0
        if p.ndim not in (2, 3) or any(n != v for n in p.shape) or v < 1:
            raise ValueError(
                f"probs must have shape (V, V) for order 1 or (V, V, V) for order 2, got {p.shape}; "
                "build one with random_chain(n_symbols, order=...)"
            )
        if np.any(p < 0) or not np.allclose(p.sum(-1), 1.0, atol=1e-9):
            raise ValueError("probs rows (last axis) must be non-negative and sum to 1; normalise them first")
        object.__setattr__(self, "probs", p)

    @property
    def order(self) -> int:
        return self.probs.ndim - 1

    @property
    def n_symbols(self) -> int:
        return self.probs.shape[-1]

    def rows(self) -> np.ndarray:
        """Transition rows with the history flattened: ``(V**order, V)``; the
        history (a, b) of an order-2 chain is row ``a * V + b``."""
        return self.probs.reshape(-1, self.n_symbols)


def random_chain(n_symbols: int, *, alpha: float = 1.0, order: int = 1, seed: int = 0) -> MarkovChain:
    """A random chain: every transition row drawn from Dirichlet(alpha, ..., alpha).

    alpha sets the entropy: alpha=1 rows are uniform on the simplex; alpha << 1
    gives peaked rows (low entropy rate), alpha >> 1 near-uniform rows (rate
    near log V). All rows are strictly positive with probability 1, so the
    chain is irreducible and aperiodic and its stationary distribution unique.
    """
    if n_symbols < 1:
        raise ValueError(f"n_symbols must be >= 1, got {n_symbols}")
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 (Dirichlet concentration), got {alpha}")
    rng = np.random.default_rng([seed, order, n_symbols])
    rows = rng.dirichlet(np.full(n_symbols, float(alpha)), size=n_symbols**order)
    # Tiny alpha can underflow whole rows to 0/0; renormalise defensively so rows sum to 1.
    rows = np.maximum(rows, 0.0)
    rows /= rows.sum(axis=1, keepdims=True)
    return MarkovChain(rows.reshape((n_symbols,) * (order + 1)))


def stationary_distribution(chain: MarkovChain) -> np.ndarray:
    """The stationary distribution of the chain's history state.

    Order 1: ``pi_V`` with ``pi @ P = pi``, from a linear solve (cost O(V^3)).
    Order 2: ``pi_VxV[a, b]``, the stationary probability of the pair
    (x_{t-2}, x_{t-1}) = (a, b), by power iteration on the pair chain
    (cost O(V^3) per iteration; raises if it does not converge).
    """
    v = chain.n_symbols
    if chain.order == 1:
        # Solve pi (P - I) = 0 with sum(pi) = 1: replace one (redundant) equation by the normalisation.
        a_VxV = chain.probs.T - np.eye(v)
        a_VxV[-1, :] = 1.0
        b_V = np.zeros(v)
        b_V[-1] = 1.0
        pi_V = np.linalg.solve(a_VxV, b_V)
        return _clean_distribution(pi_V)
    pi_VxV = np.full((v, v), 1.0 / v**2)
    for _ in range(100_000):
        # new[b, c] = sum_a pi[a, b] P[a, b, c]: one step of the pair chain.
        new = np.einsum("ab,abc->bc", pi_VxV, chain.probs)
        if np.max(np.abs(new - pi_VxV)) < 1e-15:
            return _clean_distribution(new)
        pi_VxV = new
    raise ValueError(
        "stationary distribution of the order-2 chain did not converge in 100,000 steps; "
        "the chain mixes too slowly (raise alpha)"
    )


def _clean_distribution(pi: np.ndarray) -> np.ndarray:
    pi = np.maximum(pi, 0.0)  # round-off can leave -1e-17
    return pi / pi.sum()


def entropy_rate(chain: MarkovChain) -> float:
    """Entropy rate in nats per token, in closed form:
    ``H = -sum_h pi_h sum_j P[h, j] log P[h, j]`` over history states h
    (0 log 0 = 0). Divide by log(2) for bits."""
    rows = chain.rows()
    pi_h = stationary_distribution(chain).reshape(-1)
    logs = np.log(np.where(rows > 0, rows, 1.0))  # 0 log 0 := 0
    row_entropy_h = -(rows * logs).sum(axis=1)
    return float(pi_h @ row_entropy_h)


def sample(chain: MarkovChain, n_tokens: int, *, seed: int = 0) -> np.ndarray:
    """Sample ``tokens_S`` (int32) from the chain, started in its stationary
    distribution so every token, the first ones included, is stationary.

    Inverse-CDF sampling on precomputed cumulative rows: one uniform draw
    (vectorised) and one binary search per token. The walk is inherently
    sequential; the loop runs at ~0.7 s per million tokens.
    """
    if n_tokens < chain.order:
        raise ValueError(f"n_tokens must be >= order={chain.order}, got {n_tokens}")
    v = chain.n_symbols
    rng = np.random.default_rng([seed, 7919])
    pi_h = stationary_distribution(chain).reshape(-1)
    history = int(rng.choice(pi_h.size, p=pi_h))  # flattened history state
    cum_rows = np.cumsum(chain.rows(), axis=1)
    cum_rows[:, -1] = np.inf  # round-off: u in [0, 1) always finds a symbol
    rows = cum_rows.tolist()  # Python lists: bisect on lists is ~5x faster than per-step numpy calls
    uniforms = rng.random(n_tokens - chain.order).tolist()
    out = [0] * n_tokens
    if chain.order == 1:
        out[0] = history
        x = history
        for t, u in enumerate(uniforms, start=1):
            x = bisect_right(rows[x], u)
            out[t] = x
    else:
        out[0], out[1] = divmod(history, v)
        h = history
        for t, u in enumerate(uniforms, start=2):
            c = bisect_right(rows[h], u)
            out[t] = c
            h = (h % v) * v + c  # (a, b) -> (b, c)
    return np.asarray(out, dtype=np.int32)


def log_probs(chain: MarkovChain, tokens_S: np.ndarray) -> np.ndarray:
    """``log P(x_t | history)`` under the chain for t = order .. S-1, shape (S - order,).
    ``-log_probs(...).mean()`` is the Monte-Carlo estimate of the entropy rate."""
    tokens_S = np.asarray(tokens_S, dtype=np.int64)
    v = chain.n_symbols
    if tokens_S.ndim != 1 or tokens_S.size <= chain.order:
        raise ValueError(f"tokens_S must be 1-D with more than order={chain.order} tokens, got {tokens_S.shape}")
    if tokens_S.min() < 0 or tokens_S.max() >= v:
        raise ValueError(f"tokens must lie in [0, {v}), got [{tokens_S.min()}, {tokens_S.max()}]")
    if chain.order == 1:
        history = tokens_S[:-1]
    else:
        history = tokens_S[:-2] * v + tokens_S[1:-1]
    with np.errstate(divide="ignore"):  # an impossible transition is -inf, on purpose
        return np.log(chain.rows()[history, tokens_S[chain.order :]])


def cross_entropy(chain: MarkovChain, tokens_S: np.ndarray) -> float:
    """Mean negative log-likelihood of ``tokens_S`` under the chain (nats/token)."""
    return float(-log_probs(chain, tokens_S).mean())
