"""Memory of long-sequence training and compile time of the language-model step.

    python benchmarks/memory_and_compile.py                  # both, JSON + Markdown to benchmarks/results/
    python benchmarks/memory_and_compile.py --what memory --steps 10000 --batch 16 --hidden 512
    python benchmarks/memory_and_compile.py --quick          # tiny sizes: what the smoke test runs

memory: one training step (forward, backward through all T steps, an Adam
update) of a 1-layer LSTM on a (T, B, D) sequence with a per-step regression
loss, each setting in a FRESH subprocess so that peaks do not mix:
  * remat=False (every step's gate activations kept for the backward pass),
  * remat=True (rnnlab.scan: the carry kept every ceil(sqrt(T)) steps, each
    chunk recomputed in the backward pass),
  * torch.nn.LSTM (for scale; PyTorch keeps every step's activations).
Reported per setting: the process's peak resident set (ru_maxrss, everything:
the runtime, the compiled program, the data) and, for JAX, the bytes XLA
plans for the step (compiled.memory_analysis(): arguments + outputs + temporaries).

compile: wall time of ``jit(...).lower(...).compile()`` of rnnlab.tasks.lm.train_step
for the language_modelling.py ``pytorch_example`` model (2-layer LSTM, 200 units,
vocabulary 33,278 as WikiText-2), best of --repeats fresh compiles (the persistent
compilation cache is off, so every compile is real).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
LIMIT_BYTES = 2 * 2**30  # issue 7: T = 10,000, 1 x 512 LSTM, batch 16 under 2 GB


def log(msg: str) -> None:
    print(msg, flush=True)


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def measure_jax(steps: int, batch: int, d_in: int, hidden: int, remat: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from rnnlab import Stack

    stack = Stack("lstm", d_in, hidden, remat=remat)
    params = stack.init(jax.random.key(0))
    head = jax.random.normal(jax.random.key(1), (hidden, 1)) / hidden**0.5
    xs = jax.random.normal(jax.random.key(2), (steps, batch, d_in))
    ys = jax.random.normal(jax.random.key(3), (steps, batch, 1))
    tx = optax.adam(1e-3)
    opt = tx.init(params)

    def step(params, opt, xs, ys):
        def loss(p):
            hs, _ = stack.apply(p, xs)
            return jnp.mean((hs @ head - ys) ** 2)

        val, grads = jax.value_and_grad(loss)(params)
        upd, opt = tx.update(grads, opt)
        return optax.apply_updates(params, upd), opt, val

    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt, xs, ys).compile()
    compile_s = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    planned = int(ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes)
    t0 = time.perf_counter()
    params, opt, val = jax.block_until_ready(compiled(params, opt, xs, ys))
    return {"impl": f"rnnlab remat={remat}", "loss": float(val), "step_s": time.perf_counter() - t0,
            "compile_s": compile_s, "xla_planned_bytes": planned, "xla_temp_bytes": int(ma.temp_size_in_bytes),
            "peak_rss_bytes": _peak_rss()}


def measure_torch(steps: int, batch: int, d_in: int, hidden: int) -> dict:
    import torch

    torch.manual_seed(0)
    lstm, head = torch.nn.LSTM(d_in, hidden), torch.nn.Linear(hidden, 1)
    opt = torch.optim.Adam([*lstm.parameters(), *head.parameters()], 1e-3)
    xs, ys = torch.randn(steps, batch, d_in), torch.randn(steps, batch, 1)
    t0 = time.perf_counter()
    loss = torch.mean((head(lstm(xs)[0]) - ys) ** 2)
    loss.backward()
    opt.step()
    return {"impl": "torch.nn.LSTM", "loss": float(loss), "step_s": time.perf_counter() - t0,
            "peak_rss_bytes": _peak_rss()}


def run_memory(args) -> list[dict]:
    rows = []
    for setting in ("remat", "no_remat", "torch"):
        cmd = [sys.executable, __file__, "--_child", setting, "--steps", str(args.steps), "--batch", str(args.batch),
               "--d_in", str(args.d_in), "--hidden", str(args.hidden)]
        log(f"memory: {setting}: T={args.steps} B={args.batch} D={args.d_in} H={args.hidden} (fresh process)")
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            log(f"  failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
            rows.append({"impl": setting, "error": proc.stderr[-2000:]})
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row.update(T=args.steps, B=args.batch, D=args.d_in, H=args.hidden)
        planned = row.get("xla_planned_bytes")
        log(f"  peak RSS {row['peak_rss_bytes'] / 2**20:.0f} MiB"
            + ("" if planned is None else f", XLA plans {planned / 2**20:.0f} MiB")
            + f", one step {row['step_s']:.1f} s")
        rows.append(row)
    return rows


def run_compile(args) -> dict:
    import jax
    import numpy as np

    jax.config.update("jax_enable_compilation_cache", False)
    from experiments import language_modelling
    from rnnlab.models import lm as lm_lib
    from rnnlab.tasks import lm as train
    from rnnlab.train.optim import make_optimizer

    config = language_modelling.get_config("pytorch_example")
    vocab = 100 if args.quick else 33278  # WikiText-2's vocabulary (valid + test + the example's order)
    model = lm_lib.build(config.model, vocab)
    tx = make_optimizer(config.optim)
    b, t = config.data.batch_size, config.data.seq_len
    times = []
    for i in range(args.repeats):
        params = model.init(jax.random.key(i))
        state = {"params": params, "opt_state": tx.init(params), "carries": model.initial_carries(b),
                 "step": np.int32(0)}
        batch = {"x": np.zeros((b, t), np.int32), "y": np.zeros((b, t), np.int32), "reset": np.zeros((b, t), bool),
                 "mask": np.ones((b, t), bool), "new_epoch": np.bool_(False)}
        jax.clear_caches()
        t0 = time.perf_counter()
        train.train_step.lower(model, tx, state, batch, np.float32(1.0), 0).compile()
        times.append(time.perf_counter() - t0)
        log(f"compile: 2-layer LM train step (pytorch_example, V={vocab}): {times[-1]:.2f} s")
    return {"what": "compile pytorch_example train_step", "vocab": vocab, "seconds": times, "best_s": min(times),
            "limit_s": 5.0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--what", default="memory,compile")
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--d_in", type=int, default=128)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    p.add_argument("--out", default=RESULTS, help="folder for memory_and_compile.{json,md}")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    from rnnlab import allocator

    allocator.configure()  # as rnnlab.main does (freed memory kept for reuse: peaks are what a run sees)
    if args._child:
        if args._child == "torch":
            row = measure_torch(args.steps, args.batch, args.d_in, args.hidden)
        else:
            row = measure_jax(args.steps, args.batch, args.d_in, args.hidden, remat=args._child == "remat")
        print(json.dumps(row))
        return 0
    if args.quick:
        args.steps, args.batch, args.d_in, args.hidden, args.repeats = 50, 2, 3, 8, 1
    sys.path.insert(0, ROOT)
    out = {"environment": {"cpu_count": os.cpu_count(), "loadavg": os.getloadavg()}}
    what = args.what.split(",")
    if "memory" in what:
        out["memory"] = run_memory(args)
    if "compile" in what:
        out["compile"] = run_compile(args)
    lines = ["| setting | T | B | D | H | peak RSS MiB | XLA planned MiB | one step s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in out.get("memory", []):
        if "error" in r:
            lines.append(f"| {r['impl']} | failed | | | | | | |")
            continue
        planned = r.get("xla_planned_bytes")
        lines.append(f"| {r['impl']} | {r['T']} | {r['B']} | {r['D']} | {r['H']} | {r['peak_rss_bytes'] / 2**20:.0f} | "
                     f"{'—' if planned is None else f'{planned / 2**20:.0f}'} | {r['step_s']:.1f} |")
    if "compile" in out:
        c = out["compile"]
        lines += ["", f"Compile of the 2-layer LM train step (pytorch_example, V={c['vocab']}): best {c['best_s']:.2f} s "
                      f"of {len(c['seconds'])} (limit {c['limit_s']:.0f} s)."]
    md = "\n".join(lines)
    log("\n" + md)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "memory_and_compile.json"), "w") as f:
        json.dump(out, f, indent=1)
    with open(os.path.join(args.out, "memory_and_compile.md"), "w") as f:
        f.write(md + "\n")
    return 0 if all("error" not in r for r in out.get("memory", [])) else 1


if __name__ == "__main__":
    sys.exit(main())
