"""Chen, Pennington & Schoenholz 2018, "Dynamical isometry and a mean field theory of
RNNs": the time scale over which a tanh RNN forgets where it started, predicted by
mean-field theory over (sigma_w, sigma_b) and measured.

h_t = tanh(a_t), a_t = W h_{t-1} + U x_t + b, W_ij ~ N(0, sigma_w^2 / N),
U x_t ~ N(0, sigma_u^2) per unit, b_i ~ N(0, sigma_b^2). Mean field: the
pre-activation variance settles at q* = sigma_w^2 E[tanh(sqrt(q*) z)^2] + sigma_u^2 +
sigma_b^2; two copies driven by the same inputs from different starts approach each
other as chi^t, chi = sigma_w^2 E[tanh'(sqrt(q*) z)^2], a time scale
xi = -1 / ln chi. chi < 1 is the ordered phase (the copies merge), chi > 1 chaos.
Measured: ||a_t - a'_t||^2 / N of two copies in one network of N units, its
log-linear decay rate fitted past the transient."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats as scipy_stats

from experiments.gradient_gallery import latching, trainer
from experiments.gradient_gallery.common import Check, Progress, Result

NAME = "mean_field"
TITLE = "Chen, Pennington & Schoenholz 2018: the mean-field time scale of a tanh RNN"
CLAIM = ("Mean-field theory predicts the time scale xi = -1/ln chi over which a random tanh RNN forgets its "
         "initial state; chi = 1 separates an ordered phase from a chaotic one.")

_Z, _WZ = np.polynomial.hermite_e.hermegauss(121)
_WZ = _WZ / _WZ.sum()  # E[f(z)], z ~ N(0, 1)


def fixed_point_q(sigma_w, sigma_b, sigma_u):
    """q* (elementwise over arrays of the sigmas): iterated to convergence from q = 1."""
    sw, sb, su = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (sigma_w, sigma_b, sigma_u)))
    q = np.ones(sw.shape)
    for _ in range(3000):
        new = sw**2 * np.tensordot(np.tanh(np.sqrt(q)[..., None] * _Z) ** 2, _WZ, 1) + su**2 + sb**2
        if np.max(np.abs(new - q)) < 1e-13:
            return new
        q = new
    return q


def chi(sigma_w, sigma_b, sigma_u):
    """chi = sigma_w^2 E[tanh'(sqrt(q*) z)^2] (elementwise)."""
    q = fixed_point_q(sigma_w, sigma_b, sigma_u)
    return np.asarray(sigma_w, np.float64) ** 2 * np.tensordot(1 / np.cosh(np.sqrt(q)[..., None] * _Z) ** 4, _WZ, 1)


def time_scale(chi_value: float) -> float:
    return -1.0 / math.log(chi_value) if chi_value < 1 else float("inf")


@jax.jit
def _distances(w, u_xs, b, a0, a1):
    def step(carry, ux):
        a, a2 = carry
        a, a2 = jnp.tanh(a) @ w + ux + b, jnp.tanh(a2) @ w + ux + b
        return (a, a2), jnp.mean((a - a2) ** 2)

    _, d = jax.lax.scan(step, (a0, a1), u_xs)
    return d


def measured_time_scale(sigma_w, sigma_b, sigma_u, n_units: int, n_steps: int, seed: int) -> tuple[float, list]:
    """-1 / (fitted log-decay per step) of the two copies' squared distance, and the curve."""
    k = jax.random.split(jax.random.key(seed), 5)
    q = fixed_point_q(sigma_w, sigma_b, sigma_u)
    w = sigma_w * jax.random.normal(k[0], (n_units, n_units), jnp.float64) / math.sqrt(n_units)
    b = sigma_b * jax.random.normal(k[1], (n_units,), jnp.float64)
    u_xs = sigma_u * jax.random.normal(k[2], (n_steps, n_units), jnp.float64)  # U x_t for x_t ~ N(0, I)
    a0, a1 = (math.sqrt(q) * jax.random.normal(kk, (n_units,), jnp.float64) for kk in k[3:])
    d = np.asarray(_distances(w, u_xs, b, a0, a1))
    # fit where the decay is clean: below 1e-2 of the start (past the transient), above 1e-24 (float64 noise)
    use = (d < 1e-2 * d[0]) & (d > 1e-24 * d[0])
    t = np.arange(1, n_steps + 1)
    if use.sum() < 5:
        return float("nan"), d.tolist()
    slope = np.polyfit(t[use], np.log(d[use]), 1)[0]
    return (-1.0 / slope if slope < 0 else float("inf")), d.tolist()


TRAIN_LENGTH, TRAIN_UNITS, TRAIN_STEPS = 30, 32, 800  # the trainability overlay: latching at T = 30
PILOT_SEEDS = np.arange(100, 104)  # the overlay's learning rate is chosen on these, never the figure's seeds


def _train(sw: float, sb: float, sigma_u: float, seeds, lr: float, length: int = TRAIN_LENGTH):
    """Latching (experiments/gradient_gallery/latching.py) by SGD from a tanh RNN initialised at
    (sigma_w, sigma_b, sigma_u) as the mean-field model; the test accuracy of each seed."""
    options = {"recurrent_init": f"normal:{sw / math.sqrt(TRAIN_UNITS)}", "bias_init": f"normal:{sb}",
               "input_init": f"normal:{sigma_u}"}
    return latching.train_seeds("elman", options, length, seeds, TRAIN_STEPS, lr, d_h=TRAIN_UNITS)


def trainability(sws, sbs, sigma_u: float, n_seeds: int, smoke: bool) -> tuple[list[dict], float, list[dict]]:
    """Success rate of latching at T = TRAIN_LENGTH over the (sigma_w, sigma_b) grid; the learning rate
    is the pilot's best (on PILOT_SEEDS at two points near the phase boundary)."""
    lr, pilot = trainer.choose_rate(
        "tanh RNN at (1.25, 0.05) and (1.5, 0.05)", (0.5,) if smoke else (0.1, 0.5), (TRAIN_LENGTH,),
        PILOT_SEEDS[:2] if smoke else PILOT_SEEDS,
        lambda lr, t, seeds: np.concatenate([_train(sw, 0.05, sigma_u, seeds, lr, t) for sw in (1.25, 1.5)]),
        latching.SUCCESS)
    rows, progress = [], Progress(f"{NAME} trainability", len(sws) * len(sbs))
    for i, (sw, sb) in enumerate([(a, c) for a in sws for c in sbs]):
        acc = _train(sw, sb, sigma_u, np.arange(n_seeds), lr)
        c_mf = float(chi(sw, sb, sigma_u))
        rows.append({"sigma_w": sw, "sigma_b": sb, "chi": c_mf, "xi_mean_field": time_scale(c_mf),
                     "success_rate": float(np.mean(acc >= latching.SUCCESS))})
        progress(i + 1, f"sigma_w {sw} sigma_b {sb}: success {rows[-1]['success_rate']:.2f}")
    return rows, lr, pilot


def run(smoke: bool) -> Result:
    sigma_u = 0.5
    sws = (0.5, 1.0, 1.5) if smoke else (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)
    sbs = (0.1, 0.5) if smoke else (0.05, 0.2, 0.5, 1.0)
    # one network's decay time varies between weight draws (quenched disorder) even at N = 2000:
    # the mean over draws is what mean-field theory predicts
    n_units, n_steps, seeds, xi_max = (200, 150, 2, 15.0) if smoke else (2000, 600, 8, 40.0)
    rows, curves, progress = [], {}, Progress(NAME, len(sws) * len(sbs))
    for i, (sw, sb) in enumerate([(a, c) for a in sws for c in sbs]):
        c_mf = float(chi(sw, sb, sigma_u))
        xi_mf = time_scale(c_mf)
        draws = seeds if c_mf < 1 else 1  # in chaos one draw shows that the copies never merge
        got = [measured_time_scale(sw, sb, sigma_u, n_units, n_steps, seed) for seed in range(draws)]
        xis = np.array([g[0] for g in got])
        curves[(sw, sb)] = got[0][1]
        rows.append({"sigma_w": sw, "sigma_b": sb, "q_star": float(fixed_point_q(sw, sb, sigma_u)), "chi": c_mf,
                     "xi_mean_field": xi_mf, "xi_measured": float(np.mean(xis)), "draws": draws,
                     "xi_measured_se": float(np.std(xis, ddof=1) / np.sqrt(draws)) if draws > 1 else float("nan"),
                     "in_checked_range": bool(c_mf < 1 and xi_mf <= xi_max)})
        progress(i + 1, f"sigma_w {sw} sigma_b {sb}")
    checked = [r for r in rows if r["in_checked_range"]]
    worst = max(abs(r["xi_measured"] / r["xi_mean_field"] - 1) for r in checked)
    chaotic = [r for r in rows if r["chi"] > 1]
    checks = [Check(f"largest |xi measured (mean of {seeds} draws) / xi mean field - 1| over the ordered phase "
                    f"(xi <= {xi_max:g}, {len(checked)} grid points)", worst, "<", 0.10)]
    if chaotic:  # in chaos the two copies never merge: no finite decay time
        checks.append(Check("chaotic grid points (chi > 1) whose copies still merge (finite measured xi)",
                            sum(math.isfinite(r["xi_measured"]) for r in chaotic), "<=", 0))
    train_sws = (1.5,) if smoke else (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)
    train_sbs = (0.05,) if smoke else (0.05, 0.5, 1.0)
    trained, lr, pilot = trainability(train_sws, train_sbs, sigma_u, 2 if smoke else 8, smoke)
    ordered = [r for r in trained if r["chi"] < 1]
    if not smoke:  # a rank correlation needs more than the smoke's one point
        rho = scipy_stats.spearmanr([r["xi_mean_field"] for r in ordered], [r["success_rate"] for r in ordered])[0]
        checks.append(Check(f"ordered phase: rank correlation of latching success (T = {TRAIN_LENGTH}) with the "
                            "mean-field xi", float(rho), ">", 0.5))
    numbers = {"rows": rows, "worst_relative_error": worst, "n_checked": len(checked),
               "trainability": trained, "trainability_lr": lr, "trainability_pilot": pilot}
    return Result(settings={"model": "h_t = tanh(W h_{t-1} + U x_t + b)", "N": n_units, "T": n_steps,
                            "weight_draws": f"{seeds} per ordered-phase point, 1 in chaos", "sigma_u": sigma_u, "sigma_w": list(sws), "sigma_b": list(sbs),
                            "xi_checked_up_to": xi_max,
                            "trainability": f"latching (class in the first 3 steps) at T = {TRAIN_LENGTH}, "
                                            f"{TRAIN_UNITS} units, SGD {TRAIN_STEPS} steps, {2 if smoke else 8} "
                                            "seeds per point; rate chosen by a pilot on seeds 100+"},
                  checks=checks, numbers=numbers, rows=rows, figure=_figure(rows, curves, sigma_u, xi_max, trained))


def _figure(rows, curves, sigma_u, xi_max, trained):
    from rnnlab.report import style

    plt = style.pyplot()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(17, 4.5))
    fig.subplots_adjust(wspace=0.4)
    sw = np.linspace(0.3, 3.2, 120)
    sb = np.linspace(0.0, 1.2, 60)
    ch = chi(sw[None, :], sb[:, None], sigma_u)
    xi = np.where(ch < 1, -1 / np.log(np.minimum(ch, 1 - 1e-12)), np.inf)
    im = a.pcolormesh(sw, sb, np.log10(np.minimum(xi, 1e3)), cmap="viridis", shading="auto")
    fig.colorbar(im, ax=a, label="log10 xi (mean field; chaos capped)")
    a.contour(sw, sb, ch, levels=[1.0], colors="w", linewidths=1.5)
    a.scatter([r["sigma_w"] for r in rows], [r["sigma_b"] for r in rows], c="r", s=6, label="time scale measured")
    sc = a.scatter([r["sigma_w"] for r in trained], [r["sigma_b"] for r in trained], c=[r["success_rate"] for r in trained],
                   cmap="Greys", vmin=0, vmax=1, s=90, marker="s", edgecolors="orange",
                   label=f"latching at T = {TRAIN_LENGTH}: success (white 0, black 1)")
    del sc
    a.set_xlabel("sigma_w"), a.set_ylabel("sigma_b"), a.set_title(f"time scale (white: chi = 1), sigma_u = {sigma_u}")
    a.legend(loc="upper left")
    ok = [r for r in rows if math.isfinite(r["xi_mean_field"]) and math.isfinite(r["xi_measured"])]
    lim = [0.5, max(max(r["xi_mean_field"] for r in ok), xi_max) * 1.2]
    b.loglog(lim, lim, "k-", lw=0.8)
    b.fill_between(lim, [0.9 * v for v in lim], [1.1 * v for v in lim], color="k", alpha=0.1, label="+-10%")
    for r in ok:
        b.errorbar(r["xi_mean_field"], r["xi_measured"], yerr=1.96 * r["xi_measured_se"], fmt="o",
                   color="C0" if r["in_checked_range"] else "C7", ms=4)
    b.set_xscale("log"), b.set_yscale("log")
    b.set_xlabel("xi, mean field"), b.set_ylabel("xi, measured (N units)"), b.legend()
    b.set_title("measured (mean, 95% interval over draws) against predicted")
    for (x, y), d in list(curves.items())[:: max(1, len(curves) // 8)]:
        c.semilogy(np.asarray(d) / d[0], label=f"sigma_w {x}, sigma_b {y}")
    c.set_xlabel("t"), c.set_ylabel("||a_t - a'_t||^2 / start"), c.set_ylim(1e-26, 1e3), c.legend(fontsize=6)
    c.set_title("two copies, same inputs")
    return fig
