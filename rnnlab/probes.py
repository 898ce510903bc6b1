"""Gradient-flow probes: how the gradient reaching the hidden state, and the
Jacobians that carry it back in time, shrink or grow with the lag.

Every probe takes a *model*, which may be
  * a registered cell name (``'lstm'``) or a ``cells.Cell`` (options bound);
  * a ``layers.Stack`` (forward direction only: the probes follow the causal
    recurrence; dropout and ``compute_dtype`` are not applied);
  * any object with the cell contract: ``step(params, carry, xp_BxG) ->
    (carry, h_BxH)``, optionally ``precompute(params, xs_TxBxD)`` (default:
    identity) and ``initial_carry(batch, d_h)``. Where the carry is not a single
    array, the object must say which part is the output with
    ``output_of_carry(carry) -> h_BxH`` (registered cells: see ``_OUTPUT_OF_CARRY``).

Time indexing, shared by all probes: ``carry_t`` is the carry *after* step t,
t = 0..T-1 (``carry_{-1}`` is the initial carry), and the lag of step t is
``T-1-t``: lag 0 is the last state.

Shape legend as in ``rnnlab.cells._common``; R counts lags, C the flattened
per-example carry (all components, e.g. LSTM (c, h): C = 2H).

Probes are pure functions, jitted with the model (hashable: names, Cells and
Stacks are; other objects hash by identity), ``loss_fn`` and the str/int options
static: a new model or loss_fn object compiles anew.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from rnnlab import cells as cells_lib
from rnnlab.cells._common import Array, Carry, Params
from rnnlab.layers import Stack

__all__ = [
    "DecayFit", "GradNorms", "JacobianProducts", "PascanuBound",
    "carry_trajectory", "fit_decay_rate", "gate_statistics", "grad_norms_through_time",
    "jacobian_products", "pascanu_bound",
]

LossFn = Callable[[Array, Any], Array]  # (y_BxO, target for one step or None) -> loss_B

# Which component of a registered cell's carry is its output h (the cell
# contract returns h next to the carry, not as a function of it; the probes
# need h as a function of the carry so that a perturbation of the carry reaches
# the readout). Cells with a single-array carry need no entry: h is the carry.
_OUTPUT_OF_CARRY: dict[str, Callable[[Carry], Array]] = {"lstm": lambda carry: carry[1]}
_CARRY_NAMES: dict[str, tuple[str, ...]] = {"lstm": ("c", "h")}


# --------------------------------------------------------------------------- models


@dataclasses.dataclass(frozen=True)
class _Recurrence:
    """The probes' view of a model: one time step as a function of the carry,
    with a perturbation ``eps`` (carry-shaped, or None) added to each layer's
    carry right after that layer's step, so that it reaches everything
    downstream: the next layer at the same step, the readout, later steps."""

    precompute: Callable[[Params, Array], Any]  # xs_TxBxD -> the per-step input of ``step``
    step: Callable[[Params, Carry, Any, Any], tuple[Carry, Array]]  # (params, carry, xp_t, eps) -> (carry, h)
    initial_carry: Callable[[int, int | None], Carry]  # (batch, d_h) -> carry
    name_tree: Callable[[Carry], Any]  # carry -> the same tree with a component name per leaf


def _add(carry: Carry, eps: Carry | None) -> Carry:
    return carry if eps is None else jax.tree.map(jnp.add, carry, eps)


def _output_fn(model: Any) -> Callable[[Carry], Array]:
    """carry -> h (works on carries with extra leading axes, e.g. T x B x H)."""
    registered = isinstance(model, cells_lib.Cell)
    output_of = model.spec.output_of_carry if registered else None
    output_of = output_of or (_OUTPUT_OF_CARRY.get(model.name) if registered else None)
    output_of = output_of or getattr(model, "output_of_carry", None)

    def output(carry: Carry) -> Array:
        if output_of is not None:
            return output_of(carry)
        if jax.tree_util.treedef_is_leaf(jax.tree.structure(carry)):
            return carry
        raise ValueError(
            f"model {model!r}: its carry is not a single array, so the probes need to know which part "
            "is the output h; give the object an output_of_carry(carry) -> h_BxH method"
        )

    return output


def _cell_recurrence(model: Any) -> _Recurrence:
    registered = isinstance(model, cells_lib.Cell)
    names = model.spec.carry_names if registered else None
    names = names or (_CARRY_NAMES.get(model.name) if registered else None)
    precompute = getattr(model, "precompute", None) or (lambda params, xs: xs)
    output = _output_fn(model)

    def step(params, carry, xp_t, eps):
        new, _ = model.step(params, carry, xp_t)  # the contract's h is recomputed from the carry below
        carry = _add(jax.tree.map(lambda n, o: n.astype(o.dtype), new, carry), eps)  # the carry keeps its dtype
        return carry, output(carry)

    def initial_carry(batch: int, d_h: int | None) -> Carry:
        if d_h is None or not hasattr(model, "initial_carry"):
            raise ValueError(f"model {model!r}: pass carry0, or d_h for its initial_carry(batch, d_h)")
        return model.initial_carry(batch, d_h)

    def name_tree(carry: Carry) -> Any:
        leaves, treedef = jax.tree.flatten(carry)
        if names is not None and len(names) == len(leaves):
            return jax.tree.unflatten(treedef, list(names))
        if jax.tree_util.treedef_is_leaf(treedef):  # a single array (or its ShapeDtypeStruct)
            return "h"
        return jax.tree_util.tree_map_with_path(lambda path, _: "carry" + jax.tree_util.keystr(path), carry)

    return _Recurrence(precompute, step, initial_carry, name_tree)


def _stack_recurrence(stack: Stack) -> _Recurrence:
    if stack.bidirectional:
        raise ValueError("probes follow the causal recurrence; a bidirectional Stack has no single one")
    inner = _cell_recurrence(stack.cell)
    layers = [f"layer_{i}" for i in range(stack.num_layers)]

    def precompute(params, xs_TxBxD):  # layer 0's input projection, hoisted over time
        return inner.precompute(params[layers[0]]["forward"], xs_TxBxD)

    def step(params, carry, xp_t, eps):
        new, h_BxH = {}, None
        for i, layer in enumerate(layers):
            p = params[layer]["forward"]
            if i > 0:  # layers above see the layer below's (perturbed) output at the same step
                xp_t = jax.tree.map(lambda a: a[0], inner.precompute(p, h_BxH[None]))
            c, h_BxH = inner.step(p, carry[layer]["forward"], xp_t, None if eps is None else eps[layer]["forward"])
            new[layer] = {"forward": c}
        return new, h_BxH

    def initial_carry(batch: int, d_h: int | None) -> Carry:
        return {layer: {"forward": stack.cell.initial_carry(batch, stack.d_h)} for layer in layers}

    def name_tree(carry: Carry) -> Any:
        return {
            layer: {"forward": jax.tree.map(lambda n, layer=layer: f"{layer}/{n}", inner.name_tree(carry[layer]["forward"]))}
            for layer in layers
        }

    return _Recurrence(precompute, step, initial_carry, name_tree)


def _recurrence(model: Any) -> _Recurrence:
    if isinstance(model, Stack):
        return _stack_recurrence(model)
    if isinstance(model, str):
        model = cells_lib.get(model)
    if not hasattr(model, "step"):
        raise TypeError(f"model must be a cell name, a cells.Cell, a Stack or have a step method, got {model!r}")
    return _cell_recurrence(model)


def _start(rec: _Recurrence, xs_TxBxD: Array, carry0: Carry | None, d_h: int | None) -> Carry:
    """The initial carry. The default one is cast to xs's float dtype when that is
    wider than float32, so float64 probes stay float64 end to end."""
    if carry0 is not None:
        return carry0
    dtype = jnp.promote_types(jnp.float32, jnp.result_type(xs_TxBxD))
    return jax.tree.map(lambda c: c.astype(dtype), rec.initial_carry(xs_TxBxD.shape[1], d_h))


def _scan_carries(rec: _Recurrence, params: Params, carry0: Carry, xs_TxBxD: Array, eps_TxCarry: Any = None):
    """Every carry_t and output h_t, with eps_t added to carry_t.

    This is a second ``lax.scan`` next to ``scan.run`` on purpose: the probes
    need an injection point between steps and every intermediate carry, and
    ``scan.run`` has neither (it returns the final carry and the outputs only).
    It duplicates none of ``scan.run``'s job (resets, lengths, reverse, dtype
    policy, remat): a plain forward loop over the cell contract. If ``scan.run``
    grows a carry hook and a return-every-carry option, this can go.
    """
    xp = rec.precompute(params, xs_TxBxD)  # hoisted: one matmul for all t

    def body(carry, inputs):
        xp_t, eps_t = inputs
        carry, h_BxH = rec.step(params, carry, xp_t, eps_t)
        return carry, (carry, h_BxH)

    _, (carries_T, hs_TxBxH) = jax.lax.scan(body, carry0, (xp, eps_TxCarry))
    return carries_T, hs_TxBxH


@functools.partial(jax.jit, static_argnames=("model", "d_h"))
def carry_trajectory(
    model: Any, params: Params, xs_TxBxD: Array, *, carry0: Carry | None = None, d_h: int | None = None
) -> tuple[Carry, Array]:
    """(carries, hs_TxBxH): the carry after every step (leaves T x B x H, in the
    model's carry structure) and the output h_t. For a Stack, h_t is the top
    layer's output and the carry is ``{'layer_i': {'forward': carry}}``."""
    rec = _recurrence(model)
    return _scan_carries(rec, params, _start(rec, xs_TxBxD, carry0, d_h), xs_TxBxD)


def _component_names(rec: _Recurrence, carry: Carry) -> list[str]:
    return jax.tree.leaves(rec.name_tree(carry))


# --------------------------------------------------------------------------- gradients through time


class GradNorms(NamedTuple):
    norms_T: Array  # ||dL/dcarry_t||: all components, whole batch (Frobenius)
    norms_TxB: Array  # the same per example
    component_norms: dict[str, Array]  # component name (e.g. 'c', 'h', 'layer_1/h') -> norms_T
    grads: Carry  # dL/dcarry_t itself: the carry's structure, leaves T x B x H
    loss: Array  # L, the scalar that was differentiated


def _default_loss(targets: Any) -> LossFn:
    if targets is None:  # linear readout: the gradient injected at each counted step is fixed
        return lambda y_BxO, _: jnp.sum(y_BxO, axis=-1)
    return lambda y_BxO, t_BxO: 0.5 * jnp.sum((y_BxO - t_BxO) ** 2, axis=-1)


def _readout_loss(
    hs_TxBxH: Array, readout_HxO: Array, targets: Any, loss_fn: LossFn, loss_at: str, loss_mask_TxB: Array | None
) -> Array:
    ys_TxBxO = hs_TxBxH @ readout_HxO.astype(hs_TxBxH.dtype)
    if loss_at == "last":
        return jnp.mean(loss_fn(ys_TxBxO[-1], targets))
    per_step = jax.vmap(loss_fn, in_axes=(0, None if targets is None else 0))
    loss_TxB = per_step(ys_TxBxO, targets)
    mask_TxB = jnp.ones_like(loss_TxB) if loss_mask_TxB is None else jnp.asarray(loss_mask_TxB, loss_TxB.dtype)
    return jnp.sum(mask_TxB * loss_TxB) / jnp.maximum(jnp.sum(mask_TxB), 1.0)  # mean over counted steps


@functools.partial(jax.jit, static_argnames=("model", "d_h", "loss_at", "loss_fn", "n_out"))
def grad_norms_through_time(
    model: Any,
    params: Params,
    xs_TxBxD: Array,
    *,
    carry0: Carry | None = None,
    d_h: int | None = None,
    loss_at: str = "last",
    targets: Any = None,
    loss_fn: LossFn | None = None,
    loss_mask_TxB: Array | None = None,
    readout_HxO: Array | None = None,
    n_out: int = 1,
    key: Array | None = None,
) -> GradNorms:
    """||dL/dcarry_t|| for every t from ONE backward pass.

    A zero perturbation eps_t is added to the carry that each step returns
    (every component: LSTM c and h; every layer of a Stack, right after that
    layer's step); dL/deps_t = dL/dcarry_t is the total derivative w.r.t. that
    value: through the readout at t, the layers above at step t, and all later
    steps. Components are separate values: the LSTM's h_t is computed from c_t
    inside step t, before the perturbation, so dL/dc_t counts c_t's paths into
    later steps only (as in BPTT with the carry (c, h) as the state).

    The loss reads h_t out linearly, y_t = h_t @ readout_HxO (default: a fixed
    random projection N(0, 1/H), H x n_out, drawn from ``key``), then
      loss_at='last': L = mean_b loss_fn(y_{T-1}, targets)      (targets: B x ...)
      loss_at='all':  L = sum_{t,b} m_tb loss_fn(y_t, targets_t)_b / sum m   (targets: T x B x ...)
    ``loss_fn(y_BxO, target) -> loss_B``; default: sum(y) when ``targets`` is None
    (then dL/dh_{T-1} is the same for every input and the decay over lags is the
    Jacobians' alone), else 0.5 * ||y - target||^2.
    """
    if loss_at not in ("last", "all"):
        raise ValueError(f"loss_at must be 'last' or 'all', got {loss_at!r}")
    rec = _recurrence(model)
    carry0 = _start(rec, xs_TxBxD, carry0, d_h)
    n_steps = xs_TxBxD.shape[0]
    eps0 = jax.tree.map(lambda c: jnp.zeros((n_steps,) + c.shape, c.dtype), carry0)
    loss_fn = loss_fn or _default_loss(targets)
    if readout_HxO is None:
        _, hs = jax.eval_shape(lambda: _scan_carries(rec, params, carry0, xs_TxBxD))
        k = jax.random.PRNGKey(0) if key is None else key
        readout_HxO = jax.random.normal(k, (hs.shape[-1], n_out), hs.dtype) / math.sqrt(hs.shape[-1])

    def loss_of(eps_TxCarry):
        _, hs_TxBxH = _scan_carries(rec, params, carry0, xs_TxBxD, eps_TxCarry)
        return _readout_loss(hs_TxBxH, readout_HxO, targets, loss_fn, loss_at, loss_mask_TxB)

    loss, grads = jax.value_and_grad(loss_of)(eps0)
    sq_TxB = [jnp.sum(g.reshape(g.shape[:2] + (-1,)) ** 2, axis=-1) for g in jax.tree.leaves(grads)]
    names = _component_names(rec, carry0)
    component_norms = {n: jnp.sqrt(jnp.sum(s, axis=1)) for n, s in zip(names, sq_TxB, strict=True)}
    total_TxB = sum(sq_TxB)
    return GradNorms(
        norms_T=jnp.sqrt(jnp.sum(total_TxB, axis=1)),
        norms_TxB=jnp.sqrt(total_TxB),
        component_norms=component_norms,
        grads=grads,
        loss=loss,
    )


def task_grad_norms(model: Any, params: Params, xs_TxBxD: Array, targets_TxB: Array, mask_TxB: Array) -> GradNorms:
    """||dL/dcarry_t|| for a sequence model's own task loss L (its readout, bias
    and loss: an ``rnnlab.models.seq.SeqModel``, or anything with ``stack``,
    ``loss`` ('mse' | 'ce') and ``readout`` ('all' | 'last') and its params
    ``{'stack', 'out_w_HxO', 'out_b_O'}``), from ``grad_norms_through_time``.
    Last-step tasks differentiate the loss at step T-1; others the masked mean
    over steps, so ``.loss`` equals ``model.loss_and_metrics(...)[0]``.

    Example: ``probes.task_grad_norms(model, params, xs, targets, mask).norms_T``."""
    w, b = params["out_w_HxO"], params["out_b_O"]
    if model.loss == "mse":  # (y + b - t)^2 = (y - (t - b))^2: the bias folds into the target
        loss_fn, targets = _squared_error, (targets_TxB - b[0])[..., None]
    else:
        loss_fn = _cross_entropy
        targets = (targets_TxB, jnp.broadcast_to(b, targets_TxB.shape + b.shape))
    if model.readout == "last":
        targets = jax.tree.map(lambda a: a[-1], targets)
        return grad_norms_through_time(
            model.stack, params["stack"], xs_TxBxD, loss_at="last", targets=targets, loss_fn=loss_fn,
            readout_HxO=w,
        )
    return grad_norms_through_time(
        model.stack, params["stack"], xs_TxBxD, loss_at="all", targets=targets, loss_fn=loss_fn,
        loss_mask_TxB=mask_TxB, readout_HxO=w,
    )


def _squared_error(y_BxO: Array, t_BxO: Array) -> Array:
    return jnp.sum((y_BxO - t_BxO) ** 2, axis=-1)


def _cross_entropy(y_BxO: Array, labels_and_bias: tuple[Array, Array]) -> Array:
    labels_B, b_BxO = labels_and_bias
    return optax.softmax_cross_entropy_with_integer_labels(y_BxO + b_BxO, labels_B)


# --------------------------------------------------------------------------- Jacobians


class JacobianProducts(NamedTuple):
    lags_R: Array  # k = 1..R
    spectral_norms_RxB: Array  # ||d carry_{T-1} / d carry_{T-1-k}||_2 per example (whole carry)
    singular_values_RxBxC: Array  # of the same matrices, descending
    block_norms_RxB: dict[str, Array]  # component -> spectral norm of its diagonal block, e.g. ||dh_{T-1}/dh_{T-1-k}||
    step_norms_TxB: Array  # ||J_t||_2, J_t = d carry_t / d carry_{t-1}
    step_jacobians_TxBxCxC: Array  # J_t per example
    products_RxBxCxC: Array  # J_{T-1} ... J_{T-k} per example
    components: dict[str, tuple[int, int]]  # component -> [start, stop) in the flattened carry (C axis)


def jacobian_products(
    model: Any,
    params: Params,
    xs_TxBxD: Array,
    *,
    carry0: Carry | None = None,
    d_h: int | None = None,
    max_lag: int | None = None,
) -> JacobianProducts:
    """Step Jacobians J_t = d carry_t / d carry_{t-1} (per example, forward-mode
    through one step of the contract at the carries the forward pass visits),
    their running products d carry_{T-1} / d carry_{T-1-k} for lags k = 1..R
    (R = ``max_lag`` or T; lag T is the derivative w.r.t. the initial carry), and
    the products' singular values.

    The carry is flattened per example in its tree order (LSTM: c then h; a
    Stack: layer by layer); ``components`` names the blocks. ``block_norms_RxB``
    holds each component's diagonal block, e.g. 'h': d h_{T-1} / d h_{T-1-k}
    with the other components held fixed. Memory: T x B x C^2 numbers.
    """
    rec = _recurrence(model)
    example = jax.eval_shape(lambda: jax.tree.map(lambda c: c[0], _start(rec, xs_TxBxD, carry0, d_h)))
    components, start = {}, 0  # static Python ints, so built outside the jitted part
    for name, leaf in zip(_component_names(rec, example), jax.tree.leaves(example), strict=True):
        components[name] = (start, start + leaf.size)
        start += leaf.size
    jp = _jacobian_products(model, params, xs_TxBxD, carry0, d_h, max_lag, tuple(components.items()))
    return jp._replace(components=components)


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6))
def _jacobian_products(model, params, xs_TxBxD, carry0, d_h, max_lag, components) -> JacobianProducts:
    rec = _recurrence(model)
    carry0 = _start(rec, xs_TxBxD, carry0, d_h)
    n_steps = xs_TxBxD.shape[0]
    n_lags = n_steps if max_lag is None else min(max_lag, n_steps)
    carries_T, _ = _scan_carries(rec, params, carry0, xs_TxBxD)
    prev_TxCarry = jax.tree.map(lambda c0, c: jnp.concatenate([c0[None], c[:-1]]), carry0, carries_T)
    xp_T = rec.precompute(params, xs_TxBxD)

    example0 = jax.tree.map(lambda c: c[0], carry0)
    _, unravel = ravel_pytree(example0)

    def flat(carry_example):
        return ravel_pytree(carry_example)[0]

    def step_C(carry_C, xp_example):  # one example as a batch of one
        batch1 = jax.tree.map(lambda a: a[None], unravel(carry_C))
        new, _ = rec.step(params, batch1, jax.tree.map(lambda a: a[None], xp_example), None)
        return flat(jax.tree.map(lambda a: a[0], new))

    prev_TxBxC = jax.vmap(jax.vmap(flat))(prev_TxCarry)
    step_jac = jax.vmap(jax.vmap(jax.jacfwd(step_C)))(prev_TxBxC, xp_T)  # T x B x C x C

    # Products by lag: P_k = J_{T-1} J_{T-2} ... J_{T-k}, a prefix product over
    # the reversed Jacobians (matrix product is associative, so a parallel scan).
    recent_RxBxCxC = step_jac[::-1][:n_lags]
    products = jax.lax.associative_scan(jnp.matmul, recent_RxBxCxC, axis=0)

    sv = jnp.linalg.svd(products, compute_uv=False)
    block_norms = {
        name: jnp.linalg.norm(products[..., lo:hi, lo:hi], ord=2, axis=(-2, -1)) for name, (lo, hi) in components
    }
    return JacobianProducts(
        lags_R=jnp.arange(1, n_lags + 1, dtype=jnp.int32),
        spectral_norms_RxB=sv[..., 0],
        singular_values_RxBxC=sv,
        block_norms_RxB=block_norms,
        step_norms_TxB=jnp.linalg.norm(step_jac, ord=2, axis=(-2, -1)),
        step_jacobians_TxBxCxC=step_jac,
        products_RxBxCxC=products,
        components=None,  # filled in by jacobian_products
    )


# --------------------------------------------------------------------------- gates

SIGMOID_SATURATION = (0.1, 0.9)  # a sigmoid gate below / above these is saturated
TANH_SATURATION = 0.9  # a tanh unit with |value| above this is saturated


def step_gates(cell: cells_lib.Cell, params: Params, xp_TxBxG: Array, prev_T: Carry):
    """The cell's ``gates`` at every step t from carry_{t-1} (``prev_T``), stacked over T."""
    kinds: dict[str, str] = {}
    memory = []

    def one(c, x):
        gates, memory_gate = cell.gates(params, c, x)
        kinds.update({k: kind for k, (kind, _) in gates.items()})  # Python values: the same at every step
        memory.append(memory_gate)
        return {k: v for k, (_, v) in gates.items()}

    values = jax.vmap(one)(prev_T, xp_TxBxG)
    return {k: (kinds[k], v) for k, v in values.items()}, memory[0]


def _gate_summary(gates: dict[str, tuple[str, Array]], memory_gate: str | None) -> dict[str, Array]:
    stats: dict[str, Array] = {}
    lo, hi = SIGMOID_SATURATION
    for name, (kind, v) in gates.items():
        stats[f"{name}/mean"] = jnp.mean(v)
        if kind == "sigmoid":
            stats[f"{name}/saturated_low"] = jnp.mean(v < lo)
            stats[f"{name}/saturated_high"] = jnp.mean(v > hi)
            stats[f"{name}/saturated"] = jnp.mean((v < lo) | (v > hi))
        elif kind == "tanh":
            stats[f"{name}/saturated"] = jnp.mean(jnp.abs(v) > TANH_SATURATION)
        elif kind == "relu":
            stats[f"{name}/zero"] = jnp.mean(v == 0)
        elif kind == "exp":  # a positive gate with no upper bound (exponential gating): its spread
            stats[f"{name}/max"] = jnp.max(v)
    if memory_gate is not None:
        v = gates[memory_gate][1]
        mean_H = jnp.mean(v.reshape(-1, v.shape[-1]), axis=0)
        # A gate that keeps a fraction m of the memory per step leaves m^k after k
        # steps = exp(-k / tau): tau = -1 / log m steps (inf when m = 1).
        stats["memory_gate_mean"] = jnp.mean(v)
        stats["memory_time"] = -1.0 / jnp.log(jnp.mean(v))
        stats["memory_time_H"] = -1.0 / jnp.log(mean_H)
    return stats


@functools.partial(jax.jit, static_argnames=("model", "d_h"))
def gate_statistics(
    model: Any, params: Params, xs_TxBxD: Array, *, carry0: Carry | None = None, d_h: int | None = None
) -> dict[str, Array]:
    """Gate usage over the sequence, as a flat dict for logging.

    For every gate g: ``g/mean``; sigmoid gates: ``g/saturated`` (fraction of
    entries < 0.1 or > 0.9) and its ``_low`` / ``_high`` parts; tanh units:
    ``g/saturated`` (|value| > 0.9); exponential gates: ``g/max``. The gates are the
    cell's own (its optional ``gates(params, carry, xp_BxG)``, see
    ``rnnlab/cells/_common.py``): LSTM i, f, g, o and tanh(c_t); GRU r, z, n; Elman h
    (tanh; ``h/zero`` for relu); mLSTM o, f, i. ``memory_gate_mean`` is the mean of
    the gate the cell names as keeping memory (LSTM f, GRU z), ``memory_time`` the
    memory time it implies, tau = -1/log(mean) steps, ``memory_time_H`` the same per
    unit. A Stack's keys are prefixed ``layer_i/``. A cell without ``gates`` (or an
    unregistered object) gives an empty dict.
    """
    if isinstance(model, Stack):
        cell = model.cell
        layers = [f"layer_{i}" for i in range(model.num_layers)]
        cell_params = [params[layer]["forward"] for layer in layers]
    else:
        cell = cells_lib.get(model) if isinstance(model, str) else model
        layers, cell_params = [None], [params]
    if not isinstance(cell, cells_lib.Cell) or not cell.has_gates:
        return {}
    rec = _recurrence(model)
    carry0 = _start(rec, xs_TxBxD, carry0, d_h)
    carries_T, _ = _scan_carries(rec, params, carry0, xs_TxBxD)
    stats: dict[str, Array] = {}
    inputs_TxBxD = xs_TxBxD
    for layer, p in zip(layers, cell_params, strict=True):
        c0, cs = (carry0, carries_T) if layer is None else (carry0[layer]["forward"], carries_T[layer]["forward"])
        prev = jax.tree.map(lambda a0, a: jnp.concatenate([a0[None], a[:-1]]), c0, cs)
        gates, memory_gate = step_gates(cell, p, cell.precompute(p, inputs_TxBxD), prev)
        prefix = "" if layer is None else f"{layer}/"
        stats.update({prefix + k: v for k, v in _gate_summary(gates, memory_gate).items()})
        inputs_TxBxD = _output_fn(cell)(cs)  # the next layer's input: this layer's h_t for all t
    return stats


# --------------------------------------------------------------------------- bounds and fits


class PascanuBound(NamedTuple):
    sigma_max: Array  # largest singular value of W_hh
    gamma: float  # bound on the activation's derivative (tanh, relu: 1)
    per_step: Array  # gamma * sigma_max >= ||dh_t / dh_{t-1}||_2 for every t and input
    curve_R: Array  # per_step ** k for k = 0..n_lags: bounds ||dh_T / dh_{T-k}||_2


_ACTIVATION_DERIVATIVE_BOUND = {"tanh": 1.0, "relu": 1.0}


def pascanu_bound(params: Params, cell: Any = "elman", *, n_lags: int = 100) -> PascanuBound:
    """Pascanu et al. (2013), sec. 2.1: for h_t = act(x_t W_x + h_{t-1} W_h + b),
    dh_t/dh_{t-1} = diag(act'(.)) W_h^T, so ||dh_t/dh_{t-1}||_2 <= gamma * sigma_max(W_h)
    with gamma = sup |act'|, and over k steps the bound is (gamma sigma_max)^k:
    below 1 gradients must vanish; above 1 is necessary (not sufficient) to explode.
    Elman cells only (it reads ``w_h_HxG``)."""
    cell = cells_lib.get(cell)
    if cell.name != "elman":
        raise ValueError(f"pascanu_bound is for the elman cell (h = act(x W_x + h W_h + b)), got {cell.name!r}")
    gamma = _ACTIVATION_DERIVATIVE_BOUND[dict(cell.options).get("nonlinearity", "tanh")]
    sigma_max = jnp.linalg.norm(params["w_h_HxG"], ord=2)
    per_step = gamma * sigma_max
    return PascanuBound(sigma_max, gamma, per_step, per_step ** jnp.arange(n_lags + 1, dtype=sigma_max.dtype))


class DecayFit(NamedTuple):
    rate: Array  # per-step factor r: norm ~ exp(intercept) * r ** lag
    log_rate: Array  # slope of log norm against lag (nats per step; < 0: vanishing)
    intercept: Array  # fitted log norm at lag 0
    r2: Array  # coefficient of determination of the log-linear fit
    n_points: Array  # points used


@functools.partial(jax.jit, static_argnames=("max_lag",))
def fit_decay_rate(
    norms: Array, lags: Array | None = None, *, min_lag: int = 0, max_lag: int | None = None
) -> DecayFit:
    """Least-squares fit of log(norm) = intercept + log(rate) * lag.

    ``lags`` defaults to T-1-t for ``norms`` indexed by time t, the order of
    ``GradNorms.norms_T``; pass ``lags`` for norms indexed otherwise (e.g.
    ``JacobianProducts.lags_R`` with ``spectral_norms_RxB.mean(1)``). Points that
    are zero, non-finite or outside [min_lag, max_lag] are left out, so an
    underflowed tail does not drag the fit. jit-friendly (weights, no filtering).
    """
    norms = jnp.asarray(norms)
    if lags is None:
        lags = norms.shape[0] - 1 - jnp.arange(norms.shape[0])
    x = jnp.asarray(lags, norms.dtype)
    use = jnp.isfinite(norms) & (norms > 0) & (x >= min_lag)
    if max_lag is not None:
        use = use & (x <= max_lag)
    w = use.astype(norms.dtype)
    y = jnp.where(use, jnp.log(jnp.where(use, norms, 1.0)), 0.0)
    n = jnp.sum(w)
    x_bar, y_bar = jnp.sum(w * x) / n, jnp.sum(w * y) / n
    sxx = jnp.sum(w * (x - x_bar) ** 2)
    slope = jnp.sum(w * (x - x_bar) * (y - y_bar)) / sxx
    intercept = y_bar - slope * x_bar
    ss_res = jnp.sum(w * (y - intercept - slope * x) ** 2)
    ss_tot = jnp.sum(w * (y - y_bar) ** 2)
    r2 = jnp.where(ss_tot > 0, 1.0 - ss_res / jnp.where(ss_tot > 0, ss_tot, 1.0), 1.0)
    return DecayFit(jnp.exp(slope), slope, intercept, r2, n)
