"""Bengio, Simard & Frasconi 1994, "Learning long-term dependencies with gradient
descent is difficult": the information-latching problem. A class (+1 or -1) is
given only in the first L steps of a sequence; the rest is noise; the class is
asked for at the end. The fraction of training runs that succeed falls towards zero
as the sequence grows for a tanh RNN trained by gradient descent; an LSTM beside it.

Here: x_t = y + noise for t < L = 3, x_t = noise after (noise N(0, 0.2^2)), a logistic
read-out of h_T, 8 units, plain gradient descent (SGD, as the paper; no clipping),
batch 32. A run succeeds when its accuracy on 2000 fresh sequences is at least 95%.
Every (cell, length) trains all its seeds at once (vmap), one compiled program.

Four models: the tanh RNN initialised as torch.nn.RNN is (uniform +-1/sqrt(H): a
contracting recurrence, as the networks the paper analyses) and as rnnlab's default
(orthogonal: near-isometric at the start); the LSTM with chrono initialisation
(Tallec & Ollivier 2018, T_max = T) and with forget-gate bias 1. Each model's learning
rate is chosen by a pilot on seeds 100-107 (recorded in the JSON); the figure's seeds
are 0-19."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.gradient_gallery import trainer
from experiments.gradient_gallery.common import Check, Result

NAME = "latching"
TITLE = "Bengio et al. 1994: information latching against sequence length"
CLAIM = ("The probability that gradient descent trains a tanh RNN to latch one bit falls towards zero as the "
         "sequence grows; gated cells (LSTM) keep succeeding.")

L_INFO, NOISE, D_H, BATCH, SUCCESS = 3, 0.2, 8, 32, 0.95
CELLS = {  # label -> (cell, options); chrono "T": the run's sequence length
    "tanh RNN (PyTorch init)": ("elman", {"recurrent_init": "pytorch", "input_init": "pytorch"}),
    "tanh RNN (orthogonal init)": ("elman", {}),
    "LSTM (chrono init)": ("lstm", {"chrono": "T"}),
    "LSTM (forget bias 1)": ("lstm", {"forget_bias": 1.0}),
}
TANH, LSTM = "tanh RNN (PyTorch init)", "LSTM (chrono init)"  # the claim's pair
CANDIDATE_RATES, PILOT_LENGTHS = (0.1, 0.5), (20, 80)  # each model's rate is chosen among these on the pilot seeds
PILOT_SEEDS = np.arange(100, 108)  # never the figure's seeds (0..)


def batch(key, n: int, length: int):
    """(xs_TxNx1, y_N in {0, 1}): the class as +-1 in the first L_INFO steps, noise everywhere."""
    k_y, k_n = jax.random.split(key)
    y = jax.random.bernoulli(k_y, 0.5, (n,))
    sign = 2.0 * y - 1.0
    xs = NOISE * jax.random.normal(k_n, (length, n, 1))
    xs = xs.at[:L_INFO].add(sign[None, :, None])
    return xs, y.astype(jnp.float32)


def _at_length(options: dict, length: int) -> dict:
    """A model's options with "T" (chrono's T_max) set to the run's length."""
    return {k: (length if v == "T" else v) for k, v in options.items()}


def train_seeds(cell_name: str, options: dict, length: int, seeds, steps: int, lr: float, d_h: int = D_H):
    """Trains one model per seed (vmapped) with SGD; returns the test accuracy of each."""
    return trainer.train_seeds(
        cell_name, options, batch=lambda k, n: batch(k, n, length), d_in=1, d_h=d_h, n_out=1,
        loss=lambda lo, y: jnp.mean(optax.sigmoid_binary_cross_entropy(lo[:, 0], y)),
        accuracy=lambda lo, y: jnp.mean((lo[:, 0] > 0) == (y > 0.5)), seeds=seeds, steps=steps, lr=lr,
        batch_size=BATCH)


def run(smoke: bool) -> Result:
    lengths = (5, 60) if smoke else (5, 10, 20, 40, 80, 160)
    n_seeds, steps = (4, 300) if smoke else (20, 800)
    models = {k: CELLS[k] for k in (TANH, LSTM)} if smoke else CELLS  # smoke: the claim's pair only
    chosen, pilot = {}, []
    for label, (cell_name, options) in models.items():
        chosen[label], p = trainer.choose_rate(
            label, (0.5,) if smoke else CANDIDATE_RATES, (20,) if smoke else PILOT_LENGTHS,
            PILOT_SEEDS[: 2 if smoke else None], lambda lr, t, s, c=cell_name, o=options:
            train_seeds(c, _at_length(o, t), t, s, steps, lr), SUCCESS)
        pilot += p
    seeds = np.arange(n_seeds)
    rates, rows = trainer.success_grid(
        NAME, list(models), lengths, seeds, lambda label, t, s: train_seeds(
            models[label][0], _at_length(models[label][1], t), t, s, steps, chosen[label]), SUCCESS, "cell")
    longest = lengths[-1]
    checks = [Check(f"{TANH}: success rate at T = {longest}", rates[(TANH, longest)], "<", 0.2),
              Check(f"{LSTM}: success rate at T = {longest}", rates[(LSTM, longest)], ">", 0.8),
              Check(f"{TANH}: success rate at T = {lengths[0]}", rates[(TANH, lengths[0])], ">", 0.8)]
    numbers = {"success_rate": {label: {str(t): rates[(label, t)] for t in lengths} for label in models},
               "chosen_lr": chosen, "pilot": pilot}
    return Result(settings={"task": f"class +-1 in the first {L_INFO} steps, noise N(0, {NOISE}^2) throughout, "
                                    "class asked at the end", "units": D_H, "lengths": list(lengths),
                            "seeds": n_seeds, "optimizer": f"SGD, no clipping, batch {BATCH}, {steps} steps; each "
                            f"model's learning rate the best of {list(CANDIDATE_RATES)} on pilot seeds "
                            f"{PILOT_SEEDS[0]}+ at T = {list(PILOT_LENGTHS)}",
                            "success": f"test accuracy >= {SUCCESS} on 2000 fresh sequences",
                            "cells": {k: f"{v[0]} {v[1] or ''}".strip() for k, v in models.items()}},
                  checks=checks, numbers=numbers, rows=rows,
                  figure=trainer.success_figure(rates, models, lengths, n_seeds, "latching one bit by gradient descent",
                                                log_x=True))
