"""Parallel (one jax.lax.associative_scan) against sequential (jax.lax.scan of
``step``) for the linear-recurrence cells: minGRU, minLSTM (log space), LRU
(complex), RG-LRU. The numbers behind ``scan.prefer_parallel`` (path='auto').

    python benchmarks/parallel_scan.py                          # T in 256,1024,4096; B=16, D=H=128
    python benchmarks/parallel_scan.py --lengths 8,16 --batch 2 --hidden 8 --repeats 1 \\
        --out /tmp/ps                                            # smoke test (tests run it)

What is timed: one call of ``scan.run(cell, params, carry0, xs, path=...)`` on
float32 inputs (T x B x D), under ``jax.jit``: mode 'fwd' returns sum(hs * R);
mode 'fwdbwd' that loss and its gradients with respect to params and xs. The two
paths are timed interleaved (seq, par, seq, par ...) so a load change on a shared
machine hits both; median (and min) of ``--repeats`` after ``--warmup`` calls.
Before timing, the two paths are checked to agree (loss and gradients).
Writes OUT.json (every number) and OUT.md (the table), prints progress and the table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from rnnlab import cells, scan  # noqa: E402
from rnnlab.train import writers  # noqa: E402

CELLS = ("mingru", "minlstm", "lru", "rglru")


def _fn(cell, path, mode, carry0, r):
    def loss(p, x):
        return jnp.sum(scan.run(cell, p, carry0, x, path=path)[1] * r)

    return jax.jit(loss if mode == "fwd" else jax.value_and_grad(loss, argnums=(0, 1)))


def _time(fn, *args) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


def bench_one(name: str, n_steps: int, mode: str, args) -> dict:
    cell = cells.get(name)
    kp, kx, kr = jax.random.split(jax.random.key(0), 3)
    params = cell.init(kp, args.hidden, args.hidden)
    xs = jax.random.normal(kx, (n_steps, args.batch, args.hidden), jnp.float32)
    r = jax.random.normal(kr, (n_steps, args.batch, args.hidden), jnp.float32)
    carry0 = cell.initial_carry(args.batch, args.hidden)
    fns = {p: _fn(cell, p, mode, carry0, r) for p in ("sequential", "parallel")}
    compile_s = {p: _time(f, params, xs) for p, f in fns.items()}  # first call: trace + compile + run
    outs = {p: jax.tree.leaves(f(params, xs)) for p, f in fns.items()}
    err = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(1.0, float(np.max(np.abs(np.asarray(b))))))
              for a, b in zip(outs["parallel"], outs["sequential"], strict=True))
    for _ in range(args.warmup):
        for f in fns.values():
            _time(f, params, xs)
    times = {p: [] for p in fns}
    for _ in range(args.repeats):  # interleaved
        for p, f in fns.items():
            times[p].append(_time(f, params, xs))
    med = {p: statistics.median(t) for p, t in times.items()}
    return {"cell": name, "T": n_steps, "mode": mode, "batch": args.batch, "hidden": args.hidden,
            "median_ms": {p: 1e3 * v for p, v in med.items()},
            "min_ms": {p: 1e3 * min(t) for p, t in times.items()},
            "compile_s": compile_s, "seq_over_par": med["sequential"] / med["parallel"], "max_rel_err": err}


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"Parallel vs sequential scan, {meta['platform']} ({meta['device']}), B={meta['batch']}, "
             f"D=H={meta['hidden']}, float32, median of {meta['repeats']} interleaved repeats; "
             "speed-up = sequential / parallel (>1: parallel faster).", "",
             "| cell | T | mode | sequential ms | parallel ms | speed-up | max rel. diff |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        m = r["median_ms"]
        lines.append(f"| {r['cell']} | {r['T']} | {r['mode']} | {m['sequential']:.2f} | {m['parallel']:.2f} | "
                     f"{r['seq_over_par']:.2f} | {r['max_rel_err']:.1e} |")
    lines += ["", "max rel. diff: max |parallel - sequential| / max(|sequential|, 1) over the loss and every "
              "gradient (in fwdbwd this includes the scalar loss, a float32 sum of T*B*H terms, so its "
              "rounding sets a floor; not separated here). `scan.prefer_parallel` turns these numbers into path='auto'.",
              f"Load average at start / end: {meta['load_avg'][0]:.1f} / {meta.get('load_avg_end', [0])[0]:.1f} "
              f"on {meta['cpu_count']} cores (shared)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--lengths", default="256,1024,4096")
    ap.add_argument("--modes", default="fwd,fwdbwd")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/parallel_scan", help="writes OUT.json and OUT.md")
    args = ap.parse_args(argv)
    jobs = [(c, int(t), m) for c in args.cells.split(",") for t in args.lengths.split(",") for m in args.modes.split(",")]
    meta = {"platform": jax.default_backend(), "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
            "load_avg": os.getloadavg(), "jax": jax.__version__, "python": platform.python_version(),
            "batch": args.batch, "hidden": args.hidden, "repeats": args.repeats, "warmup": args.warmup}
    progress, rows = writers.Progress(len(jobs)), []
    for i, (c, t, m) in enumerate(jobs):
        r = bench_one(c, t, m, args)
        rows.append(r)
        progress.line(i + 1, {"cell": c, "T": t, "mode": m, "seq_ms": r["median_ms"]["sequential"],
                              "par_ms": r["median_ms"]["parallel"], "speed_up": r["seq_over_par"]}, t * args.batch)
    meta["load_avg_end"] = os.getloadavg()
    result = {"meta": meta, "rows": rows}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    writers.write_json_atomic(args.out + ".json", result)
    table = markdown(rows, meta)
    with open(args.out + ".md", "w") as f:
        f.write(table)
    print(table, flush=True)
    return result


if __name__ == "__main__":
    main()
