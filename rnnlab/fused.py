"""Fused recurrent layers: a ``jax.custom_vjp`` around the whole recurrence.

What autodiff of ``lax.scan`` does in the backward pass, per step: the state
gradient through ``h @ W_h`` AND the weight gradient ``h_t^T @ dgates_t``, added
into an H x G accumulator that is read and written every step (1 MB per step for
H=256 LSTM). What cuDNN does, and this module: the backward loop carries only the
state gradients (dh, dc) and emits each step's gate gradients; after the loop the
weight gradient is ONE (H x T*B) @ (T*B x G) GEMM. The input projection stays
hoisted (``x @ W_x + b`` for all steps), so its gradients are already single GEMMs
by ordinary autodiff.

A cell opts in with three functions (the ``FusedCell`` protocol of
``cells/_common.py``; see ``cells/lstm.py``, ``cells/gru.py``)::

    fused_forward(params, carry_in, xp_BxG, hm_BxH) -> (carry, h_BxH, acts_BxA)
    fused_backward(params, carry_in, acts_BxA, h_mask_BxH, d_carry, dy_BxH)
        -> (d_carry_in, dxp_BxG, dhw_BxG)   # dhw: gradient w.r.t. hm @ W_h; None: = dxp
    fused_param_grads(params, hm_TxBxH, dhw_TxBxG) -> grads of RECURRENT_PARAMS

and a tuple ``RECURRENT_PARAMS`` naming the parameters the recurrence reads
(the others only enter through ``precompute``). This module reads them from the
cell's checked record (``cell.spec.fused``), with the cell's options bound.

``store``: 'activations' keeps each step's gate activations for the backward
pass (memory O(T*B*G), fastest); 'recompute' keeps only the carries and
recomputes the gates, matmul included, in the backward loop (O(T*B*H) memory,
about one more step matmul per step).
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp

from rnnlab import native as native_lib
from rnnlab.cells._common import Array, Carry, Params

STORES = ("activations", "recompute")


def supports(cell) -> bool:
    """Whether ``cell`` (a ``cells.Cell`` with options bound) provides a fused
    layer for its options (a cell may offer one for some options only, through
    ``fused_available(**options)``)."""
    return cell.has_fused


def _where(mask_B, a, b):
    return jax.tree.map(lambda x, y: jnp.where(mask_B[:, None], x, y), a, b)


def _h_in(carry) -> Array:
    """The state that enters the recurrent matmul: h (the last leaf: LSTM (c, h), GRU h)."""
    return jax.tree.leaves(carry)[-1]


def run(cell, params: Params, carry0: Carry, xp_TxBxG: Array | None, *, reset_TxB: Array | None,
        valid_TxB: Array | None, reverse: bool, h_mask_BxH: Array | None, unroll: int = 1,
        store: str = "activations", carry_reset: Carry | None = None,
        xs_TxBxD: Array | None = None, native: bool = False) -> tuple[Carry, Array]:
    """The recurrence of ``scan.run`` (resets, lengths, reverse, recurrent dropout
    mask) with the fused backward. ``xp_TxBxG`` is the hoisted precompute. Masks
    that are None cost nothing: the loops are traced without them. A reset step
    starts again from ``carry_reset`` (default ``carry0``; a rematerialised chunk
    passes the sequence's carry0). With ``native`` (``scan.choose_path`` decides it) the
    whole layer, input projection included, runs in the native CPU code
    (``rnnlab.native``) from the inputs ``xs_TxBxD``, and ``xp_TxBxG`` may be None."""
    if store not in STORES:
        raise ValueError(f"fused store must be one of {STORES}, got {store!r}")
    carry_reset = carry0 if carry_reset is None else carry_reset
    if native:
        if xs_TxBxD is None or store != "activations":
            raise ValueError("fused.run(native=True) takes the inputs xs_TxBxD and store='activations'")
        layer = _native_layer(cell, reverse, unroll, native_lib.settings())
        return layer(params, carry0, carry_reset, xs_TxBxD, reset_TxB, valid_TxB, h_mask_BxH)
    if xp_TxBxG is None:
        xp_TxBxG = cell.precompute(params, xs_TxBxD)
    rec = {k: params[k] for k in cell.spec.fused.recurrent_params}
    fn = _fused(cell, reverse, unroll, store)
    return fn(rec, carry0, carry_reset, xp_TxBxG, reset_TxB, valid_TxB, h_mask_BxH)


def _pack(carry_in, acts) -> Array:
    """What one step keeps for the backward pass, as ONE array (one dynamic-update-slice
    per step in the forward loop, one dynamic-slice in the backward loop)."""
    return jnp.concatenate([*jax.tree.leaves(carry_in), *([] if acts is None else [acts])], axis=-1)


def _unpack(saved_BxA, carry_like):
    leaves, treedef = jax.tree.flatten(carry_like)
    cuts = list(itertools.accumulate(leaf.shape[-1] for leaf in leaves))
    parts = jnp.split(saved_BxA, cuts, axis=-1)
    return jax.tree.unflatten(treedef, parts[: len(leaves)]), parts[len(leaves)]


@functools.cache
def _loops(cell, reverse: bool, unroll: int, store: str):
    """The XLA forward and backward loops of the fused layer, and the recurrent
    parameter gradients from the backward loop's outputs."""
    # Imported here, not at the top: scan.py imports this module; every scan lives in scan.py.
    from rnnlab.scan import loop

    fused = cell.spec.fused
    fused_forward, fused_backward, fused_param_grads = (
        cell.bind(fn) for fn in (fused.forward, fused.backward, fused.param_grads))

    def forward_loop(rec, carry0, carry_reset, xp, reset, valid, mask):
        """-> (carry_T, ys_TxBxH, saved_TxBxA), saved as ``_pack`` lays it out"""
        def body(carry, inp):
            xp_t, r_t, v_t = inp
            carry_in = carry if r_t is None else _where(r_t, carry_reset, carry)
            hm = _h_in(carry_in) if mask is None else _h_in(carry_in) * mask
            new, h, acts = fused_forward(rec, carry_in, xp_t, hm)
            new = jax.tree.map(lambda n, o: n.astype(o.dtype), new, carry_in)
            if v_t is not None:
                new = _where(v_t, new, carry_in)
                h = jnp.where(v_t[:, None], h, jnp.zeros_like(h))
            return new, (h, _pack(carry_in, acts if store == "activations" else None))

        carry_T, (ys, saved) = loop(body, carry0, (xp, reset, valid), unroll=unroll, reverse=reverse)
        return carry_T, ys, saved

    def backward_loop(rec, carry0, xp, reset, valid, mask, saved, d_carry_T, dys):
        """-> (d_carry0, d_carry_reset, dxp_TxBxG, dhw_TxBxG or None); xp is only read
        (and may be None) with store='activations'"""
        zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)
        ones_mask = jnp.ones_like(_h_in(carry0), dys.dtype) if mask is None else mask

        def body(state, inp):
            d_carry, d_reset = state
            xp_t, r_t, v_t, dy_t, saved_t = inp
            carry_in, acts = _unpack(saved_t, carry0)
            if store == "recompute":
                hm = _h_in(carry_in) if mask is None else _h_in(carry_in) * mask
                _, _, acts = fused_forward(rec, carry_in, xp_t, hm)
            d_pass = None
            if v_t is not None:  # past a sequence's end the carry passed through unchanged
                d_pass = _where(v_t, zeros(d_carry), d_carry)
                d_carry = _where(v_t, d_carry, zeros(d_carry))
                dy_t = jnp.where(v_t[:, None], dy_t, jnp.zeros_like(dy_t))
            d_in, dxp, dhw = fused_backward(rec, carry_in, acts, ones_mask, d_carry, dy_t)
            if d_pass is not None:
                d_in = jax.tree.map(jnp.add, d_in, d_pass)
            if r_t is not None:  # a reset step read carry_reset, not the previous carry
                d_reset = jax.tree.map(lambda a, d: a + jnp.where(r_t[:, None], d, 0), d_reset, d_in)
                d_in = _where(r_t, zeros(d_in), d_in)
            return (d_in, d_reset), (dxp, dhw)

        xp_in = xp if store == "recompute" else None
        (d_carry0, d_reset), (dxp, dhw) = loop(
            body, (d_carry_T, zeros(carry0)), (xp_in, reset, valid, dys, saved), unroll=unroll, reverse=not reverse)
        return d_carry0, d_reset, dxp, dhw

    def recurrent_grads(rec, carry0, mask, saved, dxp, dhw):
        carries_in, _ = _unpack(saved, carry0)
        hm_TxBxH = _h_in(carries_in) if mask is None else _h_in(carries_in) * mask  # what entered the matmul
        return fused_param_grads(rec, hm_TxBxH, dxp if dhw is None else dhw)

    return forward_loop, backward_loop, recurrent_grads


def _instantiate(d_carry_T, carry0):
    return jax.tree.map(lambda d, c: jnp.zeros_like(c) if d is None else d, d_carry_T, carry0)


@functools.cache
def _fused(cell, reverse: bool, unroll: int, store: str):
    """The fused layer over the hoisted precompute xp: differentiable in (rec, carry0,
    carry_reset, xp)."""
    forward_loop, backward_loop, recurrent_grads = _loops(cell, reverse, unroll, store)

    @jax.custom_vjp
    def f(rec, carry0, carry_reset, xp, reset, valid, mask):
        carry_T, ys, _ = forward_loop(rec, carry0, carry_reset, xp, reset, valid, mask)
        return carry_T, ys

    def f_fwd(rec, carry0, carry_reset, xp, reset, valid, mask):
        carry_T, ys, saved = forward_loop(rec, carry0, carry_reset, xp, reset, valid, mask)
        return (carry_T, ys), (rec, carry0, xp, reset, valid, mask, saved)

    def f_bwd(res, cotangents):
        rec, carry0, xp, reset, valid, mask, saved = res
        d_carry_T, dys = cotangents
        d_carry0, d_reset, dxp, dhw = backward_loop(rec, carry0, xp, reset, valid, mask, saved,
                                                    _instantiate(d_carry_T, carry0), dys)
        d_rec = recurrent_grads(rec, carry0, mask, saved, dxp, dhw)
        d_mask = None if mask is None else jnp.zeros_like(mask)  # a dropout mask is not trained
        return (d_rec, d_carry0, d_reset, dxp.astype(xp.dtype), None, None, d_mask)

    f.defvjp(f_fwd, f_bwd)
    return f


@functools.cache
def _native_layer(cell, reverse: bool, unroll: int, setting: tuple):
    """The whole layer, input projection included, differentiable in (params, carry0,
    carry_reset, xs): on the CPU one native call forward (projection, loop) and one
    backward (loop, then d xs and every weight gradient as GEMMs over all T*B rows);
    elsewhere (``platform_dependent``) the same function from the XLA loops, with the
    same residuals. ``setting``: ``native.settings()``'s, with which the calls are made
    (a key of this cache: JAX keeps the traced rules of each custom_vjp function)."""
    forward_loop, backward_loop, recurrent_grads = _loops(cell, reverse, unroll, "activations")
    recurrent = cell.spec.fused.recurrent_params

    def xla_forward(params, carry0, carry_reset, xs, reset, valid, mask):
        rec = {k: params[k] for k in recurrent}
        return forward_loop(rec, carry0, carry_reset, cell.precompute(params, xs), reset, valid, mask)

    def native_forward(params, carry0, carry_reset, xs, reset, valid, mask):
        return native_lib.forward(cell.name, params, carry0, carry_reset, xs, reset, valid, mask, reverse,
                                  setting=setting)

    def forward(*args):
        return jax.lax.platform_dependent(*args, cpu=native_forward, default=xla_forward)

    def native_infer(params, carry0, carry_reset, xs, reset, valid, mask):  # no backward pass: nothing kept
        return native_lib.forward(cell.name, params, carry0, carry_reset, xs, reset, valid, mask, reverse,
                                  keep=False, setting=setting)[:2]

    def infer(*args):
        return jax.lax.platform_dependent(*args, cpu=native_infer, default=lambda *a: xla_forward(*a)[:2])

    def xla_backward(params, carry0, xs, reset, valid, mask, saved, d_carry_T, dys):
        rec = {k: params[k] for k in recurrent}
        d_carry0, d_reset, dxp, dhw = backward_loop(rec, carry0, None, reset, valid, mask, saved, d_carry_T, dys)
        d_rec = recurrent_grads(rec, carry0, mask, saved, dxp, dhw)
        _, vjp = jax.vjp(cell.precompute, params, xs)
        d_params, dxs = vjp(dxp.astype(xs.dtype))
        return {**d_params, **d_rec}, d_carry0, d_reset, dxs

    def native_backward(params, carry0, xs, reset, valid, mask, saved, d_carry_T, dys):
        return native_lib.backward(cell.name, params, xs, saved, dys, d_carry_T, reset, valid, mask, reverse,
                                   setting=setting)

    @jax.custom_vjp
    def f(params, carry0, carry_reset, xs, reset, valid, mask):
        return infer(params, carry0, carry_reset, xs, reset, valid, mask)

    def f_fwd(params, carry0, carry_reset, xs, reset, valid, mask):
        carry_T, ys, saved = forward(params, carry0, carry_reset, xs, reset, valid, mask)
        return (carry_T, ys), (params, carry0, xs, reset, valid, mask, saved)

    def f_bwd(res, cotangents):
        params, carry0, xs, reset, valid, mask, saved = res
        d_carry_T, dys = cotangents
        args = (params, carry0, xs, reset, valid, mask, saved, _instantiate(d_carry_T, carry0), dys)
        d_params, d_carry0, d_reset, dxs = jax.lax.platform_dependent(*args, cpu=native_backward,
                                                                       default=xla_backward)
        d_mask = None if mask is None else jnp.zeros_like(mask)  # a dropout mask is not trained
        return (d_params, d_carry0, d_reset, dxs, None, None, d_mask)

    f.defvjp(f_fwd, f_bwd)
    return f


def weight_grad(hm_TxBxH: Array, dhw_TxBxG: Array) -> Array:
    """d loss / d W_h as ONE GEMM over all T*B rows (the point of fusing)."""
    t, b, h = hm_TxBxH.shape
    return hm_TxBxH.reshape(t * b, h).T @ dhw_TxBxG.reshape(t * b, -1)
