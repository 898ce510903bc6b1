"""Vanishing and exploding in one picture: ||dL/dh_t|| at initialisation of a tanh RNN
over a grid of recurrent-weight scales, with Pascanu et al. (2013)'s conditions.

h_t = tanh(x_t W_x + h_{t-1} W_h + b), W_h a Gaussian matrix rescaled to spectral
radius rho. Pascanu et al., sec. 2.1: ||dh_t/dh_{t-1}|| <= gamma sigma_max(W_h) with
gamma = sup |tanh'| = 1, so sigma_max < 1 is sufficient for the gradient to vanish
(every curve stays under sigma_max^k) and sigma_max > 1 is necessary for it to explode.
For a Gaussian matrix sigma_max is about twice the spectral radius, so the two
conditions leave a band of rho in which neither says anything."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments.gradient_gallery import mean_field
from experiments.gradient_gallery.common import Check, Progress, Result
from rnnlab import cells, probes

NAME = "radius"
TITLE = "Exploding as well as vanishing: ||dL/dh_t|| over recurrent scales"
CLAIM = ("A tanh RNN's gradient through time must vanish when sigma_max(W_h) < 1 (gamma = 1), and can "
         "explode only when sigma_max > 1; large recurrent scales explode, small ones vanish.")


INPUT_STD = 0.3  # x_t ~ N(0, 0.3^2): with W_x lecun normal the input adds 0.09 to each pre-activation's variance


def tanh_rnn(key, d_in: int, d_h: int, rho: float):
    """elman params with W_h ~ N(0, 1/H) rescaled to spectral radius ``rho``; float64."""
    k_p, k_w = jax.random.split(key)
    params = cells.get("elman").init(k_p, d_in, d_h, dtype=jnp.float64)
    w = jax.random.normal(k_w, (d_h, d_h), jnp.float64) / np.sqrt(d_h)
    w = w * (rho / np.max(np.abs(np.linalg.eigvals(np.asarray(w)))))
    return {**params, "w_h_HxG": w}


def run(smoke: bool) -> Result:
    rhos = (0.5, 1.0, 2.0) if smoke else tuple(np.round(np.arange(0.5, 2.01, 0.1), 2))
    d_in, d_h, n_steps, batch = (4, 32, 60, 8) if smoke else (8, 256, 300, 32)
    horizon = n_steps - 1
    xs = INPUT_STD * jax.random.normal(jax.random.key(1), (n_steps, batch, d_in), jnp.float64)
    rows, curves, progress = [], {}, Progress(NAME, len(rhos))
    for i, rho in enumerate(rhos):
        params = tanh_rnn(jax.random.key(0), d_in, d_h, float(rho))
        g = probes.grad_norms_through_time("elman", params, xs, d_h=d_h)
        norms = np.asarray(g.norms_T)[::-1]  # by lag k = T-1-t
        rel = norms / norms[0]
        sigma = float(probes.pascanu_bound(params, n_lags=0).sigma_max)
        fit = probes.fit_decay_rate(jnp.asarray(rel), jnp.arange(n_steps), min_lag=n_steps // 3)
        curves[rho] = rel
        with np.errstate(divide="ignore", over="ignore"):
            worst = float(np.max(rel[1:] / sigma ** np.arange(1, n_steps))) if sigma < 1 else float("nan")
        rows.append({"rho": float(rho), "sigma_max": sigma, "norm_ratio_at_horizon": float(rel[horizon]),
                     "per_step_rate": float(fit.rate), "max_over_bound": worst,
                     "mean_field_rate": float(np.sqrt(mean_field.chi(float(rho), 0.0, INPUT_STD)))})
        progress(i + 1, f"rho {rho}")
    under = [r for r in rows if r["sigma_max"] < 1]
    grows = [r for r in rows if r["norm_ratio_at_horizon"] > 1]
    checks = [
        Check("curves with sigma_max < 1: largest ||dL/dh_{T-1-k}|| / (||dL/dh_{T-1}|| sigma_max^k), k >= 1",
              max((r["max_over_bound"] for r in under), default=0.0), "<=", 1.0),
        Check("curves that grow over the horizon with sigma_max <= 1", sum(r["sigma_max"] <= 1 for r in grows),
              "<=", 0),
        Check(f"largest ||dL/dh_0|| / ||dL/dh_{horizon}|| over the grid (explodes: > 1)",
              max(r["norm_ratio_at_horizon"] for r in rows), ">", 1.0),
        Check(f"smallest ||dL/dh_0|| / ||dL/dh_{horizon}|| over the grid (vanishes: < 1e-3)",
              min(r["norm_ratio_at_horizon"] for r in rows), "<", 1e-3),
        Check("largest |fitted per-step rate / mean-field sqrt(chi) - 1| over the grid",
              max(abs(r["per_step_rate"] / r["mean_field_rate"] - 1) for r in rows), "<", 0.10),
    ]
    numbers = {"rows": rows, "sigma_max_per_rho": float(np.median([r["sigma_max"] / r["rho"] for r in rows])),
               "explode_from_rho": min((r["rho"] for r in grows), default=None),
               "vanish_guaranteed_below_rho": max((r["rho"] for r in under), default=None)}
    return Result(settings={"model": "tanh RNN (elman cell), W_h Gaussian N(0, 1/H) rescaled to spectral radius rho",
                            "d_in": d_in, "d_h": d_h, "T": n_steps, "batch": batch, "rhos": list(rhos),
                            "loss": "sum of a fixed random projection of h_{T-1} (probes.grad_norms_through_time)",
                            "inputs": f"x_t ~ N(0, {INPUT_STD}^2), W_x lecun normal, b = 0"},
                  checks=checks, numbers=numbers, rows=rows, figure=_figure(curves, rows, n_steps))


def _figure(curves, rows, n_steps):
    from rnnlab.report import style

    plt = style.pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("coolwarm")
    rhos = sorted(curves)
    lags = np.arange(n_steps)
    for rho, r in zip(rhos, rows, strict=True):
        col = cmap((rho - rhos[0]) / max(rhos[-1] - rhos[0], 1e-9))
        a.semilogy(lags, curves[rho], color=col, lw=1.2, label=f"rho {rho:g} (sigma_max {r['sigma_max']:.2f})")
        if r["sigma_max"] < 1:
            a.semilogy(lags, r["sigma_max"] ** lags, ":", color=col, lw=0.8)
    a.set_xlabel("lag k = T-1-t"), a.set_ylabel("||dL/dh_t|| / ||dL/dh_{T-1}||")
    a.set_title("at initialisation (dotted: the bound sigma_max^k where sigma_max < 1)")
    a.set_ylim(1e-30, None)
    a.legend(ncol=2, fontsize=6)
    sig = [r["sigma_max"] for r in rows]
    b.semilogy([r["rho"] for r in rows], [r["per_step_rate"] for r in rows], "o-", label="fitted per-step rate")
    b.semilogy([r["rho"] for r in rows], sig, "s--", label="sigma_max(W_h): the bound's rate")
    b.semilogy([r["rho"] for r in rows], [r["mean_field_rate"] for r in rows], ":", color="k",
               label="mean field: sqrt(chi) (Chen et al. 2018)")
    b.axhline(1.0, color="k", lw=0.8)
    half = (rhos[1] - rhos[0]) / 2 if len(rhos) > 1 else 0.05
    under = [r["rho"] for r in rows if r["sigma_max"] < 1]
    if under:
        b.axvspan(min(rhos) - half, max(under) + half, color="C0", alpha=0.15, label="sigma_max < 1: must vanish")
    b.axvspan(max(under, default=min(rhos) - 2 * half) + half, max(rhos) + half, color="C3", alpha=0.07,
              label="sigma_max > 1: may explode")
    b.set_xlabel("spectral radius rho of W_h"), b.set_ylabel("per step")
    b.legend()
    return fig
