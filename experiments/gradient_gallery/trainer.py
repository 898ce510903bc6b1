"""Many small recurrent models trained at once: one per seed, vmapped, the whole
training a lax.scan, one compiled program per (model, task). For the gallery's
success-rate figures, where a point is the fraction of 20 runs that learn."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnnlab import cells, scan


def logits(cell, params, xs_TxBxD):
    """The read-out of the last state: h_T W + b."""
    d_h = params["w_out_HxO"].shape[0]
    carry, _ = scan.run(cell, params["rnn"], cell.initial_carry(xs_TxBxD.shape[1], d_h), xs_TxBxD, path="sequential")
    h = carry[-1] if isinstance(carry, tuple) else carry  # lstm carry (c, h)
    return h @ params["w_out_HxO"] + params["b_out_O"]


def train_seeds(cell_name: str, options: dict, *, batch: Callable, d_in: int, d_h: int, n_out: int,
                loss: Callable, accuracy: Callable, seeds, steps: int, lr: float, clip: float = 0.0,
                batch_size: int = 32, test_size: int = 2000) -> np.ndarray:
    """SGD (with the gradient rescaled to norm ``clip`` when larger, Pascanu et al. 2013, if
    ``clip`` > 0) on ``batch(key, n) -> (xs_TxNxD, targets)``; returns each seed's accuracy
    on ``test_size`` fresh sequences. ``loss(logits, targets)``, ``accuracy(logits, targets)``."""
    cell = cells.get(cell_name, **options)
    tx = optax.chain(optax.clip_by_global_norm(clip), optax.sgd(lr)) if clip else optax.sgd(lr)

    def one(seed):
        k_p, k_o, k_train, k_test = jax.random.split(jax.random.key(seed), 4)
        params = {"rnn": cell.init(k_p, d_in, d_h),
                  "w_out_HxO": jax.random.normal(k_o, (d_h, n_out)) / np.sqrt(d_h), "b_out_O": jnp.zeros((n_out,))}

        def step(state, k):
            p, o = state
            g = jax.grad(lambda p, xs, t: loss(logits(cell, p, xs), t))(p, *batch(k, batch_size))
            u, o = tx.update(g, o, p)
            return (optax.apply_updates(p, u), o), None

        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(k_train, steps))
        xs, t = batch(k_test, test_size)
        return accuracy(logits(cell, params, xs), t)

    return np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(seeds)))


def choose_rate(label: str, rates, lengths, seeds, run, success: float) -> tuple[float, list[dict]]:
    """The learning rate with the highest mean success rate of ``run(lr, length, seeds) -> accuracies``
    over the pilot ``lengths`` and ``seeds`` (ties: the first); and the pilot's rows for the record.
    With one rate there is nothing to choose and nothing runs."""
    if len(rates) == 1:
        return rates[0], []
    rows = []
    for lr in rates:
        for length in lengths:
            acc = run(lr, length, seeds)
            rows.append({"model": label, "lr": lr, "T": length, "success_rate": float(np.mean(acc >= success))})
        print(f"pilot {label}: lr {lr}: success {[r['success_rate'] for r in rows[-len(lengths):]]} "
              f"at T = {list(lengths)}", flush=True)
    mean = {lr: np.mean([r["success_rate"] for r in rows if r["lr"] == lr]) for lr in rates}
    return max(rates, key=lambda lr: mean[lr]), rows


def success_grid(name: str, labels, lengths, seeds, run, success: float, key: str):
    """``run(label, length, seeds) -> accuracies`` for every (label, length): the success rates
    {(label, length): fraction >= ``success``} and the per-seed rows (``key``: the label's column)."""
    from experiments.gradient_gallery.common import Progress

    rows, rates, progress = [], {}, Progress(name, len(lengths) * len(labels))
    for i, label in enumerate(labels):
        for j, length in enumerate(lengths):
            acc = run(label, length, seeds)
            rates[(label, length)] = float(np.mean(acc >= success))
            rows += [{key: label, "T": length, "seed": int(s), "test_accuracy": float(a)}
                     for s, a in zip(seeds, acc, strict=True)]
            progress(i * len(lengths) + j + 1, f"{label} T={length}: success {rates[(label, length)]:.2f}")
    return rates, rows


def success_figure(rates, labels, lengths, n_seeds: int, title: str, log_x: bool = False):
    """Success rate against length, one line per label, 95% binomial intervals."""
    from rnnlab.report import style

    plt = style.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label in labels:
        p = np.array([rates[(label, t)] for t in lengths])
        se = np.sqrt(p * (1 - p) / n_seeds)
        ax.errorbar(lengths, p, yerr=1.96 * se, fmt="o-", capsize=3, label=label)
    if log_x:
        ax.set_xscale("log")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("sequence length T"), ax.set_ylabel(f"fraction of {n_seeds} runs that succeed")
    ax.set_title(title)
    ax.legend()
    return fig
