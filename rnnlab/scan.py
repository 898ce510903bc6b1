"""The scan engine: the only place that calls ``jax.lax.scan``.

``run`` owns everything around a cell's ``step``: hoisting the time-parallel
input projection, resets at document boundaries, variable lengths, the reverse
direction, unrolling, rematerialisation and the dtype policy.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnlab import cells as cells_lib
from rnnlab.cells._common import Array, Carry, Params


def check_inputs(xs_TxBxD: Any, lengths_B: Any = None, reset_TxB: Any = None, d_in: int | None = None):
    """Raise ValueError naming the argument when inputs have the wrong shape or
    out-of-range lengths (values are checked when concrete, i.e. outside jit)."""
    shape = np.shape(xs_TxBxD)
    if len(shape) != 3:
        raise ValueError(
            f"xs_TxBxD must have rank 3 (time, batch, features), got shape {shape}; "
            "time-major: transpose a batch-major array with xs.swapaxes(0, 1)"
        )
    t, b, d = shape
    if d_in is not None and d != d_in:
        raise ValueError(f"xs_TxBxD has {d} features, expected d_in={d_in}")
    if lengths_B is not None:
        if np.shape(lengths_B) != (b,):
            raise ValueError(f"lengths_B must have shape (batch,)=({b},), got {np.shape(lengths_B)}")
        if not jnp.issubdtype(jnp.result_type(lengths_B), jnp.integer):
            raise ValueError(f"lengths_B must be integers, got dtype {jnp.result_type(lengths_B)}")
        if not isinstance(lengths_B, jax.core.Tracer):
            concrete = np.asarray(lengths_B)  # np.min(jax_array) would call its traced .min() under jit
            lo, hi = int(concrete.min()), int(concrete.max())
            if lo < 0 or hi > t:
                raise ValueError(f"lengths_B must lie in [0, T={t}], got values in [{lo}, {hi}]")
    if reset_TxB is not None and np.shape(reset_TxB) != (t, b):
        raise ValueError(f"reset_TxB must have shape (T, B)=({t}, {b}), got {np.shape(reset_TxB)}")


def _cast_floats(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def run(
    cell: cells_lib.Cell | str,
    params: Params,
    carry0: Carry,
    xs_TxBxD: Array,
    *,
    reset_TxB: Array | None = None,
    lengths_B: Array | None = None,
    reverse: bool = False,
    unroll: int = 1,
    remat: bool = False,
    compute_dtype: Any = None,
    h_mask_BxH: Array | None = None,
) -> tuple[Carry, Array]:
    """Run ``cell`` over a time-major sequence.

    Args:
      reset_TxB: True where token t starts a new document: the carry is set back
        to ``carry0`` before step t (in the reverse direction, after it).
      lengths_B: valid steps per sequence. Past its length a sequence's carry is
        frozen (the final carry is the one at its last valid step) and its
        outputs are zero; the reverse direction starts at each sequence's own end.
      reverse: run from t = T-1 down to 0; outputs stay in input order.
      unroll: steps per loop iteration of the scan (fewer loop overheads, more code).
      remat: recompute each step's activations in the backward pass instead of
        storing them (memory O(T * carry) instead of O(T * gates)).
      compute_dtype: e.g. jnp.bfloat16: matmuls and gates in that dtype; the carry
        stays in its own dtype (float32), outputs come out in compute_dtype.
      h_mask_BxH: recurrent dropout mask, one per sequence, applied to h where it
        enters the recurrent matmul (cells that accept ``h_mask_BxH``).

    Returns:
      (final carry, outputs hs_TxBxH).
    """
    cell = cells_lib.get(cell)
    w_x = params.get("w_x_DxG") if isinstance(params, dict) else None
    check_inputs(xs_TxBxD, lengths_B, reset_TxB, None if w_x is None else w_x.shape[0])
    # The carry is at least float32 and at least as wide as the parameters: a
    # float64 model keeps a float64 carry, a bfloat16 compute policy a float32 one.
    param_dtype = jnp.result_type(*[a.dtype for a in jax.tree.leaves(params)] or [jnp.float32])
    carry0 = jax.tree.map(lambda c: c.astype(jnp.promote_types(c.dtype, param_dtype)), carry0)
    if compute_dtype is not None:
        params, xs_TxBxD = _cast_floats((params, xs_TxBxD), compute_dtype)
    xp_TxBxG = cell.precompute(params, xs_TxBxD)  # hoisted: one matmul for all t
    n_steps = xs_TxBxD.shape[0]

    valid_TxB = None
    if lengths_B is not None:
        valid_TxB = jnp.arange(n_steps)[:, None] < jnp.asarray(lengths_B)[None, :]
    if reset_TxB is not None:
        reset_TxB = jnp.asarray(reset_TxB, bool)
        if reverse:  # token t+1 opens a document, so t closes the previous one
            reset_TxB = jnp.concatenate([reset_TxB[1:], jnp.zeros_like(reset_TxB[:1])])

    def body(carry, inputs):
        xp_BxG, reset_B, valid_B = inputs
        if reset_B is not None:
            carry = jax.tree.map(lambda c0, c: jnp.where(reset_B[:, None], c0, c), carry0, carry)
        new_carry, h_BxH = cell.step(params, carry, xp_BxG, h_mask_BxH)
        new_carry = jax.tree.map(lambda n, o: n.astype(o.dtype), new_carry, carry)
        if compute_dtype is not None:
            h_BxH = h_BxH.astype(compute_dtype)
        if valid_B is not None:
            new_carry = jax.tree.map(lambda n, o: jnp.where(valid_B[:, None], n, o), new_carry, carry)
            h_BxH = jnp.where(valid_B[:, None], h_BxH, jnp.zeros_like(h_BxH))
        return new_carry, h_BxH

    if remat:
        body = jax.checkpoint(body)
    return jax.lax.scan(
        body, carry0, (xp_TxBxG, reset_TxB, valid_TxB), reverse=reverse, unroll=unroll
    )


def loop(fn, carry, xs=None, length: int | None = None, unroll: int = 1):
    """``jax.lax.scan`` for loops that are not a cell over a sequence (the token
    loop of generation, beam search): kept here so every scan lives in one module."""
    return jax.lax.scan(fn, carry, xs, length=length, unroll=unroll)
