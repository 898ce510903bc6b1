"""Pascanu, Mikolov & Bengio 2013, "On the difficulty of training recurrent neural
networks", Figure 6: the loss surface of a one-unit recurrent network has a cliff, a
wall where the gradient is orders of magnitude larger than around it, and a
gradient step that lands on the wall is thrown far away unless its norm is clipped.

The model is theirs with tanh for their sigmoid: x_t = w tanh(x_{t-1}) + b, x_0 = 0.5,
L = (x_50 - 0.7)^2. For w > 1 the map has two stable fixed points; where the basin
boundary passes x_0 the state x_50 jumps from one branch to the other as b changes,
so L has a step and dL/d(w, b) a spike."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments.gradient_gallery.common import Check, Result

NAME = "cliff"
TITLE = "Pascanu et al. 2013: the cliff of a one-unit RNN, and clipping"
CLAIM = ("The loss of a one-unit recurrent net has walls where the gradient is orders of magnitude "
         "larger than elsewhere; a gradient step on a wall jumps far, and norm clipping keeps it small.")

X0, TARGET, T = 0.5, 0.7, 50
W_RANGE, B_RANGE = (0.0, 4.0), (-3.0, 1.0)


def final_state(w, b, n_steps: int = T):
    x = jnp.full(jnp.broadcast_shapes(jnp.shape(w), jnp.shape(b)), X0, jnp.result_type(w, b))
    x, _ = jax.lax.scan(lambda x, _: (w * jnp.tanh(x) + b, None), x, None, length=n_steps)
    return x


def loss(theta):
    return (final_state(theta[0], theta[1]) - TARGET) ** 2


def descend(theta0, lr: float, n_steps: int, clip: float = 0.0):
    """Plain gradient descent on ``loss`` from ``theta0``; with ``clip`` > 0 each gradient
    is rescaled to norm ``clip`` when larger (Pascanu et al.'s Algorithm 1). The path."""
    grad = jax.jit(jax.grad(loss))
    path = [np.asarray(theta0, np.float64)]
    for _ in range(n_steps):
        g = np.asarray(grad(jnp.asarray(path[-1])))
        n = np.linalg.norm(g)
        if clip and n > clip:
            g = g * (clip / n)
        path.append(path[-1] - lr * g)
    return np.stack(path)


def wall_bias(w):
    """The cliff in closed form: for w > 1 the basin boundary of the map is its unstable fixed
    point u = w tanh(u) + b, so x_0 sits on the boundary where b = x_0 - w tanh(x_0)."""
    return X0 - w * np.tanh(X0)


def run(smoke: bool) -> Result:
    n = 61 if smoke else 401
    ws, bs = np.linspace(*W_RANGE, n), np.linspace(*B_RANGE, n)
    W, B = np.meshgrid(ws, bs, indexing="ij")
    grad_norm = jax.jit(jax.vmap(lambda th: jnp.linalg.norm(jax.grad(loss)(th))))
    losses = np.asarray(jax.jit(jax.vmap(loss))(jnp.stack([W.ravel(), B.ravel()], 1))).reshape(n, n)
    norms = np.asarray(grad_norm(jnp.stack([W.ravel(), B.ravel()], 1))).reshape(n, n)
    # on the wall (w > 1.25, where it is a wall and not the pitchfork's flat start) against off it (>= 0.25 away in b)
    w_wall = ws[ws > 1.25]
    on = np.asarray(grad_norm(jnp.stack([w_wall, wall_bias(w_wall)], 1)))
    off = norms[np.abs(B - wall_bias(W)) >= 0.25]
    # a descent that walks into the wall, and the same descent with each gradient clipped to norm 5 (steps <= 0.1)
    start, lr, steps, clip = np.array([3.5, 0.5]), 0.02, 80, 5.0
    plain, clipped = descend(start, lr, steps), descend(start, lr, steps, clip)
    paths = {"plain": plain, "clipped": clipped}
    jumps = {k: np.linalg.norm(np.diff(p, axis=0), axis=1) for k, p in paths.items()}
    final = {k: float(loss(jnp.asarray(p[-1]))) for k, p in paths.items()}
    checks = [
        Check("median ||grad L|| on the wall / median off it (>= 0.25 away in b)",
              float(np.median(on) / np.median(off)), ">", 1e3),
        Check("longest step of plain descent / longest clipped step (same start, rate)",
              float(jumps["plain"].max() / jumps["clipped"].max()), ">", 100.0),
        Check("loss after 80 clipped steps", final["clipped"], "<", 1e-6),
    ]
    k = int(jumps["plain"].argmax())
    numbers = {"grad_norm_on_wall_median": float(np.median(on)), "grad_norm_off_wall_median": float(np.median(off)),
               "grad_norm_on_wall_min": float(on.min()), "longest_step": {k_: float(v.max()) for k_, v in jumps.items()},
               "plain_jump": {"step": k + 1, "from": plain[k].tolist(), "to": plain[k + 1].tolist()},
               "final_loss": final, "final_point": {k_: p[-1].tolist() for k_, p in paths.items()}}
    stride = max(1, n // 100)
    rows = [{"w": float(ws[a]), "b": float(bs[c]), "loss": float(losses[a, c]), "grad_norm": float(norms[a, c])}
            for a in range(0, n, stride) for c in range(0, n, stride)]
    return Result(settings={"model": "x_t = w tanh(x_{t-1}) + b, x_0 = 0.5, L = (x_50 - 0.7)^2",
                            "grid": f"{n} x {n}", "w": list(W_RANGE), "b": list(B_RANGE),
                            "wall": "b = 0.5 - w tanh(0.5), w > 1.25",
                            "descent": f"from (w, b) = {tuple(start)}, lr {lr}, {steps} steps, clip norm {clip}"},
                  checks=checks, numbers=numbers, rows=rows,
                  figure=_figure(ws, bs, losses, norms, paths))


def _figure(ws, bs, losses, norms, paths):
    from rnnlab.report import style

    plt = style.pyplot()
    fig, (a, c) = plt.subplots(1, 2, figsize=(10, 4))
    ext = [bs[0], bs[-1], ws[0], ws[-1]]
    im = a.imshow(np.log10(losses + 1e-12), origin="lower", extent=ext, aspect="auto", cmap="viridis")
    fig.colorbar(im, ax=a, label="log10 loss")
    wall_w = ws[ws > 1.0]
    for ax in (a, c):
        ax.plot(wall_bias(wall_w), wall_w, "--", color="cyan", lw=0.8, label="wall: b = 0.5 - w tanh 0.5")
    for k, col, lab in (("plain", "red", "gradient descent"), ("clipped", "white", "clipped at norm 5")):
        p = paths[k]
        a.plot(p[:, 1], p[:, 0], "o-", color=col, ms=2, lw=1, label=lab)
    k = int(np.argmax(np.linalg.norm(np.diff(paths["plain"], axis=0), axis=1)))
    w_to, b_to = paths["plain"][k + 1]
    a.annotate(f"step {k + 1} jumps off the plot\nto (w, b) = ({w_to:.0f}, {b_to:.0f})", xy=paths["plain"][k][::-1],
               xytext=(-2.9, 3.4), color="red", fontsize=8, arrowprops={"arrowstyle": "->", "color": "red"},
               bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    a.set_xlim(ext[0], ext[1]), a.set_ylim(ext[2], ext[3])
    a.set_xlabel("b"), a.set_ylabel("w"), a.legend(loc="lower right", labelcolor="linecolor")
    a.set_title("loss (x_50 - 0.7)^2 and two descents")
    im = c.imshow(np.log10(norms + 1e-300), origin="lower", extent=ext, aspect="auto", cmap="magma", vmin=-2)
    fig.colorbar(im, ax=c, label="log10 ||grad L||")
    c.set_xlabel("b"), c.set_ylabel("w"), c.set_title("gradient norm: the wall")
    return fig
