"""Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks for Long Sequences":
the Linear Recurrent Unit, reached from a deep tanh RNN in four steps, each of which
keeps or improves accuracy on long-range tasks, and the eigenvalues of its
recurrence on the complex plane (ring initialisation, then after training).

The model is the paper's deep architecture: a linear encoder, ``DEPTH`` residual
blocks [LayerNorm -> recurrent layer (N states) -> y = Re(C h) + D z -> GeLU -> GLU],
mean pooling over time, a linear decoder. Only the recurrence changes along the
ablation path (``VARIANTS``):

  tanh      h_t = tanh(A h_{t-1} + B z_t), A dense N x N, Glorot (N(0, 1/N))
  linear    h_t = A h_{t-1} + B z_t, the same init
  diagonal  h_t = lambda * h_{t-1} + B z_t, lambda complex (re, im trained directly),
            initialised as the eigenvalues of a Glorot A (the unit disk); B, C complex
  exp       lambda = exp(-exp(nu) + i exp(theta)): |lambda| < 1 whatever the update;
            ring initialisation |lambda| in [R_MIN, R_MAX]
  gamma     the same, the input scaled by gamma = sqrt(1 - |lambda|^2) (trained
            as exp(gamma_log)): the LRU of ``rnnlab.cells.lru``

The task is sequential pixel digits (``rnnlab.data.digits``: scikit-learn's 8x8
digits, one pixel a step, T = 64) in a fixed random pixel order (permuted), the
small offline cousin of the paper's sCIFAR (T = 1024). Every (variant, rate) trains
its seeds at once (vmap); each variant's learning rate is chosen on the validation
split, and the figure reports test accuracy at that rate."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.gradient_gallery.common import Check, Progress, Result

NAME = "lru"
TITLE = "Orvieto et al. 2023: from a deep tanh RNN to the LRU"
CLAIM = ("Linear recurrences, diagonalised with complex eigenvalues, stably parametrised and normalised (the LRU) "
         "train better on long-range tasks than the deep tanh RNN they start from; the eigenvalues stay inside "
         "the unit circle near its edge.")

VARIANTS = ("tanh", "linear", "diagonal", "exp", "gamma")
LABELS = {"tanh": "tanh RNN", "linear": "+ linear", "diagonal": "+ complex diagonal",
          "exp": "+ exp. parametrisation, ring init", "gamma": "+ gamma normalisation (LRU)"}
SHORT = {"tanh": "tanh RNN (dense A)", "linear": "linear RNN (dense A)", "diagonal": "complex diagonal",
         "exp": "exp. parametrisation", "gamma": "LRU"}
TICKS = {"tanh": "tanh RNN", "linear": "+ linear", "diagonal": "+ complex\ndiagonal", "exp": "+ exp. param.,\nring init",
         "gamma": "+ gamma norm.\n(the LRU)"}
R_MIN, R_MAX = 0.9, 0.999  # the ring of the exp and gamma variants (the paper's sCIFAR setting)
FULL = {"H": 64, "N": 64, "depth": 2, "steps": 1500, "batch": 32, "seeds": (0, 1, 2, 3, 4),
        "rates": (1e-3, 3e-3, 1e-2), "variants": VARIANTS}
# smoke: the claim's pair (the path's two ends), one rate
SMOKE = {"H": 32, "N": 32, "depth": 1, "steps": 200, "batch": 32, "seeds": (0, 1, 2), "rates": (3e-3,),
         "variants": ("tanh", "gamma")}


def _glorot(key, shape):
    return jax.random.normal(key, shape, jnp.float32) / math.sqrt(shape[0])


def init_block(key, variant: str, h: int, n: int) -> dict:
    k = jax.random.split(key, 8)
    p = {"ln_scale": jnp.ones((h,)), "ln_bias": jnp.zeros((h,)), "d": jax.random.normal(k[0], (h,)),
         "glu_w": _glorot(k[1], (h, 2 * h)), "glu_b": jnp.zeros((2 * h,))}
    if variant in ("tanh", "linear"):
        p.update(a=_glorot(k[2], (n, n)), b=_glorot(k[3], (h, n)), c=_glorot(k[4], (n, h)))
        return p
    # complex B (H x N) and C (N x H): Glorot on the real and imaginary parts, as the paper
    p.update(b_re=jax.random.normal(k[3], (h, n)) / math.sqrt(2 * h), b_im=jax.random.normal(k[5], (h, n)) / math.sqrt(2 * h),
             c_re=jax.random.normal(k[4], (n, h)) / math.sqrt(n), c_im=jax.random.normal(k[6], (n, h)) / math.sqrt(n))
    if variant == "diagonal":  # the eigenvalues of a Glorot A: about uniform on the unit disk (circular law)
        ev = jnp.linalg.eigvals(_glorot(k[2], (n, n)))  # CPU
        p.update(lam_re=jnp.real(ev), lam_im=jnp.imag(ev))
        return p
    u1, u2 = jax.random.uniform(k[2], (n,)), jax.random.uniform(k[7], (n,))
    nu_log = jnp.log(-0.5 * jnp.log(u1 * (R_MAX**2 - R_MIN**2) + R_MIN**2))  # |lambda|^2 uniform on the ring
    p.update(nu_log=nu_log, theta_log=jnp.log(2 * math.pi * u2))
    if variant == "gamma":
        p["gamma_log"] = 0.5 * jnp.log(1 - jnp.exp(-2 * jnp.exp(nu_log)))
    return p


def eigenvalues(block: dict) -> np.ndarray:
    """The recurrence's eigenvalues (complex, N)."""
    if "a" in block:
        return np.linalg.eigvals(np.asarray(block["a"], np.float64))
    if "lam_re" in block:
        return np.asarray(block["lam_re"]) + 1j * np.asarray(block["lam_im"])
    return np.exp(-np.exp(np.asarray(block["nu_log"], np.float64)) + 1j * np.exp(np.asarray(block["theta_log"])))


def _recur(p: dict, variant: str, z_TxBxH):
    if variant in ("tanh", "linear"):
        u = z_TxBxH @ p["b"]
        act = jnp.tanh if variant == "tanh" else (lambda v: v)
        _, hs = jax.lax.scan(lambda hh, ut: (act(hh @ p["a"] + ut),) * 2, jnp.zeros_like(u[0]), u)
        return hs @ p["c"]
    u = jax.lax.complex(z_TxBxH @ p["b_re"], z_TxBxH @ p["b_im"])
    if variant == "diagonal":
        lam = jax.lax.complex(p["lam_re"], p["lam_im"])
    else:
        lam = jnp.exp(jax.lax.complex(-jnp.exp(p["nu_log"]), jnp.exp(p["theta_log"])))
    if variant == "gamma":
        u = u * jnp.exp(p["gamma_log"])
    # h_t = lam h_{t-1} + u_t in real arithmetic: (a + ib)(x + iy) = (ax - by) + i(ay + bx)
    a, b = jnp.real(lam), jnp.imag(lam)

    def step(h, ut):
        x, y = h
        h = (a * x - b * y + ut[0], a * y + b * x + ut[1])
        return h, h

    u_re, u_im = jnp.real(u), jnp.imag(u)
    _, (h_re, h_im) = jax.lax.scan(step, (jnp.zeros_like(u_re[0]), jnp.zeros_like(u_im[0])), (u_re, u_im))
    return h_re @ p["c_re"] - h_im @ p["c_im"]


def _block(p: dict, variant: str, x_TxBxH):
    mu, var = jnp.mean(x_TxBxH, -1, keepdims=True), jnp.var(x_TxBxH, -1, keepdims=True)
    z = (x_TxBxH - mu) / jnp.sqrt(var + 1e-5) * p["ln_scale"] + p["ln_bias"]
    y = jax.nn.gelu(_recur(p, variant, z) + p["d"] * z)
    g = y @ p["glu_w"] + p["glu_b"]
    h = g.shape[-1] // 2
    return x_TxBxH + g[..., :h] * jax.nn.sigmoid(g[..., h:])


def init(key, variant: str, size: dict) -> dict:
    k_enc, k_dec, *k_blocks = jax.random.split(key, 2 + size["depth"])
    params = {"enc_w": _glorot(k_enc, (1, size["H"])), "enc_b": jnp.zeros((size["H"],)),
              "dec_w": _glorot(k_dec, (size["H"], 10)), "dec_b": jnp.zeros((10,)),
              "blocks": [init_block(k, variant, size["H"], size["N"]) for k in k_blocks]}
    return jax.tree.map(lambda a: a.astype(jnp.float32), params)


def logits(params: dict, variant: str, xs_TxBx1):
    x = xs_TxBx1 @ params["enc_w"] + params["enc_b"]
    for p in params["blocks"]:
        x = _block(p, variant, x)
    return jnp.mean(x, 0) @ params["dec_w"] + params["dec_b"]


def _data():
    """{split: (xs_TxSx1 float32, labels_S)}, the pixels in rnnlab.data.digits' fixed permutation
    (the permuted_digits task's)."""
    from rnnlab.data import digits

    out = {}
    for split in ("train", "valid", "test"):
        b = digits.digits_split(split, order="permuted")
        out[split] = (jnp.asarray(b.xs_TxBxD, jnp.float32), jnp.asarray(b.targets_TxB[-1]))
    return out


def train(variant: str, lr: float, size: dict, data: dict):
    """Adam (cosine to 0, gradient norm clipped at 1) on random training
    batches, every seed at once; returns (final params per seed, {split: accuracy per seed})."""
    xs, ys = data["train"]
    n = ys.shape[0]
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adam(optax.cosine_decay_schedule(lr, size["steps"])))

    def loss(p, idx):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits(p, variant, xs[:, idx]), ys[idx]))

    def one(seed):
        k_init, k_data = jax.random.split(jax.random.key(seed))
        params = init(k_init, variant, size)

        def step(state, k):
            p, o = state
            g = jax.grad(loss)(p, jax.random.randint(k, (size["batch"],), 0, n))
            u, o = tx.update(g, o, p)
            return (optax.apply_updates(p, u), o), None

        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(k_data, size["steps"]))
        acc = {s: jnp.mean(jnp.argmax(logits(params, variant, data[s][0]), -1) == data[s][1])
               for s in ("valid", "test")}
        return params, acc

    params, acc = jax.jit(jax.vmap(one))(jnp.asarray(size["seeds"]))
    return params, {k: np.asarray(v) for k, v in acc.items()}


def run(smoke: bool) -> Result:
    from rnnlab.report import stats

    size = SMOKE if smoke else FULL
    data, variants = _data(), size["variants"]
    rows, chosen, test, eig, per_seed = [], {}, {}, {}, {}
    progress = Progress(NAME, len(variants) * len(size["rates"]))
    for i, variant in enumerate(variants):
        by_rate = {}
        for j, lr in enumerate(size["rates"]):
            params, acc = train(variant, lr, size, data)
            by_rate[lr] = (params, acc)
            rows += [{"variant": variant, "lr": lr, "seed": int(s), "valid_accuracy": float(v), "test_accuracy": float(t)}
                     for s, v, t in zip(size["seeds"], acc["valid"], acc["test"], strict=True)]
            progress(i * len(size["rates"]) + j + 1,
                     f"{variant} lr {lr:g}: valid {np.mean(acc['valid']):.3f} test {np.mean(acc['test']):.3f}")
        chosen[variant] = max(size["rates"], key=lambda lr: np.mean(by_rate[lr][1]["valid"]))  # validation only
        params, acc = by_rate[chosen[variant]]
        per_seed[variant] = [float(a) for a in acc["test"]]
        test[variant] = stats.mean_ci(per_seed[variant])
        first = jax.tree.map(lambda a: a[0], params["blocks"][0])  # seed 0, first block
        eig[variant] = {"init": eigenvalues(init(jax.random.split(jax.random.key(size["seeds"][0]))[0], variant,
                                                 size)["blocks"][0]), "trained": eigenvalues(first)}
    for r in rows:
        r["chosen"] = r["lr"] == chosen[r["variant"]]
    first, last = variants[0], variants[-1]
    checks = [Check(f"LRU's 95% interval of test accuracy above the tanh RNN's (lower end of {last}'s - upper end "
                    f"of {first}'s, {len(size['seeds'])} seeds)", test[last]["ci_low"] - test[first]["ci_high"],
                    ">", 0.0)]
    numbers = {"test_accuracy": test, "chosen_lr": chosen,
               "chosen_by": "on the validation split (mean accuracy over the seeds; every rate's runs in the CSV)",
               "largest_modulus_trained": {v: float(np.max(np.abs(eig[v]["trained"]))) for v in variants},
               "eigenvalues": {v: {k: {"re": np.real(e).round(5), "im": np.imag(e).round(5)} for k, e in d.items()}
                               for v, d in eig.items()}}
    settings = {"task": "permuted pixel-by-pixel 8x8 digits (T = 64), sklearn's digits, "
                        "splits of rnnlab.data.digits (1257 train / 180 valid / 360 test)",
                "model": f"encoder 1 -> {size['H']}, {size['depth']} residual blocks (LayerNorm, recurrence with "
                         f"N = {size['N']} states, GeLU, GLU), mean pool, decoder -> 10",
                "variants": {v: LABELS[v] for v in variants}, "ring": [R_MIN, R_MAX], "seeds": list(size["seeds"]),
                "optimizer": f"Adam, cosine to 0, clip 1, batch {size['batch']}, {size['steps']} steps",
                "rates": list(size["rates"]), "choice": "each variant's rate by mean validation accuracy"}
    return Result(settings=settings, checks=checks, numbers=numbers, rows=rows, figure=_figure(eig, test, per_seed, variants))


def _figure(eig, test, per_seed, variants):
    from rnnlab.report import style

    plt = style.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), gridspec_kw={"width_ratios": [1, 1, 1.6], "wspace": 0.3})
    circle = np.exp(1j * np.linspace(0, 2 * np.pi, 400))
    dense = "linear" if "linear" in variants else variants[0]  # a dense A: its eigenvalues fill the disk
    for ax, variant in zip(axes[:2], (dense, variants[-1]), strict=True):
        ax.plot(circle.real, circle.imag, "k-", lw=0.8)
        for key, style_kw in (("init", {"marker": "o", "mfc": "none", "color": "C0"}),
                              ("trained", {"marker": ".", "color": "C3"})):
            e = eig[variant][key]
            ax.plot(e.real, e.imag, ls="none", ms=5, label=f"{key}: max |lambda| {np.max(np.abs(e)):.3f}", **style_kw)
        ax.set_aspect("equal")
        ax.set_xlim(-1.25, 1.25), ax.set_ylim(-1.25, 1.25)
        ax.set_xlabel("Re lambda"), ax.set_ylabel("Im lambda")
        ax.set_title(f"eigenvalues: {SHORT[variant]}")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=7, ncol=2)
    ax = axes[2]
    means = [test[v]["mean"] for v in variants]
    err = np.array([[test[v]["mean"] - test[v]["ci_low"], test[v]["ci_high"] - test[v]["mean"]] for v in variants]).T
    ax.bar(range(len(variants)), means, yerr=err, capsize=4, color=[f"C{VARIANTS.index(v)}" for v in variants])
    for i, v in enumerate(variants):  # each seed
        ax.plot(i + np.linspace(-0.15, 0.15, len(per_seed[v])), per_seed[v], "k.", ms=4)
    ax.set_xticks(range(len(variants)), [TICKS[v] for v in variants], fontsize=8)
    ax.set_ylim(max(0.0, min(min(a) for a in per_seed.values()) - 0.1), 1.0)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"ablation path, permuted pixel digits: mean, 95% CI, {test[variants[0]]['n']} seeds (dots)")
    return fig
