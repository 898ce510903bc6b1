"""Time of one LSTM and one GRU layer, forward and forward+backward: rnnlab vs
torch.nn.LSTM/GRU vs flax.linen.RNN(OptimizedLSTMCell / GRUCell) vs Keras 3's
LSTM/GRU on the JAX backend (and, with --gpu, jax.experimental.rnn's cuDNN LSTM
and torch on cuDNN).

    python benchmarks/layers.py                       # 4 shapes, lstm and gru, both modes
    python benchmarks/layers.py --shapes 32x100x128x256 --cells lstm --modes fwdbwd --repeats 20
    python benchmarks/layers.py --quick --repeats 1 --json /tmp/out.json   # smoke test
    python benchmarks/layers.py --gpu                 # on a GPU machine: adds cudnn, torch on CUDA

What is timed, identically for every implementation: one call computing the loss
``sum(ys * R)`` (ys: the layer's outputs for all T steps, R: a fixed random tensor
of the same shape) -- mode 'fwd' -- or that loss and its gradients with respect
to the inputs and every weight -- mode 'fwdbwd' -- in float32, from a zero
initial carry.

  * rnnlab: ``Stack(cell, D, H).apply`` inside ``jax.jit(jax.value_and_grad(...))``;
            on the CPU its native layer (rnnlab.native, two XLA FFI calls) is the default.
            ``rnnlab_xla``: the same with the native code off (RNNLAB_NATIVE=0 while it is
            traced): the XLA fused layer (rnnlab.fused), what runs on GPU/TPU.
            ``rnnlab_unfused``: ``fused=False`` (autodiff of the plain scan).
  * flax:   ``flax.linen.RNN(cell, time_major=True)`` inside the same jit/value_and_grad.
            time_major=True: flax reads the same (T, B, D) array as the others, so no
            transposes are timed (flax's default is batch-major).
  * keras:  ``keras.layers.LSTM/GRU(H, return_sequences=True)`` on the JAX backend
            (KERAS_BACKEND=jax, set by this script), ``stateless_call`` inside the same
            jit/value_and_grad. Keras is batch-major only: its transposes are timed.
            Optional: skipped with a note when keras is not installed
            (``pip install -e '.[bench]'``).
  * torch:  ``torch.nn.LSTM/GRU`` (time-major, its default) with
            ``torch.autograd.grad(loss, [x, *parameters])``; forward under
            ``torch.no_grad()``; ``torch.set_num_threads(os.cpu_count())`` (``--torch-threads``).
  * cudnn (--gpu, LSTM only): ``jax.experimental.rnn.lstm``; torch then runs on CUDA.

Memory: for the JAX implementations, the bytes XLA allocates for one call
(``compiled.memory_analysis()``: temporaries + outputs, arguments excluded); for
torch, the peak resident-set growth during one call, polled every millisecond.

All three start from the same weights (rnnlab's init, exported with rnnlab.convert),
and before timing the script checks that they agree on the loss and on d loss / d x,
so the comparison is of one computation.

JAX functions are compiled ahead of timing (``jit(...).lower(...).compile()``); the
compile time is reported separately and the compiled executable is what is timed
(``block_until_ready`` on all outputs). Then ``--warmup`` untimed calls per
implementation, then ``--repeats`` rounds: in each round every implementation is
timed once (round-robin, so machine noise hits all alike), in an order that cycles
through all permutations (so no implementation always runs right after the same
other one), with a ``--gap-ms`` pause before each call so threads left spinning by
the previous call do not slow the next. Reported: the median over rounds.

Shapes are B x T x D x H (batch, time steps, input features, hidden units).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_SHAPES = ("32x100x128x256", "64x64x512x512", "8x256x64x128", "128x50x1024x1024")
QUICK_SHAPE = "2x5x3x4"
IMPLS = ("rnnlab", "torch", "flax", "keras", "rnnlab_xla", "rnnlab_unfused", "cudnn")
DEFAULT_IMPLS = ("rnnlab", "torch", "flax", "keras")
CELLS = ("lstm", "gru")
MODES = ("fwd", "fwdbwd")
CHECK_RTOL = 1e-3  # float32: max |d loss/dx - ref| / max |ref|, and the same for the loss


def parse_shape(name: str) -> tuple[int, int, int, int]:
    try:
        b, t, d, h = (int(v) for v in name.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {name!r} is not BxTxDxH, e.g. 32x100x128x256") from None
    if min(b, t, d, h) < 1:
        raise argparse.ArgumentTypeError(f"shape {name!r}: every size must be >= 1")
    return b, t, d, h


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shapes", default=",".join(DEFAULT_SHAPES),
                   help="comma-separated BxTxDxH shapes (default: %(default)s)")
    p.add_argument("--cells", default=",".join(CELLS), help="comma-separated subset of lstm,gru")
    p.add_argument("--impls", default=",".join(DEFAULT_IMPLS),
                   help=f"comma-separated subset of {','.join(IMPLS)} (default: %(default)s)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of fwd,fwdbwd")
    p.add_argument("--gpu", action="store_true",
                   help="GPU mode: JAX on its default GPU, torch on CUDA, and cudnn (jax.experimental.rnn) added")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per implementation after compiling")
    p.add_argument("--gap-ms", type=float, default=10.0, help="pause before each timed call")
    p.add_argument("--torch-threads", type=int, default=os.cpu_count(),
                   help="torch.set_num_threads (default: os.cpu_count() = %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="OUT", help="write every number (all rounds, config, versions) here")
    p.add_argument("--quick", action="store_true",
                   help=f"one tiny shape ({QUICK_SHAPE}) instead of --shapes: a smoke test, not a benchmark")
    p.add_argument("--no-check", action="store_true", help="skip the cross-implementation agreement check")
    args = p.parse_args(argv)
    args.shape_list = [parse_shape(s) for s in ([QUICK_SHAPE] if args.quick else args.shapes.split(","))]
    args.cell_list = [c.strip() for c in args.cells.split(",") if c.strip()]
    args.impl_list = [i.strip() for i in args.impls.split(",") if i.strip()]
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    if bad := set(args.mode_list) - set(MODES):
        p.error(f"--modes: unknown {sorted(bad)}; choose from {MODES}")
    if args.gpu and "cudnn" not in args.impl_list:
        args.impl_list.append("cudnn")
    if bad := set(args.cell_list) - set(CELLS):
        p.error(f"--cells: unknown {sorted(bad)}; choose from {CELLS}")
    if bad := set(args.impl_list) - set(IMPLS):
        p.error(f"--impls: unknown {sorted(bad)}; choose from {IMPLS}")
    if "rnnlab" not in args.impl_list:
        p.error("--impls must include rnnlab (ratios are relative to it)")
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def log(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class Impl:
    """One implementation, ready to time: ``call()`` runs forward+backward once and
    returns only when the results exist; ``check()`` returns (loss, d loss / d x) as numpy."""

    name: str
    call: Callable[[], Any]
    check: Callable[[], tuple[float, np.ndarray]]
    compile_ms: float | None = None  # JAX: lower + compile; torch: none
    memory_bytes: int | None = None
    memory_kind: str | None = None  # 'xla': memory_analysis; 'rss': peak RSS growth; 'cuda': torch's peak
    first_call_ms: float = 0.0
    times_ms: list[float] = field(default_factory=list)


def shape_name(shape) -> str:
    return "x".join(str(v) for v in shape)


# --- implementations -------------------------------------------------------------------------


def _compile_jax(name: str, loss_fn, args, mode: str) -> Impl:
    import jax

    step = jax.jit(loss_fn if mode == "fwd" else jax.value_and_grad(loss_fn, argnums=(0, 1)))
    t0 = time.perf_counter()
    compiled = step.lower(*args).compile()
    compile_ms = 1e3 * (time.perf_counter() - t0)
    try:  # what XLA allocates for one call besides the arguments
        ma = compiled.memory_analysis()
        memory = int(ma.temp_size_in_bytes + ma.output_size_in_bytes)
    except Exception:  # noqa: BLE001 - not every backend reports it
        memory = None

    def call():
        return jax.block_until_ready(compiled(*args))

    def check():
        out = call()
        if mode == "fwd":
            return float(out), None
        loss, (_, dx) = out
        return float(loss), np.asarray(dx)

    return Impl(name, call, check, compile_ms=compile_ms, memory_bytes=memory, memory_kind="xla")


def make_rnnlab(cell: str, stack, params, x, r, mode: str, variant: str = "rnnlab") -> Impl:
    import jax.numpy as jnp

    from rnnlab import scan

    def loss_fn(params, x, r):
        if variant != "rnnlab_unfused":
            ys, _ = stack.apply(params, x)
        else:  # the same Stack with scan.run's fused path switched off
            ys = scan.run(stack.cell, params["layer_0"]["forward"], stack.cell.initial_carry(x.shape[1], stack.d_h),
                          x, fused=False)[1]
        return jnp.sum(ys * r)

    saved = {k: os.environ.get(k) for k in ("RNNLAB_NATIVE", "RNNLAB_CUDNN")}
    if variant == "rnnlab_xla":  # the XLA fused layer: read when the layer is traced, i.e. inside _compile_jax
        os.environ.update(RNNLAB_NATIVE="0", RNNLAB_CUDNN="0")
    try:
        return _compile_jax(variant, loss_fn, (params, x, r), mode)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def make_flax(cell: str, layer_params, x, r, d_h: int, mode: str) -> Impl:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from rnnlab import convert

    flax_cell = nn.OptimizedLSTMCell(d_h) if cell == "lstm" else nn.GRUCell(d_h)
    model = nn.RNN(flax_cell, time_major=True)
    variables = {"params": {"cell": convert.to_flax(layer_params, cell)}}
    expected = model.init(jax.random.key(0), x)  # the tree flax builds itself
    _same_tree(expected, variables)

    def loss_fn(variables, x, r):
        return jnp.sum(model.apply(variables, x) * r)

    return _compile_jax("flax", loss_fn, (variables, x, r), mode)


def keras_weights(cell: str, layer_params, d_h: int) -> list[np.ndarray]:
    """rnnlab's weights in Keras 3's layout. LSTM: kernel (D, 4H), recurrent_kernel
    (H, 4H), bias (4H), gate order i, f, c, o (= ours). GRU (reset_after=True):
    gate order z, r, h (ours r, z, n), bias (2, 3H) = [input bias, recurrent bias]."""
    w_x, w_h, b = (np.asarray(layer_params[k], np.float32) for k in ("w_x_DxG", "w_h_HxG", "b_G"))
    if cell == "lstm":
        return [w_x, w_h, b]
    zrn = lambda m: np.concatenate([m[..., d_h:2 * d_h], m[..., :d_h], m[..., 2 * d_h:]], axis=-1)
    b_rec = np.concatenate([np.zeros(2 * d_h, np.float32), np.asarray(layer_params["b_hn_H"], np.float32)])
    return [zrn(w_x), zrn(w_h), np.stack([zrn(b), zrn(b_rec)])]


def make_keras(cell: str, layer_params, x, r, d_h: int, mode: str) -> Impl | None:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        import keras
    except ImportError:
        log("    keras: not installed (pip install -e '.[bench]'); skipped")
        return None
    if keras.backend.backend() != "jax":
        log(f"    keras: backend is {keras.backend.backend()!r}, not jax; skipped")
        return None
    import jax.numpy as jnp

    cls = keras.layers.LSTM if cell == "lstm" else keras.layers.GRU
    layer = cls(d_h, return_sequences=True)
    layer.build((x.shape[1], x.shape[0], x.shape[2]))
    layer.set_weights(keras_weights(cell, layer_params, d_h))
    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]

    def loss_fn(trainable, x, r):
        ys_BxTxH, _ = layer.stateless_call(trainable, non_trainable, jnp.swapaxes(x, 0, 1))
        return jnp.sum(jnp.swapaxes(ys_BxTxH, 0, 1) * r)

    return _compile_jax("keras", loss_fn, (trainable, x, r), mode)


def make_cudnn(cell: str, layer_params, x, r, d_h: int, mode: str) -> Impl | None:
    """jax.experimental.rnn (cuDNN; GPU only, LSTM only): weights packed as cuDNN's
    flat vector (W_ih, W_hh, b_ih, b_hh in torch's layout and gate order)."""
    if cell != "lstm":
        log("    cudnn: jax.experimental.rnn has no GRU; skipped")
        return None
    import jax.numpy as jnp
    from jax.experimental import rnn

    from rnnlab import convert

    sd = convert.to_torch({"layer_0": {"forward": layer_params}}, cell)
    flat = jnp.concatenate([jnp.ravel(jnp.asarray(sd[k], jnp.float32))
                            for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")])
    t, b, d = x.shape
    zeros = jnp.zeros((1, b, d_h), jnp.float32)
    lengths = jnp.full((b,), t, jnp.int32)

    def loss_fn(flat, x, r):
        ys_BxTxH, _, _ = rnn.lstm(jnp.swapaxes(x, 0, 1), zeros, zeros, flat, lengths, input_size=d,
                                  hidden_size=d_h, num_layers=1, dropout=0.0, bidirectional=False)
        return jnp.sum(jnp.swapaxes(ys_BxTxH, 0, 1) * r)

    return _compile_jax("cudnn", loss_fn, (flat, x, r), mode)


def _same_tree(a, b) -> None:
    import jax

    sa = jax.tree.map(lambda v: (v.shape, str(v.dtype)), a)
    sb = jax.tree.map(lambda v: (v.shape, str(v.dtype)), b)
    if sa != sb:
        raise RuntimeError(f"flax params from rnnlab.convert.to_flax do not match flax's own tree:\n{sa}\n{sb}")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_growth(call: Callable[[], Any]) -> int | None:
    """Peak resident-set growth during ``call()``, polled every millisecond from a
    thread (torch and XLA release the GIL while they compute)."""
    import threading

    if not os.path.exists("/proc/self/statm"):
        return None
    base, peak, done = _rss_bytes(), [0], threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    try:
        call()
    finally:
        done.set()
        th.join()
    return max(peak[0], _rss_bytes()) - base


def make_torch(cell: str, params, x_np, r_np, d_in: int, d_h: int, mode: str, device: str = "cpu",
               bfloat16: bool = False) -> Impl:
    """torch.nn.LSTM/GRU with rnnlab's weights; ``bfloat16``: under torch.autocast(bfloat16)."""
    import contextlib

    import torch

    from rnnlab import convert

    module = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(d_in, d_h)  # time-major
    state = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in convert.to_torch(params, cell).items()}
    module.load_state_dict(state)
    module.to(device)
    weights = list(module.parameters())
    x = torch.from_numpy(x_np.copy()).to(device).requires_grad_(mode == "fwdbwd")
    r = torch.from_numpy(r_np.copy()).to(device)
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)

    def forward():
        with torch.autocast(device_type=device, dtype=torch.bfloat16) if bfloat16 else contextlib.nullcontext():
            return (module(x)[0].float() * r).sum()

    def run():
        if mode == "fwd":
            with torch.no_grad():
                loss = forward()
            sync()
            return loss, None
        loss = forward()
        grads = torch.autograd.grad(loss, [x, *weights])
        sync()
        return loss, grads

    def check():
        loss, grads = run()
        return float(loss.detach().cpu()), None if grads is None else grads[0].cpu().numpy().copy()

    impl = Impl("torch", run, check, memory_kind="rss" if device == "cpu" else "cuda")
    if device == "cpu":
        impl.memory_bytes = peak_rss_growth(run)
    else:
        torch.cuda.reset_peak_memory_stats()
        run()
        impl.memory_bytes = int(torch.cuda.max_memory_allocated())
    return impl


def build(cell: str, shape, impls, seed: int, mode: str, gpu: bool) -> list[Impl]:
    import jax
    import jax.numpy as jnp

    from rnnlab import Stack

    b, t, d, h = shape
    rng = np.random.default_rng(seed)
    x_np = rng.standard_normal((t, b, d), dtype=np.float32)
    r_np = rng.standard_normal((t, b, h), dtype=np.float32)
    stack = Stack(cell, d, h)  # rnnlab's default init; rnnlab.convert exports every weight and bias
    params = stack.init(jax.random.key(seed))
    layer = params["layer_0"]["forward"]
    x, r = jnp.asarray(x_np), jnp.asarray(r_np)
    out = []
    for name in impls:
        log(f"    building {name} ...")
        if name in ("rnnlab", "rnnlab_xla", "rnnlab_unfused"):
            impl = make_rnnlab(cell, stack, params, x, r, mode, variant=name)
        elif name == "flax":
            impl = make_flax(cell, layer, x, r, h, mode)
        elif name == "keras":
            impl = make_keras(cell, layer, x, r, h, mode)
        elif name == "cudnn":
            impl = make_cudnn(cell, layer, x, r, h, mode)
        else:
            impl = make_torch(cell, params, x_np, r_np, d, h, mode, "cuda" if gpu else "cpu")
        if impl is None:
            continue
        t0 = time.perf_counter()
        impl.call()
        impl.first_call_ms = 1e3 * (time.perf_counter() - t0)
        extra = "" if impl.compile_ms is None else f"compile {impl.compile_ms:.0f} ms, "
        mem = "" if impl.memory_bytes is None else f", memory {impl.memory_bytes / 2**20:.1f} MiB ({impl.memory_kind})"
        log(f"    {name}: {extra}first call {impl.first_call_ms:.1f} ms{mem}")
        out.append(impl)
    return out


def check_agreement(impls: list[Impl]) -> dict[str, dict[str, float]]:
    ref_loss, ref_dx = impls[0].check()  # rnnlab
    report = {impls[0].name: {"loss": ref_loss, "loss_rel_err": 0.0, "dx_rel_err": 0.0}}
    scale = 1.0 if ref_dx is None else (float(np.max(np.abs(ref_dx))) or 1.0)
    for impl in impls[1:]:
        loss, dx = impl.check()
        loss_err = abs(loss - ref_loss) / max(abs(ref_loss), 1.0)
        dx_err = 0.0 if ref_dx is None else float(np.max(np.abs(dx - ref_dx))) / scale
        report[impl.name] = {"loss": loss, "loss_rel_err": loss_err, "dx_rel_err": dx_err}
        if loss_err > CHECK_RTOL or dx_err > CHECK_RTOL:
            raise RuntimeError(
                f"{impl.name} disagrees with rnnlab: loss {loss} vs {ref_loss} (rel {loss_err:.2e}), "
                f"max |d/dx| rel err {dx_err:.2e} > {CHECK_RTOL}; the timings would compare different "
                "computations (rerun with --no-check to time anyway)"
            )
    log("    agree: " + ", ".join(f"{k} loss err {v['loss_rel_err']:.1e} dx err {v['dx_rel_err']:.1e}"
                             for k, v in report.items() if k != "rnnlab"))
    return report


# --- timing -----------------------------------------------------------------------------------


def time_round_robin(impls: list[Impl], repeats: int, warmup: int, gap_s: float, label: str) -> None:
    for _ in range(warmup):
        for impl in impls:
            impl.call()
    orders = list(itertools.permutations(range(len(impls))))
    for rep in range(repeats):
        for i in orders[rep % len(orders)]:
            impl = impls[i]
            time.sleep(gap_s)
            t0 = time.perf_counter()
            impl.call()
            impl.times_ms.append(1e3 * (time.perf_counter() - t0))
        log(f"    {label} round {rep + 1}/{repeats}: "
            + ", ".join(f"{impl.name} {impl.times_ms[-1]:.1f} ms" for impl in impls))


def flop_count(shape, cell: str, mode: str) -> float:
    """Multiply-adds x 2 of the layer: the input and recurrent products, 2*T*B*(D+H)*G
    forward with G = gates*H; the backward pass has twice as many (d x and d h, d W_x and
    d W_h); the gate nonlinearities are not counted."""
    b, t, d, h = shape
    fwd = 2.0 * t * b * (d + h) * (4 if cell == "lstm" else 3) * h
    return fwd if mode == "fwd" else 3 * fwd


def peak_gflops(repeats: int = 5) -> dict:
    """The machine's dense float32 GEMM rate, all threads: the best of torch.mm and XLA's
    dot on 2048^3 (the ceiling any of the layers can reach)."""
    import jax
    import jax.numpy as jnp
    import torch

    n = 2048
    a = torch.randn(n, n)
    dot = jax.jit(jnp.dot)
    x = jnp.asarray(a.numpy())
    rates = {}
    for name, call in (("torch.mm", lambda: torch.mm(a, a)), ("jax.dot", lambda: dot(x, x).block_until_ready())):
        call()
        best = min(_timed(call) for _ in range(repeats))
        rates[name] = 2.0 * n**3 / best / 1e9
    return {"gflops": max(rates.values()), **{f"{k}_gflops": v for k, v in rates.items()}}


def _timed(call) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def summarize(shape, cell: str, mode: str, impls: list[Impl], agreement, peak: float | None = None
              ) -> tuple[list[dict], dict]:
    med = {impl.name: statistics.median(impl.times_ms) for impl in impls}
    flops = flop_count(shape, cell, mode)
    rows = []
    for impl in impls:
        rows.append({
            "shape": shape_name(shape), "B": shape[0], "T": shape[1], "D": shape[2], "H": shape[3],
            "cell": cell, "mode": mode, "impl": impl.name,
            "memory_bytes": impl.memory_bytes, "memory_kind": impl.memory_kind,
            "median_ms": med[impl.name], "min_ms": min(impl.times_ms), "max_ms": max(impl.times_ms),
            "times_ms": impl.times_ms, "compile_ms": impl.compile_ms, "first_call_ms": impl.first_call_ms,
            "time_over_rnnlab": med[impl.name] / med["rnnlab"],
            "time_over_torch": med[impl.name] / med["torch"] if "torch" in med else None,
            "gflops": flops / med[impl.name] / 1e6,
            "check": (agreement or {}).get(impl.name),
        })
    rn = next(i for i in impls if i.name == "rnnlab")
    summary = {"shape": shape_name(shape), "cell": cell, "mode": mode, "gflop": flops / 1e9}
    if peak:
        # no implementation can take less than flops / peak: the most anything can be faster than X
        summary["flop_bound_ms"] = flops / peak / 1e6
        for impl in impls:
            summary[f"max_possible_speed_ratio_vs_{impl.name}"] = med[impl.name] / summary["flop_bound_ms"]
    for peer in impls:
        if peer.name == "rnnlab":
            continue
        summary[f"rnnlab_speed_ratio_vs_{peer.name}"] = med[peer.name] / med["rnnlab"]
        # the same ratio taken round by round (both timed in the same round), then the median
        summary[f"rnnlab_speed_ratio_vs_{peer.name}_paired"] = statistics.median(
            p / q for p, q in zip(peer.times_ms, rn.times_ms, strict=True)
        )
    return rows, summary


def fmt(v, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def markdown(rows: list[dict], summaries: list[dict], impls) -> str:
    lines = [
        "| shape (BxTxDxH) | cell | mode | impl | median ms | min ms | GFLOP/s | compile ms | memory MiB "
        "| time / rnnlab | time / torch |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mem = None if r["memory_bytes"] is None else r["memory_bytes"] / 2**20
        lines.append(
            f"| {r['shape']} | {r['cell']} | {r['mode']} | {r['impl']} | {r['median_ms']:.2f} | {r['min_ms']:.2f} | "
            f"{r['gflops']:.0f} | {fmt(r['compile_ms'], '.0f')} | {fmt(mem, '.1f')} | {r['time_over_rnnlab']:.2f} | "
            f"{fmt(r['time_over_torch'], '.2f')} |"
        )
    lines.append("")
    for s in summaries:
        parts = []
        for peer in (i for i in impls if i != "rnnlab" and f"rnnlab_speed_ratio_vs_{i}" in s):
            bound = s.get(f"max_possible_speed_ratio_vs_{peer}")
            parts.append(f"rnnlab speed ratio vs {peer} = {peer}_time/rnnlab_time = "
                         f"{s[f'rnnlab_speed_ratio_vs_{peer}']:.2f}"
                         + ("" if bound is None else f" (at most {bound:.2f} at peak)"))
        lines.append(f"- {s['shape']} {s['cell']} {s['mode']}: " + "; ".join(parts) + "  (>1 means rnnlab faster)")
    if summaries and "flop_bound_ms" in summaries[0]:
        lines.append("")
        lines.append("'at most ... at peak': that implementation's time over the layer's FLOPs at the machine's "
                     "peak GEMM rate (environment.peak), the largest speed ratio anything could have against it.")
    return "\n".join(lines)


def environment() -> dict:
    import flax
    import jax
    import torch

    return {
        "python": sys.version.split()[0], "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "jax": jax.__version__, "jax_backend": jax.default_backend(), "flax": flax.__version__,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS"), "loadavg_at_start": os.getloadavg(),
        "keras": _version("keras"), "devices": [str(d) for d in jax.devices()],
    }


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def main(argv=None) -> int:
    args = parse_args(argv)
    from rnnlab import allocator

    allocator.configure()  # freed memory reused (as rnnlab.main does); the same process, so for every peer
    import torch

    torch.set_num_threads(args.torch_threads)
    env = environment()
    log(f"environment: {json.dumps(env)}")
    if env["loadavg_at_start"][0] > 0.5 * (os.cpu_count() or 1):
        log(f"WARNING: 1-minute load average {env['loadavg_at_start'][0]:.2f} on {os.cpu_count()} CPUs: "
            "other processes are running and will add noise to every timing")
    if not args.quick and not args.gpu:
        env["peak"] = peak_gflops()
        log(f"peak dense GEMM rate (2048^3, all threads): {env['peak']['gflops']:.0f} GFLOP/s "
            f"(torch.mm {env['peak']['torch.mm_gflops']:.0f}, jax.dot {env['peak']['jax.dot_gflops']:.0f})")
    log(f"shapes (BxTxDxH): {[shape_name(s) for s in args.shape_list]}, cells: {args.cell_list}, "
        f"impls: {args.impl_list}, repeats: {args.repeats}, warmup: {args.warmup}")
    impl_names = ["rnnlab"] + [i for i in args.impl_list if i != "rnnlab"]
    rows, summaries = [], []
    groups = [(s, c, m) for s in args.shape_list for c in args.cell_list for m in args.mode_list]
    for k, (shape, cell, mode) in enumerate(groups):
        label = f"[{k + 1}/{len(groups)}] {shape_name(shape)} {cell} {mode}"
        log(f"{label}: compiling / building")
        impls = build(cell, shape, impl_names, args.seed, mode, args.gpu)
        agreement = None if args.no_check else check_agreement(impls)
        log(f"{label}: timing {args.repeats} rounds of {', '.join(i.name for i in impls)}")
        time_round_robin(impls, args.repeats, args.warmup, args.gap_ms / 1e3, label)
        r, s = summarize(shape, cell, mode, impls, agreement, env.get("peak", {}).get("gflops"))
        s["loadavg_after"] = os.getloadavg()
        rows += r
        summaries.append(s)
        log(f"{label}: median " + ", ".join(f"{x['impl']} {x['median_ms']:.2f} ms" for x in r))
        del impls
        gc.collect()

    log("")
    log(markdown(rows, summaries, impl_names))
    if args.json:
        config = {k: v for k, v in vars(args).items() if k not in ("shape_list",)}
        config["shape_list"] = [shape_name(s) for s in args.shape_list]
        with open(args.json, "w") as f:
            json.dump({"config": config, "environment": env, "results": rows, "summary": summaries}, f, indent=1)
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
