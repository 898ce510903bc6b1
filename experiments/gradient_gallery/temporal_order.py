"""Pascanu, Mikolov & Bengio 2013, "On the difficulty of training recurrent neural
networks", the temporal-order problem (Hochreiter & Schmidhuber 1997, experiment 6a):
success rate against sequence length for a tanh RNN trained by plain SGD and by SGD
with the gradient rescaled to a maximum norm (their SGD-C).

A sequence of random distractors {a, b, c, d} starts with E and ends with B; X or Y
stands at t1 in [0.1T, 0.2T] and at t2 in [0.5T, 0.6T]; the class at the end is the
order (XX, XY, YX, YY), as ``rnnlab.data.synthetic.temporal_order``, here generated
in JAX inside the training program. A run succeeds at 95% accuracy on fresh
sequences. Every (method, length) trains all its seeds at once (vmap)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.gradient_gallery import trainer
from experiments.gradient_gallery.common import Check, Result

NAME = "temporal_order"
TITLE = "Pascanu et al. 2013: temporal order, SGD with and without clipping"
CLAIM = ("On the temporal-order problem, SGD with gradient-norm clipping trains a tanh RNN at lengths where "
         "plain SGD fails, because clipping survives the exploding-gradient steps.")

SYMBOLS, DISTRACTORS, B_, E_, X_ = 8, 4, 4, 5, 6
SUCCESS = 0.95


def batch(key, n: int, length: int):
    """(xs_TxNx8 one-hot, class_N in 0..3), as rnnlab.data.synthetic.temporal_order."""
    k_d, k_1, k_2, k_c = jax.random.split(key, 4)
    tokens = jax.random.randint(k_d, (length, n), 0, DISTRACTORS)
    tokens = tokens.at[0].set(E_).at[-1].set(B_)
    t1 = jax.random.randint(k_1, (n,), round(0.1 * length), round(0.2 * length) + 1)
    t2 = jax.random.randint(k_2, (n,), round(0.5 * length), round(0.6 * length) + 1)
    is_y = jax.random.randint(k_c, (2, n), 0, 2)
    cols = jnp.arange(n)
    tokens = tokens.at[t1, cols].set(X_ + is_y[0]).at[t2, cols].set(X_ + is_y[1])
    return jax.nn.one_hot(tokens, SYMBOLS), 2 * is_y[0] + is_y[1]


def train_seeds(length: int, seeds, *, steps: int, lr: float, clip: float, d_h: int, options: dict):
    return trainer.train_seeds(
        "elman", options, batch=lambda k, n: batch(k, n, length), d_in=SYMBOLS, d_h=d_h, n_out=4,
        loss=lambda lo, c: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(lo, c)),
        accuracy=lambda lo, c: jnp.mean(jnp.argmax(lo, -1) == c), seeds=seeds, steps=steps, lr=lr, clip=clip,
        batch_size=20)


METHODS = {"SGD": 0.0, "SGD with clipping": 1.0}  # label -> clip norm (0: none)
CANDIDATE_RATES = (0.02, 0.1, 0.3)  # each method's rate is chosen among these on the pilot seeds
PILOT_SEEDS = np.arange(100, 106)  # never the figure's seeds (0..)


def run(smoke: bool) -> Result:
    # smoke: one rate for both methods (the pilot has nothing to choose), one length: the check at it
    lengths = (40,) if smoke else (10, 20, 30, 40, 50)
    pilot_lengths = (30,) if smoke else (20, 50)
    n_seeds, steps, d_h = (4, 2000, 32) if smoke else (20, 3000, 50)
    rates_tried = (0.1,) if smoke else CANDIDATE_RATES
    chosen, pilot = {}, []
    for label, clip in METHODS.items():
        chosen[label], p = trainer.choose_rate(
            label, rates_tried, pilot_lengths, PILOT_SEEDS[: 2 if smoke else None], lambda lr, t, s, clip=clip:
            train_seeds(t, s, steps=steps, lr=lr, clip=clip, d_h=d_h, options={}), SUCCESS)
        pilot += p
    seeds = np.arange(n_seeds)
    rates, rows = trainer.success_grid(
        NAME, list(METHODS), lengths, seeds, lambda label, t, s: train_seeds(
            t, s, steps=steps, lr=chosen[label], clip=METHODS[label], d_h=d_h, options={}), SUCCESS, "method")
    checks = [Check(f"success rate with clipping - without, at T = {t}",
                    rates[("SGD with clipping", t)] - rates[("SGD", t)], ">", 0.0) for t in lengths[-2:]]
    numbers = {"success_rate": {label: {str(t): rates[(label, t)] for t in lengths} for label in METHODS},
               "chosen_lr": chosen, "pilot": pilot}
    return Result(settings={"task": "temporal order (Hochreiter & Schmidhuber 1997, 6a), 4 classes",
                            "model": f"tanh RNN (elman, orthogonal init), {d_h} units", "lengths": list(lengths),
                            "seeds": n_seeds, "optimizer": f"SGD, batch 20, {steps} steps; each method's learning "
                            f"rate the best of {list(rates_tried)} on pilot seeds {PILOT_SEEDS[0]}+ at T = "
                            f"{list(pilot_lengths)}; clipping at global norm 1.0", "success": f"test accuracy >= {SUCCESS} on 2000 fresh sequences"},
                  checks=checks, numbers=numbers, rows=rows, figure=trainer.success_figure(
                      rates, METHODS, lengths, n_seeds, "temporal order: plain SGD against SGD with clipping"))
