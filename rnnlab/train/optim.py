"""The optimizer (an optax chain without the learning rate) and the learning-rate
schedule every task shares.

The learning rate is an argument of each task's jitted step, not part of the
optax chain, so the host-side plateau rule can change it without recompiling.
Step-dependent schedules are optax's, tabulated once in float64 (a Python-float
schedule rounded to float32 each step gives the same numbers).

    constant   lr
    cosine     linear warmup over warmup_steps (lr*(step+1)/warmup_steps), then
               cosine from lr to final_lr_fraction*lr at the last step
    zaremba    lr, divided by 1/decay_factor every epoch from decay_start_epoch on
               (Zaremba et al. 2014; needs epochs)
    plateau    lr, divided by plateau_factor after every plateau_patience evaluations in a row
               that are not better (patience 1: whenever an evaluation is not better)
               than the best so far (PyTorch word_language_model); host-side, its
               state is saved in every checkpoint
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import optax

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "zaremba", "plateau")


def make_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The update direction of ``optim`` (clip by global norm first when
    optim.clip_norm > 0, Pascanu et al. 2013); the step multiplies it by -lr."""
    if optim.name not in OPTIMIZERS:
        raise ValueError(f"optim.name must be one of {OPTIMIZERS}, got {optim.name!r}")
    parts = [optax.clip_by_global_norm(optim.clip_norm)] if optim.clip_norm > 0 else []
    if optim.name == "sgd":
        if optim.momentum:
            parts.append(optax.trace(decay=optim.momentum, nesterov=False))
        if optim.weight_decay:
            parts.append(optax.add_decayed_weights(optim.weight_decay))
    else:
        parts.append(optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps))
        if optim.name == "adamw":
            parts.append(optax.add_decayed_weights(optim.weight_decay))
        elif optim.weight_decay:
            raise ValueError("optim.weight_decay: use optim.name='adamw' for decoupled decay with Adam")
    return optax.chain(*parts) if parts else optax.identity()


def _optax_schedule(optim: ml_collections.ConfigDict, total: int, steps_per_epoch: int) -> optax.Schedule:
    lr = float(optim.lr)
    if optim.schedule == "cosine":
        warm = int(optim.warmup_steps)
        decay = optax.cosine_decay_schedule(lr, max(total - warm, 1), alpha=float(optim.final_lr_fraction))
        if warm <= 1:  # (step + 1) / 1 >= 1: no warmup
            return decay
        ramp = optax.linear_schedule(lr / warm, lr, warm - 1)  # lr * (step + 1) / warm
        return optax.join_schedules([ramp, decay], [warm])
    if optim.schedule == "zaremba":
        if steps_per_epoch <= 0:
            raise ValueError("optim.schedule='zaremba' decays per epoch, and this task has no epochs; "
                             "use 'cosine' or 'constant'")
        if optim.decay_start_epoch < 1:
            raise ValueError(f"optim.decay_start_epoch={optim.decay_start_epoch}: the first epoch is 1")
        return optax.exponential_decay(lr, steps_per_epoch, optim.decay_factor, staircase=True,
                                       transition_begin=(optim.decay_start_epoch - 1) * steps_per_epoch)
    return optax.constant_schedule(lr)


class Schedule:
    """The learning rate at each step of a run of ``total`` steps. ``lr(step)``;
    ``observe(loss)`` after each evaluation (True when it is the best so far; the
    plateau rule divides the rate otherwise). ``state`` is JSON, saved with the
    checkpoints and given back on resume."""

    def __init__(self, optim: ml_collections.ConfigDict, total: int, steps_per_epoch: int = 0):
        if optim.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {optim.schedule!r}")
        self.plateau, self.factor = optim.schedule == "plateau", float(optim.plateau_factor)
        self.patience = int(optim.get("plateau_patience", 1))
        if self.patience < 1:
            raise ValueError(f"optim.plateau_patience={self.patience}: the rate is divided after that many "
                             "evaluations in a row without a new best; use 1 or more")
        with jax.enable_x64(True):  # float64 like the Python-float formulas it replaces
            table = _optax_schedule(optim, total, steps_per_epoch)(np.arange(total + 1))
        self._table = np.broadcast_to(np.asarray(table, np.float64), (total + 1,))  # constant: one scalar
        # lr: the plateau rule's current rate; since_best: evaluations since the best (early stopping)
        self.state = {"lr": float(optim.lr), "best": None, "since_best": 0}

    def lr(self, step: int) -> float:
        return self.state["lr"] if self.plateau else float(self._table[min(step, len(self._table) - 1)])

    def observe(self, loss: float) -> bool:
        best = self.state["best"]
        improved = best is None or loss < best
        self.state["since_best"] = 0 if improved else self.state.get("since_best", 0) + 1
        if improved:
            self.state["best"] = loss
        elif self.plateau and self.state["since_best"] % self.patience == 0:
            self.state["lr"] /= self.factor
        return improved
