"""The scan engine: the only place that calls ``jax.lax.scan`` and
``jax.lax.associative_scan``.

``run`` owns everything around a cell's ``step``: which implementation runs
(``choose_path``, the one place that decides, and says why), hoisting the time-parallel
input projection, resets at document boundaries, variable lengths, the reverse
direction, unrolling, rematerialisation and the dtype policy. For cells whose
recurrence is linear in the state (``h_t = a_t * h_{t-1} + b_t``, elementwise;
minGRU, minLSTM, LRU, RG-LRU) it also owns the parallel path: resets, lengths
and the reverse direction are folded into the coefficients (a, b) and ONE
``associative_scan`` does the whole sequence in O(log T) depth.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnlab import cells as cells_lib
from rnnlab import fused as fused_lib
from rnnlab.cells._common import Array, Carry, Params, dense_precompute


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
    remat: bool | int = False,
    compute_dtype: Any = None,
    h_mask_BxH: Array | None = None,
    fused: bool = True,
    fused_store: str = "activations",
    path: str = "auto",
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
      remat: rematerialisation (see ``remat_chunk``): True keeps only the carry
        every ~sqrt(T) steps and recomputes each chunk in the backward pass
        (memory O(sqrt(T)) instead of O(T * gates)); an int k > 1 sets the chunk
        length; 1 recomputes each step from a stored carry.
      compute_dtype: e.g. jnp.bfloat16: matmuls and gates in that dtype; the carry
        stays in its own dtype (float32), outputs come out in compute_dtype.
      h_mask_BxH: recurrent dropout mask, one per sequence, applied to h where it
        enters the recurrent matmul (cells that accept ``h_mask_BxH``).
      fused: use the cell's fused layer (``rnnlab.fused``: a custom VJP whose
        backward loop carries only the state gradients and computes W_h's
        gradient as one GEMM) when it has one; same numbers, less time.
        Not with compute_dtype or per-step remat=1 (those take the plain scan);
        inside rematerialised chunks it is used.
      fused_store: 'activations' (keep gate activations for the backward pass)
        or 'recompute' (keep only the carries; recompute the gates).
      path: 'sequential' (a scan of ``step``), 'parallel' (one ``associative_scan``
        over the cell's linear coefficients, or a matrix-state cell's ``chunkwise``
        form; see ``rnnlab.cells``; ``unroll``/``remat`` do not apply) or 'auto':
        parallel where ``prefer_parallel`` says it is the faster (measured) path
        (linear cells at lengths measured faster; a chunkwise form from T = 8).

    Returns:
      (final carry, outputs hs_TxBxH).
    """
    cell = cells_lib.get(cell)
    _check_path(cell, path, h_mask_BxH)
    w_x = params.get("w_x_DxG") if isinstance(params, dict) else None
    check_inputs(xs_TxBxD, lengths_B, reset_TxB, None if w_x is None else w_x.shape[0])
    # The carry is at least float32 and at least as wide as the parameters: a
    # float64 model keeps a float64 carry, a bfloat16 compute policy a float32 one.
    param_dtype = jnp.result_type(*[a.dtype for a in jax.tree.leaves(params)] or [jnp.float32])
    carry0 = jax.tree.map(lambda c: c.astype(jnp.promote_types(c.dtype, param_dtype)), carry0)
    if compute_dtype is not None:
        params, xs_TxBxD = _cast_floats((params, xs_TxBxD), compute_dtype)
    n_steps = xs_TxBxD.shape[0]
    choice = choose_path(cell, params, carry0, xs_TxBxD, h_mask_BxH=h_mask_BxH, compute_dtype=compute_dtype,
                         remat=remat, fused=fused, fused_store=fused_store, path=path)
    chunk, native = choice.chunk, choice.path == "native"
    # the native CPU layer does its own input projection; otherwise it is hoisted here
    xp_TxBxG = None if native else cell.precompute(params, xs_TxBxD)  # hoisted: one matmul for all t

    valid_TxB = None
    if lengths_B is not None:
        valid_TxB = jnp.arange(n_steps)[:, None] < jnp.asarray(lengths_B)[None, :]
    if reset_TxB is not None:
        reset_TxB = jnp.asarray(reset_TxB, bool)
        if reverse:  # token t+1 opens a document, so t closes the previous one
            reset_TxB = jnp.concatenate([reset_TxB[1:], jnp.zeros_like(reset_TxB[:1])])

    if choice.path == "parallel":
        run_parallel = _run_parallel if cell.has_linear else _run_chunkwise
        carry_T, hs_TxBxH = run_parallel(cell, params, carry0, xp_TxBxG, reset_TxB, valid_TxB, reverse)
        if compute_dtype is not None:
            hs_TxBxH = hs_TxBxH.astype(compute_dtype)
        return carry_T, hs_TxBxH

    seq = dict(reverse=reverse, unroll=unroll, compute_dtype=compute_dtype, h_mask_BxH=h_mask_BxH,
               layer=choice.path, fused_store=fused_store)
    if chunk > 1:
        return _run_chunked(cell, params, carry0, xs_TxBxD, reset_TxB, valid_TxB, chunk, **seq)
    return _sequential(cell, params, carry0, carry0, xp_TxBxG, reset_TxB, valid_TxB, remat_step=chunk == 1,
                       xs_TxBxD=xs_TxBxD if native else None, **seq)


@dataclasses.dataclass(frozen=True)
class Choice:
    """The implementation ``run`` takes, and why.

    path: 'parallel' (one associative scan of a linear cell's coefficients), 'native'
      (the fused layer as the native CPU code, ``rnnlab.native``; input projection
      included), 'fused' (the XLA fused layer, ``rnnlab.fused``) or 'scan' (a
      ``jax.lax.scan`` of ``step``, autodiff through it).
    reason: what decided it, in words (argument, platform, dtype, length, environment).
    chunk: steps per rematerialised chunk (``remat_chunk``; 0: none), each chunk run
      on ``path``.
    """

    path: str
    reason: str
    chunk: int = 0


def _check_path(cell: cells_lib.Cell, path: str, h_mask_BxH: Any) -> None:
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if path == "parallel" and not cell.has_parallel:
        raise ValueError(
            f"path='parallel': cell {cell.name!r} has no linear_coefficients (its recurrence is not "
            "linear in the state) and no chunkwise form; use path='sequential' or 'auto'"
        )
    if path == "parallel" and h_mask_BxH is not None:
        raise ValueError("path='parallel' takes no h_mask_BxH (the parallel forms have no recurrent matmul)")


def choose_path(cell: cells_lib.Cell | str, params: Params, carry0: Carry, xs_TxBxD: Array, *,
                h_mask_BxH: Array | None = None, compute_dtype: Any = None, remat: bool | int = False,
                fused: bool = True, fused_store: str = "activations", path: str = "auto") -> Choice:
    """Which implementation ``run`` takes for these arguments (the same keywords), and why.
    ``run`` calls it and follows it; call it to see what a layer will do, e.g.
    ``scan.choose_path("lstm", params, carry0, xs)`` -> Choice('native', 'the native CPU ...').
    Arrays may be abstract (``jax.ShapeDtypeStruct``): only shapes and dtypes are read.
    ``carry0`` as ``run`` promotes it (at least float32 and the parameters' dtype).

    In order: ``path='parallel'`` (an argument) or, for ``path='auto'`` and a linear cell
    with no recurrent dropout mask, ``prefer_parallel`` (platform, kind of scan, length
    T): 'parallel'. Otherwise the fused layer where ``fused`` (an argument), the cell has
    one for its options, there is no ``compute_dtype`` and no per-step remat; it is
    'native' where ``fused_store='activations'``, the cell is an LSTM/GRU with the dense
    input projection, every array is float32, one device, and the native library is
    built and not switched off (``RNNLAB_NATIVE``). Else 'scan'."""
    cell = cells_lib.get(cell)
    _check_path(cell, path, h_mask_BxH)
    n_steps = xs_TxBxD.shape[0]
    chunk = remat_chunk(remat, n_steps)
    within = f" in rematerialised chunks of {chunk} steps" if chunk > 1 else ""
    if path == "parallel":
        what = ("one associative scan of its linear coefficients" if cell.has_linear
                else "its chunkwise-parallel form")
        return Choice("parallel", f"path='parallel' (argument): {cell.name}, {what}", chunk)
    if path == "auto" and cell.has_linear:
        if h_mask_BxH is not None:
            why_not = "a recurrent dropout mask (h_mask_BxH) needs the sequential path"
        else:
            xp = jax.eval_shape(cell.precompute, params, xs_TxBxD)
            kind, platform = scan_kind(cell, params, xp), jax.default_backend()
            lo, hi = _PARALLEL_STEPS.get(platform, {}).get(kind, (None, None))
            where = f"'{kind}' scan on {platform}, T={n_steps}"
            if prefer_parallel(cell, n_steps, kind=kind):
                return Choice("parallel", f"path='auto': {where} lies in the range measured faster, "
                                          f"T in [{lo}, {hi or 'any'}] (prefer_parallel)", chunk)
            measured = f"T in [{lo}, {hi or 'any'}]" if lo is not None else "no length"
            why_not = f"path='auto': {where}, and the parallel path is measured faster for {measured}"
    elif path == "auto" and cell.has_parallel:  # a chunkwise form (matrix state)
        lo, hi = _PARALLEL_STEPS.get(jax.default_backend(), {}).get("chunkwise", (None, None))
        where = f"{cell.name}'s chunkwise form on {jax.default_backend()}, T={n_steps}"
        if h_mask_BxH is None and prefer_parallel(cell, n_steps, kind="chunkwise"):
            return Choice("parallel", f"path='auto': {where} lies in the range measured faster, "
                                      f"T in [{lo}, {hi or 'any'}] (prefer_parallel)", chunk)
        why_not = f"path='auto': {where}, and the chunkwise form is measured faster for T in [{lo}, {hi or 'any'}]"
    elif path == "sequential":
        why_not = "path='sequential' (argument)"
    else:
        why_not = f"{cell.name} has no linear recurrence"
    if not fused:
        return Choice("scan", f"{why_not}; fused=False (argument): a scan of step{within}", chunk)
    if not cell.has_fused:
        return Choice("scan", f"{why_not}; {cell.name} has no fused layer for its options: a scan of step{within}",
                      chunk)
    if compute_dtype is not None:
        return Choice("scan", f"{why_not}; compute_dtype={jnp.dtype(compute_dtype).name} takes the scan of step "
                              "(the fused layers keep one dtype)", chunk)
    if chunk == 1:
        return Choice("scan", f"{why_not}; remat=1 rematerialises each step: a checkpointed scan of step", chunk)
    fused_why = f"{why_not}; the fused layer of {cell.name} (fused=True){within}"
    native_no = _native_blocker(cell, fused_store, (params, carry0, xs_TxBxD, h_mask_BxH))
    if native_no:
        return Choice("fused", f"{fused_why}, as XLA loops: {native_no}", chunk)
    platform = jax.default_backend()
    where = ("the native CPU code" if platform == "cpu" else
             f"the native layer's function, which on {platform} lowers to the XLA fused loops")
    return Choice("native", f"{fused_why}, as {where} (float32, one device, library built)", chunk)


GPU_PLATFORMS = ("gpu", "cuda", "rocm")


def choose_stack(stack, params: Params, xs_TxBxD: Array, *, reset_TxB: Array | None = None,
                 dropping: bool = False, platform: str | None = None) -> Choice:
    """How ``layers.Stack.apply`` runs a whole stack, and why: 'cudnn' (one
    ``jax.experimental.rnn.lstm`` call for every layer and direction, ``rnnlab.cudnn``)
    or 'layers' (each layer and direction through ``run``, which picks its own path
    with ``choose_path``). ``platform``: the backend to decide for (default
    ``jax.default_backend()``). Arrays may be abstract: only shapes and dtypes are read.
    cuDNN takes an LSTM stack on a GPU backend with float32 parameters, inputs and
    carries, no compute_dtype, no resets inside the sequence, no dropout inside the
    stack while training (between layers or recurrent), 'concat' merge and no remat;
    lengths are right-padding and a length of 0 is masked (``rnnlab.cudnn.apply``).
    ``RNNLAB_CUDNN=0`` (environment) switches the cuDNN path off."""
    platform = platform or jax.default_backend()
    cell = stack.cell
    blockers = []
    if platform not in GPU_PLATFORMS:
        blockers.append(f"platform {platform} (cuDNN runs on a GPU)")
    if cell.name != "lstm" or cell.spec.precompute is not dense_precompute:
        blockers.append(f"cell {cell.name} (cuDNN runs the plain LSTM with its dense input projection)")
    dtypes = {jnp.dtype(a.dtype).name for a in jax.tree.leaves((params, xs_TxBxD))}
    if dtypes != {"float32"}:
        blockers.append(f"dtype {'/'.join(sorted(dtypes))} (the cuDNN path is float32)")
    if stack.compute_dtype is not None:
        blockers.append(f"compute_dtype={jnp.dtype(stack.compute_dtype).name}")
    if reset_TxB is not None:
        blockers.append("resets inside the sequence (reset_TxB)")
    if dropping and (stack.recurrent_dropout or (stack.dropout and stack.num_layers > 1)):
        blockers.append("dropout inside the stack while training (recurrent or between layers)")
    if stack.bidirectional and stack.merge != "concat":
        blockers.append(f"merge={stack.merge!r} (cuDNN concatenates the directions)")
    if stack.remat:
        blockers.append("remat (cuDNN keeps its own workspace)")
    if os.environ.get("RNNLAB_CUDNN", "1") == "0":
        blockers.append("RNNLAB_CUDNN=0 (environment)")
    if blockers:
        return Choice("layers", "each layer and direction through scan.run: " + "; ".join(blockers))
    return Choice("cudnn", f"one cuDNN LSTM call for {stack.num_layers} layer(s)"
                           f"{', both directions' if stack.bidirectional else ''} on {platform} (float32, no "
                           "resets, no dropout inside the stack): rnnlab.cudnn")


def _native_blocker(cell: cells_lib.Cell, fused_store: str, arrays) -> str:
    """Why the fused layer does not run as native code ('' when it does)."""
    native = fused_lib.native_lib
    if fused_store != "activations":
        return f"fused_store={fused_store!r} (argument); the native code keeps activations"
    if cell.name not in native.CELLS or cell.spec.precompute is not dense_precompute:
        return f"the native code runs {'/'.join(native.CELLS)} with the dense input projection only"
    dtypes = {jnp.dtype(a.dtype).name for a in jax.tree.leaves(arrays)}
    if dtypes != {"float32"}:
        return f"dtype {'/'.join(sorted(dtypes))}; the native code is float32 only"
    if jax.device_count() != 1:
        return f"{jax.device_count()} devices; the native call would gather a sharded batch"
    if native.switched_off():
        return "RNNLAB_NATIVE=0 (environment)"
    if not native.available():
        return "the native library could not be built (see the warning)"
    return ""


def remat_chunk(remat: bool | int, n_steps: int) -> int:
    """Steps per rematerialised chunk: 0 = no remat; 1 = each step's activations
    recomputed (``jax.checkpoint`` of the step); k > 1 = the sequence cut into
    chunks of k steps, only the carry at each chunk boundary kept, and each chunk
    (its input projection included) recomputed in the backward pass. ``True``
    picks k = ceil(sqrt(T)): memory O(sqrt(T)) carries + one chunk's activations,
    compute about one more forward pass (Chen et al. 2016)."""
    if remat is False or remat is None or remat == 0:
        return 0
    if remat is True:
        return max(2, math.ceil(math.sqrt(n_steps))) if n_steps > 2 else 1
    if int(remat) < 1:
        raise ValueError(f"remat must be a bool or a chunk length >= 1, got {remat!r}")
    return min(int(remat), n_steps) if int(remat) > 1 else 1


def _run_chunked(cell, params, carry0, xs_TxBxD, reset_TxB, valid_TxB, chunk: int, **seq):
    """Chunked rematerialisation: an outer scan over chunks of ``chunk`` steps, each
    a ``jax.checkpoint``-ed call of the sequential path (fused where the cell has one).
    T is padded to a multiple of ``chunk`` with invalid steps (carry frozen, output
    zero), which the reverse direction also passes through unchanged. ``reset_TxB``
    is already shifted for the reverse direction, and every reset goes back to the
    sequence's ``carry0``, not to the chunk's first carry."""
    n_steps, batch = xs_TxBxD.shape[:2]
    n_chunks = -(-n_steps // chunk)
    pad = n_chunks * chunk - n_steps
    if pad:
        xs_TxBxD = jnp.concatenate([xs_TxBxD, jnp.zeros((pad, *xs_TxBxD.shape[1:]), xs_TxBxD.dtype)])
        live = jnp.ones((n_steps, batch), bool) if valid_TxB is None else valid_TxB
        valid_TxB = jnp.concatenate([live, jnp.zeros((pad, batch), bool)])
        if reset_TxB is not None:
            reset_TxB = jnp.concatenate([reset_TxB, jnp.zeros((pad, batch), bool)])
    split = lambda a: None if a is None else a.reshape(n_chunks, chunk, *a.shape[1:])

    @jax.checkpoint
    def one_chunk(params, carry, xs_c, reset_c, valid_c):
        if seq["layer"] == "native":  # the native layer projects its inputs itself
            return _sequential(cell, params, carry, carry0, None, reset_c, valid_c, remat_step=False,
                               xs_TxBxD=xs_c, **seq)
        xp_c = cell.precompute(params, xs_c)
        return _sequential(cell, params, carry, carry0, xp_c, reset_c, valid_c, remat_step=False, **seq)

    def body(carry, inputs):
        return one_chunk(params, carry, *inputs)

    carry_T, hs = jax.lax.scan(body, carry0, (split(xs_TxBxD), split(reset_TxB), split(valid_TxB)),
                               reverse=seq["reverse"])
    return carry_T, hs.reshape(n_chunks * chunk, *hs.shape[2:])[:n_steps]


def _sequential(cell, params, carry_init, carry_reset, xp_TxBxG, reset_TxB, valid_TxB, *, reverse, unroll,
                compute_dtype, h_mask_BxH, layer, fused_store, remat_step, xs_TxBxD=None):
    """The step-by-step recurrence from ``carry_init``; a reset step starts again
    from ``carry_reset`` (the sequence's carry0, also inside a rematerialised chunk).
    ``layer``: ``choose_path``'s 'native', 'fused' or 'scan'; ``xs_TxBxD`` is given (and
    ``xp_TxBxG`` None) for 'native'."""
    if layer in ("native", "fused"):
        return fused_lib.run(cell, params, carry_init, xp_TxBxG, reset_TxB=reset_TxB, valid_TxB=valid_TxB,
                             reverse=reverse, h_mask_BxH=h_mask_BxH, unroll=unroll, store=fused_store,
                             carry_reset=carry_reset, xs_TxBxD=xs_TxBxD, native=layer == "native")

    def body(carry, inputs):
        xp_BxG, reset_B, valid_B = inputs
        if reset_B is not None:
            carry = jax.tree.map(lambda c0, c: jnp.where(reset_B[:, None], c0, c), carry_reset, carry)
        new_carry, h_BxH = cell.step(params, carry, xp_BxG, h_mask_BxH)
        new_carry = jax.tree.map(lambda n, o: n.astype(o.dtype), new_carry, carry)
        if compute_dtype is not None:
            h_BxH = h_BxH.astype(compute_dtype)
        if valid_B is not None:
            new_carry = jax.tree.map(lambda n, o: jnp.where(valid_B[:, None], n, o), new_carry, carry)
            h_BxH = jnp.where(valid_B[:, None], h_BxH, jnp.zeros_like(h_BxH))
        return new_carry, h_BxH

    if remat_step:
        body = jax.checkpoint(body)
    return jax.lax.scan(
        body, carry_init, (xp_TxBxG, reset_TxB, valid_TxB), reverse=reverse, unroll=unroll
    )


PATHS = ("auto", "sequential", "parallel")
# path='auto': the parallel path for T in [lo, hi], per platform and kind of scan
# ('real': real coefficients in linear space; 'complex'; 'log': LOG_SPACE cells).
# See prefer_parallel for the measurements behind it.
_PARALLEL_STEPS = {
    "cpu": {"real": (256, 2048), "chunkwise": (8, None)},
    "gpu": {"real": (256, None), "complex": (256, None), "log": (256, None), "chunkwise": (8, None)},
    "tpu": {"real": (256, None), "complex": (256, None), "log": (256, None), "chunkwise": (8, None)},
}
_LOG_ZERO = -1e30  # log 0 in the log-space scan: finite, since logaddexp's gradient at -inf is NaN


def scan_kind(cell: cells_lib.Cell, params: Params, xp_TxBxG: Array) -> str:
    """'log', 'complex' or 'real': which associative scan a linear cell needs
    (abstract evaluation of its coefficients: no compute)."""
    if cell.log_space:
        return "log"
    a, _ = jax.eval_shape(cell.linear_coefficients, params, xp_TxBxG)
    return "complex" if jnp.issubdtype(a.dtype, jnp.complexfloating) else "real"


def prefer_parallel(cell: cells_lib.Cell, n_steps: int, platform: str | None = None, kind: str = "real") -> bool:
    """path='auto': whether the parallel path is the faster one for ``cell`` over
    ``n_steps`` on ``platform`` (default: JAX's default backend), ``kind`` as
    ``scan_kind`` says.

    CPU, from benchmarks/results/parallel_scan.md (B=16, D=H=128, float32, 2 CPU
    cores shared with other jobs, median of 5 interleaved repeats; speed-up =
    sequential time / parallel time, forward | forward+backward):
      RG-LRU ('real'):   T=256 2.54 | 1.95,  T=1024 1.43 | 1.05,  T=4096 1.32 | 0.95
      LRU ('complex'):   T=256 0.53 | 0.93,  T=1024 0.58 | 0.67,  T=4096 0.56 | 0.62
      minGRU ('log'):    T=256 0.42 | 0.59,  T=1024 0.41 | 0.36,  T=4096 0.35 | 0.32
      minLSTM ('log'):   T=256 1.09 | 0.40,  T=1024 0.75 | 0.37,  T=4096 0.47 | 0.41
    so on CPU only the real linear-space scan pays: parallel for 256 <= T <= 2048
    (its training-step win shrinks to a tie by 4096); the log-space and complex
    scans do several times the elementwise work per level (logaddexp, complex
    products) and lose at every length. Below 256 nothing was measured:
    sequential. GPU/TPU: parallel from T = 256 for every kind. NOT measured here
    (no accelerator was available); it is the regime the associative scan is
    for (O(log T) depth). Rerun benchmarks/parallel_scan.py there to check.

    A matrix-state cell's chunkwise form (``kind='chunkwise'``), from
    benchmarks/results/parallel_scan_mlstm.md (mLSTM, same shapes, 3 repeats):
      T=8 7.1 | 14.3,  T=100 6.6 | 16.1,  T=256 7.3 | 13.2,  T=1024 6.7 | 12.8
    (the scan of ``step`` keeps a d x d state per step for the backward pass; the
    chunkwise form keeps one per chunk), so from T = 8, the shortest length
    measured, on every platform (GPU/TPU not measured: matrix products are what
    they are for). A single step (generation) stays sequential.
    """
    if kind == "chunkwise":
        if cell.spec.chunkwise is None:
            return False
    elif not cell.has_linear:
        return False
    lo, hi = _PARALLEL_STEPS.get(platform or jax.default_backend(), {}).get(kind, (None, None))
    return lo is not None and n_steps >= lo and (hi is None or n_steps <= hi)


def _linear_operands(a, b, h0, reset, valid, first):
    """Fold resets, lengths and the initial state into h_t = a_t * h_{t-1} + b_t so
    that a scan from h_{-1} = 0 gives the answer: a reset step starts from h0
    (a_t <- 0, b_t <- a_t h0 + b_t), a step past the length keeps the state
    (a_t <- 1, b_t <- 0; or h0 when it also resets, as the sequential path does)."""
    if reset is not None:
        b = jnp.where(reset, a * h0 + b, b)
        a = jnp.where(reset, jnp.zeros_like(a), a)
    if valid is not None:
        keep_a = jnp.ones_like(a) if reset is None else jnp.where(reset, 0.0, 1.0).astype(a.dtype)
        keep_b = jnp.zeros_like(b) if reset is None else jnp.where(reset, h0, 0.0).astype(b.dtype)
        a, b = jnp.where(valid, a, keep_a), jnp.where(valid, b, keep_b)
    return a, jnp.where(first, a * h0 + b, b)


def _linear_scan(la, lb, h0, reset, valid, first, reverse):
    a, b = _linear_operands(la, lb, h0, reset, valid, first)
    combine = lambda e1, e2: (e1[0] * e2[0], e2[0] * e1[1] + e2[1])  # apply e1, then e2
    return jax.lax.associative_scan(combine, (a, b), reverse=reverse, axis=0)[1]


def _log_space_scan(log_a, log_b, h0, reset, valid, first, reverse):
    """The log-space scan of Feng et al. 2024 (minGRU/minLSTM, App. B) for
    a_t, b_t > 0: products of a become sums of logs and never underflow. It is
    composed in the log semiring with associative_scan rather than as
    cumsum + logcumsumexp, so a reset (a_t = 0) stays finite. h0 may have any
    sign: h_t = P_t * h0 + U_t, with P (the product of a since the last reset)
    and U (the h0 = 0 solution) both positive, scanned together."""
    zero = jnp.full_like(log_a, _LOG_ZERO)
    la, lp, lq = log_a, zero, log_b  # h_t = a'_t h_{t-1} + p_t h0 + q_t
    if reset is not None:
        la, lp = jnp.where(reset, zero, la), jnp.where(reset, log_a, lp)
    if valid is not None:
        keep_la = jnp.zeros_like(la) if reset is None else jnp.where(reset, zero, 0.0)
        keep_lp = zero if reset is None else jnp.where(reset, 0.0, zero)
        la, lp, lq = jnp.where(valid, la, keep_la), jnp.where(valid, lp, keep_lp), jnp.where(valid, lq, zero)
    lp = jnp.where(first, jnp.logaddexp(lp, la), lp)  # P_{-1} = 1
    lpq = jnp.stack([lp, lq], axis=1)  # T x 2 x B x N: P and U share a'

    def combine(e1, e2):
        return e1[0] + e2[0], jnp.logaddexp(e2[0][:, None] + e1[1], e2[1])

    log_pq = jax.lax.associative_scan(combine, (la, lpq), reverse=reverse, axis=0)[1]
    return jnp.exp(log_pq[:, 0]) * h0 + jnp.exp(log_pq[:, 1])


def _run_parallel(cell, params, carry0, xp_TxBxG, reset_TxB, valid_TxB, reverse):
    """The parallel path of ``run``: same semantics (resets, lengths, reverse)."""
    h0_BxN = cell.to_state(carry0)
    a_TxBxN, b_TxBxN = cell.linear_coefficients(params, xp_TxBxG)  # logs for LOG_SPACE cells
    reset = None if reset_TxB is None else reset_TxB[:, :, None]
    valid = None if valid_TxB is None else valid_TxB[:, :, None]
    first = (jnp.arange(a_TxBxN.shape[0]) == (a_TxBxN.shape[0] - 1 if reverse else 0))[:, None, None]
    scan_fn = _log_space_scan if cell.log_space else _linear_scan
    h_TxBxN = scan_fn(a_TxBxN, b_TxBxN, h0_BxN, reset, valid, first, reverse)
    hs_TxBxH = cell.readout(params, h_TxBxN, xp_TxBxG)
    if valid is not None:
        hs_TxBxH = jnp.where(valid, hs_TxBxH, jnp.zeros_like(hs_TxBxH))
    carry_T = cell.from_state(h_TxBxN[0 if reverse else -1])
    return jax.tree.map(lambda n, o: n.astype(o.dtype), carry_T, carry0), hs_TxBxH


def _run_chunkwise(cell, params, carry0, xp_TxBxG, reset_TxB, valid_TxB, reverse):
    """The parallel path of a matrix-state cell: its ``chunkwise`` form, forward in time
    (reversed: the arrays flipped, so a sequence's padding comes first and leaves the
    carry at carry0 until the sequence's own end)."""
    n_steps, batch = xp_TxBxG.shape[:2]
    reset = jnp.zeros((n_steps, batch), bool) if reset_TxB is None else reset_TxB
    valid = jnp.ones((n_steps, batch), bool) if valid_TxB is None else valid_TxB
    flip = (lambda a: jnp.flip(a, 0)) if reverse else (lambda a: a)
    carry_T, hs_TxBxH = cell.chunkwise(params, carry0, flip(xp_TxBxG), flip(reset), flip(valid))
    hs_TxBxH = flip(hs_TxBxH)
    if valid_TxB is not None:
        hs_TxBxH = jnp.where(valid_TxB[:, :, None], hs_TxBxH, jnp.zeros_like(hs_TxBxH))
    return jax.tree.map(lambda n, o: n.astype(o.dtype), carry_T, carry0), hs_TxBxH


def loop(fn, carry, xs=None, length: int | None = None, unroll: int = 1, reverse: bool = False):
    """``jax.lax.scan`` for loops that are not a cell over a sequence (the token
    loop of generation, beam search, the fused layers' forward and backward
    loops): kept here so every scan lives in one module."""
    return jax.lax.scan(fn, carry, xs, length=length, unroll=unroll, reverse=reverse)
