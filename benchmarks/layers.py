"""Forward+backward time of one LSTM and one GRU layer: rnnlab vs torch.nn.LSTM/GRU
vs flax.linen.RNN(OptimizedLSTMCell / GRUCell).

    python benchmarks/layers.py                       # all shapes, lstm and gru, 10 repeats
    python benchmarks/layers.py --shapes 32x100x128x256 --cells lstm --repeats 20
    python benchmarks/layers.py --quick --repeats 1 --json /tmp/out.json   # smoke test

What is timed, identically for every implementation: one call computing the loss
``sum(ys * R)`` (ys: the layer's outputs for all T steps, R: a fixed random tensor
of the same shape) and its gradients with respect to the inputs and every weight,
in float32, from a zero initial carry.

  * rnnlab: ``Stack(cell, D, H).apply`` inside ``jax.jit(jax.value_and_grad(...))``.
  * flax:   ``flax.linen.RNN(cell, time_major=True)`` inside the same jit/value_and_grad.
            time_major=True: flax reads the same (T, B, D) array as the others, so no
            transposes are timed (flax's default is batch-major).
  * torch:  ``torch.nn.LSTM/GRU`` (time-major, its default) with
            ``torch.autograd.grad(loss, [x, *parameters])``;
            ``torch.set_num_threads(os.cpu_count())`` (``--torch-threads``).

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

DEFAULT_SHAPES = ("32x100x128x256", "64x64x512x512", "8x256x64x128")
QUICK_SHAPE = "2x5x3x4"
IMPLS = ("rnnlab", "torch", "flax")
CELLS = ("lstm", "gru")
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
    p.add_argument("--impls", default=",".join(IMPLS), help="comma-separated subset of rnnlab,torch,flax")
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
    first_call_ms: float = 0.0
    times_ms: list[float] = field(default_factory=list)


def shape_name(shape) -> str:
    return "x".join(str(v) for v in shape)


# --- implementations -------------------------------------------------------------------------


def _compile_jax(name: str, loss_fn, args) -> Impl:
    import jax

    step = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))
    t0 = time.perf_counter()
    compiled = step.lower(*args).compile()
    compile_ms = 1e3 * (time.perf_counter() - t0)

    def call():
        return jax.block_until_ready(compiled(*args))

    def check():
        loss, (_, dx) = call()
        return float(loss), np.asarray(dx)

    return Impl(name, call, check, compile_ms=compile_ms)


def make_rnnlab(cell: str, stack, params, x, r) -> Impl:
    import jax.numpy as jnp

    def loss_fn(params, x, r):
        ys, _ = stack.apply(params, x)
        return jnp.sum(ys * r)

    return _compile_jax("rnnlab", loss_fn, (params, x, r))


def make_flax(cell: str, layer_params, x, r, d_h: int) -> Impl:
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

    return _compile_jax("flax", loss_fn, (variables, x, r))


def _same_tree(a, b) -> None:
    import jax

    sa = jax.tree.map(lambda v: (v.shape, str(v.dtype)), a)
    sb = jax.tree.map(lambda v: (v.shape, str(v.dtype)), b)
    if sa != sb:
        raise RuntimeError(f"flax params from rnnlab.convert.to_flax do not match flax's own tree:\n{sa}\n{sb}")


def make_torch(cell: str, params, x_np, r_np, d_in: int, d_h: int) -> Impl:
    import torch

    from rnnlab import convert

    module = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(d_in, d_h)  # time-major
    state = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in convert.to_torch(params, cell).items()}
    module.load_state_dict(state)
    weights = list(module.parameters())
    x = torch.from_numpy(x_np.copy()).requires_grad_(True)
    r = torch.from_numpy(r_np.copy())

    def run():
        ys, _ = module(x)
        loss = (ys * r).sum()
        grads = torch.autograd.grad(loss, [x, *weights])
        return loss, grads

    def check():
        loss, grads = run()
        return float(loss.detach()), grads[0].numpy().copy()

    return Impl("torch", run, check)


def build(cell: str, shape, impls, seed: int) -> list[Impl]:
    import jax
    import jax.numpy as jnp

    from rnnlab import Stack

    b, t, d, h = shape
    rng = np.random.default_rng(seed)
    x_np = rng.standard_normal((t, b, d), dtype=np.float32)
    r_np = rng.standard_normal((t, b, h), dtype=np.float32)
    stack = Stack(cell, d, h)  # rnnlab's default init; rnnlab.convert exports every weight and bias
    params = stack.init(jax.random.key(seed))
    x, r = jnp.asarray(x_np), jnp.asarray(r_np)
    out = []
    for name in impls:
        log(f"    building {name} ...")
        if name == "rnnlab":
            impl = make_rnnlab(cell, stack, params, x, r)
        elif name == "flax":
            impl = make_flax(cell, params["layer_0"]["forward"], x, r, h)
        else:
            impl = make_torch(cell, params, x_np, r_np, d, h)
        t0 = time.perf_counter()
        impl.call()
        impl.first_call_ms = 1e3 * (time.perf_counter() - t0)
        extra = "" if impl.compile_ms is None else f"compile {impl.compile_ms:.0f} ms, "
        log(f"    {name}: {extra}first call {impl.first_call_ms:.1f} ms")
        out.append(impl)
    return out


def check_agreement(impls: list[Impl]) -> dict[str, dict[str, float]]:
    ref_loss, ref_dx = impls[0].check()  # rnnlab
    report = {impls[0].name: {"loss": ref_loss, "loss_rel_err": 0.0, "dx_rel_err": 0.0}}
    scale = float(np.max(np.abs(ref_dx))) or 1.0
    for impl in impls[1:]:
        loss, dx = impl.check()
        loss_err = abs(loss - ref_loss) / max(abs(ref_loss), 1.0)
        dx_err = float(np.max(np.abs(dx - ref_dx))) / scale
        report[impl.name] = {"loss": loss, "loss_rel_err": loss_err, "dx_rel_err": dx_err}
        if loss_err > CHECK_RTOL or dx_err > CHECK_RTOL:
            raise RuntimeError(
                f"{impl.name} disagrees with rnnlab: loss {loss} vs {ref_loss} (rel {loss_err:.2e}), "
                f"max |d/dx| rel err {dx_err:.2e} > {CHECK_RTOL}; the timings would compare different "
                "computations (rerun with --no-check to time anyway)"
            )
    log("    agree: " + ", ".join(f"{k} dx err {v['dx_rel_err']:.1e}" for k, v in report.items() if k != "rnnlab"))
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


def summarize(shape, cell: str, impls: list[Impl], agreement) -> tuple[list[dict], dict]:
    med = {impl.name: statistics.median(impl.times_ms) for impl in impls}
    rows = []
    for impl in impls:
        rows.append({
            "shape": shape_name(shape), "B": shape[0], "T": shape[1], "D": shape[2], "H": shape[3],
            "cell": cell, "impl": impl.name,
            "median_ms": med[impl.name], "min_ms": min(impl.times_ms), "max_ms": max(impl.times_ms),
            "times_ms": impl.times_ms, "compile_ms": impl.compile_ms, "first_call_ms": impl.first_call_ms,
            "time_over_rnnlab": med[impl.name] / med["rnnlab"],
            "time_over_torch": med[impl.name] / med["torch"] if "torch" in med else None,
            "check": (agreement or {}).get(impl.name),
        })
    rn = next(i for i in impls if i.name == "rnnlab")
    summary = {"shape": shape_name(shape), "cell": cell}
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
        "| shape (BxTxDxH) | cell | impl | median ms | min ms | compile ms | time / rnnlab | time / torch |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['cell']} | {r['impl']} | {r['median_ms']:.2f} | {r['min_ms']:.2f} | "
            f"{fmt(r['compile_ms'], '.0f')} | {r['time_over_rnnlab']:.2f} | {fmt(r['time_over_torch'], '.2f')} |"
        )
    lines.append("")
    for s in summaries:
        parts = []
        for peer in (i for i in impls if i != "rnnlab"):
            parts.append(f"rnnlab speed ratio vs {peer} = {peer}_time/rnnlab_time = "
                         f"{s[f'rnnlab_speed_ratio_vs_{peer}']:.2f}")
        lines.append(f"- {s['shape']} {s['cell']}: " + "; ".join(parts) + "  (>1 means rnnlab faster)")
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
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.torch_threads)
    env = environment()
    log(f"environment: {json.dumps(env)}")
    if env["loadavg_at_start"][0] > 0.5 * (os.cpu_count() or 1):
        log(f"WARNING: 1-minute load average {env['loadavg_at_start'][0]:.2f} on {os.cpu_count()} CPUs: "
            "other processes are running and will add noise to every timing")
    log(f"shapes (BxTxDxH): {[shape_name(s) for s in args.shape_list]}, cells: {args.cell_list}, "
        f"impls: {args.impl_list}, repeats: {args.repeats}, warmup: {args.warmup}")
    impl_names = ["rnnlab"] + [i for i in args.impl_list if i != "rnnlab"]
    rows, summaries = [], []
    groups = [(s, c) for s in args.shape_list for c in args.cell_list]
    for k, (shape, cell) in enumerate(groups):
        label = f"[{k + 1}/{len(groups)}] {shape_name(shape)} {cell}"
        log(f"{label}: compiling / building")
        impls = build(cell, shape, impl_names, args.seed)
        agreement = None if args.no_check else check_agreement(impls)
        log(f"{label}: timing {args.repeats} rounds of {', '.join(impl_names)}")
        time_round_robin(impls, args.repeats, args.warmup, args.gap_ms / 1e3, label)
        r, s = summarize(shape, cell, impls, agreement)
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
