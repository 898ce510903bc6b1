"""Zucchet & Orvieto 2024, "Recurrent neural networks: vanishing and exploding gradients
are not the end of the story": the curse of memory. As a recurrence keeps memory
longer (|lambda| -> 1), its hidden state grows sensitive to the recurrent parameter
without bound, even with no exploding gradient; normalising the input and
reparametrising lambda keeps the sensitivity bounded.

Here on the diagonal linear recurrence of one unit with white-noise inputs,
h_t = lambda h_{t-1} + gamma(lambda) x_t, x_t ~ N(0, 1), the sensitivity
S = E[(dh_T/dtheta)^2] in closed form (T -> infinity) and measured by Monte Carlo
(jax.grad through lax.scan):
  raw:         theta = lambda, gamma = 1:                 S = (1 + l^2) / (1 - l^2)^3
  normalised:  theta = lambda, gamma = sqrt(1 - l^2):     S = 1 / (1 - l^2)^2
  normalised + exponential: lambda = exp(-exp(nu)), theta = nu:
                                                          S = (l ln l)^2 / (1 - l^2)^2 -> 1/4"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from experiments.gradient_gallery.common import Check, Progress, Result

NAME = "curse_of_memory"
TITLE = "Zucchet & Orvieto 2024: the curse of memory"
CLAIM = ("As lambda -> 1 the hidden state's sensitivity to the recurrent parameter diverges, without any "
         "exploding gradient; input normalisation with an exponential parametrisation keeps it bounded.")

PARAMETRISATIONS = ("raw", "normalised", "normalised_exp")


def closed_form(lam, kind: str, n_steps: int | None = None):
    """E[(dh_T/dtheta)^2] for white-noise inputs; ``n_steps`` = T gives the exact finite sum,
    None the T -> infinity limit. h_T = gamma * sum_k l^k x_{T-k} (k < T)."""
    lam = np.asarray(lam, np.float64)
    if n_steps is None:
        a, b, c = 1 / (1 - lam**2), (1 + lam**2) / (1 - lam**2) ** 3, lam / (1 - lam**2) ** 2
    else:  # A = sum l^2k, B = sum k^2 l^(2k-2), C = sum k l^(2k-1) over k < T
        k = np.arange(n_steps, dtype=np.float64).reshape((-1,) + (1,) * lam.ndim)
        a = np.sum(lam ** (2 * k), 0)
        b = np.sum(k**2 * lam ** np.maximum(2 * k - 2, 0), 0)
        c = np.sum(k * lam ** np.maximum(2 * k - 1, 0), 0)
    if kind == "raw":
        return b
    g, dg = np.sqrt(1 - lam**2), -lam / np.sqrt(1 - lam**2)
    s = dg**2 * a + g**2 * b + 2 * g * dg * c  # Var(dg S0 + g S1)
    return s if kind == "normalised" else (lam * np.log(lam)) ** 2 * s


def _h_last(theta, xs, kind: str):
    lam = jnp.exp(-jnp.exp(theta)) if kind == "normalised_exp" else theta
    gain = 1.0 if kind == "raw" else jnp.sqrt(1 - lam**2)
    h, _ = jax.lax.scan(lambda h, x: (lam * h + gain * x, None), jnp.zeros_like(xs[0]), xs)
    return h


def measured(lam: float, kind: str, n_steps: int, samples: int, seed: int = 0) -> float:
    """Monte Carlo E[(dh_T/dtheta)^2] over ``samples`` white-noise sequences."""
    theta = math.log(-math.log(lam)) if kind == "normalised_exp" else lam
    xs = jax.random.normal(jax.random.key(seed), (n_steps, samples), jnp.float64)
    grads = jax.jit(jax.vmap(jax.grad(_h_last), in_axes=(None, 1, None)), static_argnums=2)(theta, xs, kind)
    return float(jnp.mean(grads**2))


def run(smoke: bool) -> Result:
    lams = (0.5, 0.9) if smoke else (0.5, 0.8, 0.9, 0.95, 0.99, 0.995, 0.999)
    samples = 500 if smoke else 4000
    tolerance = 5 * math.sqrt(2 / samples)  # dh/dtheta is Gaussian: a variance estimate's relative s.e. is sqrt(2/M)
    rows, progress = [], Progress(NAME, len(lams) * len(PARAMETRISATIONS))
    for i, lam in enumerate(lams):
        n_steps = int(math.ceil(12 / (1 - lam**2)))  # l^(2T) < e^-12: the sum has converged
        for j, kind in enumerate(PARAMETRISATIONS):
            m = measured(lam, kind, n_steps, samples, seed=i)
            rows.append({"lambda": lam, "parametrisation": kind, "T": n_steps, "samples": samples, "measured": m,
                         "exact_T": float(closed_form(lam, kind, n_steps)), "limit": float(closed_form(lam, kind))})
            progress(i * len(PARAMETRISATIONS) + j + 1, f"lambda {lam} {kind}")
    rel = max(abs(r["measured"] / r["exact_T"] - 1) for r in rows)
    by = {(r["lambda"], r["parametrisation"]): r["measured"] for r in rows}
    lo, hi = lams[0], lams[-1]
    checks = [
        Check(f"largest |measured / closed form - 1| over lambda and parametrisation ({samples} sequences)",
              rel, "<", tolerance),
        Check(f"raw sensitivity at lambda = {hi} / at lambda = {lo}", by[(hi, "raw")] / by[(lo, "raw")], ">",
              1e6 if not smoke else 10.0),
        Check(f"normalised + exponential: largest sensitivity over lambda in [{lo}, {hi}]",
              max(by[(x, "normalised_exp")] for x in lams), "<", 1.0),
    ]
    numbers = {"measured": {k: {str(x): by[(x, k)] for x in lams} for k in PARAMETRISATIONS},
               "largest_relative_error": rel, "tolerance": tolerance}
    return Result(settings={"recurrence": "h_t = lambda h_{t-1} + gamma x_t, x_t ~ N(0, 1), h_0 = 0",
                            "lambdas": list(lams), "samples": samples, "T": "ceil(12 / (1 - lambda^2))"},
                  checks=checks, numbers=numbers, rows=rows, figure=_figure(rows, lams))


def _figure(rows, lams):
    from rnnlab.report import style

    plt = style.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    grid = 1 - np.logspace(-3.2, math.log10(0.6), 200)
    labels = {"raw": "raw: lambda, no normalisation", "normalised": "normalised input (gamma = sqrt(1 - l^2))",
              "normalised_exp": "normalised + lambda = exp(-exp(nu)), d/dnu"}
    for kind, col in zip(PARAMETRISATIONS, ("C3", "C1", "C2"), strict=True):
        ax.loglog(1 - grid, closed_form(grid, kind), color=col, label=labels[kind])
        pts = [(1 - r["lambda"], r["measured"]) for r in rows if r["parametrisation"] == kind]
        ax.loglog(*zip(*pts, strict=True), "o", color=col, mfc="none")
    ax.invert_xaxis()
    ax.set_xlabel("1 - lambda (memory grows to the right)")
    ax.set_ylabel("E[(dh_T / dtheta)^2]")
    ax.set_title("sensitivity: closed form (lines), Monte Carlo (circles)")
    ax.legend()
    return fig
