"""One device benchmark: rnnlab's recurrent layers, linear scans and LM training step
against their peers on the same accelerator, each timed interleaved in one process and
reported as ratios.

    python benchmarks/accelerator.py --out benchmarks/results/gpu/     # a GPU (about 8 minutes)
    python benchmarks/accelerator.py --smoke --out /tmp/acc            # tiny shapes, any machine (CI: CPU)

Sections (JSON ``accelerator.json`` and Markdown ``accelerator.md`` in --out, with the
device name and driver):
  layers  LSTM and GRU, forward and forward + backward, at layers.py's four shapes and
          (B, T, D, H) = (16, 1024, 768, 768); float32: rnnlab (its chooser's path: cuDNN for
          an eligible LSTM on a GPU), rnnlab's XLA fused layer (RNNLAB_CUDNN=0,
          RNNLAB_NATIVE=0), torch.nn.LSTM/GRU (cuDNN on a GPU), jax.experimental.rnn (GPU,
          LSTM) and flax.linen.RNN; bfloat16: rnnlab (compute_dtype) against torch under
          autocast. Speed ratio = peer time / rnnlab time.
  scans   minGRU, LRU and RG-LRU layers (forward) at T = 4k, 32k and 64k: achieved GB/s over
          the bytes the scan must move (inputs read, outputs written), beside the device's
          own copy bandwidth measured here.
  lm      one training step of the ``pytorch_example`` word LM (2x200 LSTM, vocabulary
          33,278, batch 20 x 35): rnnlab's tokens/s against the PyTorch example's model and
          step on the same device.
  compile the compile time of each rnnlab program above.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import layers as layers_bench  # noqa: E402  (benchmarks/layers.py)

SHAPES = layers_bench.DEFAULT_SHAPES + ("16x1024x768x768",)
SMOKE_SHAPES = ("2x5x3x4",)
SCAN_CELLS = ("mingru", "lru", "rglru")
SCAN_T = (4096, 32768, 65536)
SMOKE_SCAN_T = (64,)


def log(msg: str) -> None:
    print(msg, flush=True)


def device_info() -> dict:
    """The device: JAX's kind and platform, and nvidia-smi's name and driver where it answers."""
    import jax

    d = jax.devices()[0]
    info = {"platform": d.platform, "device_kind": d.device_kind, "device_count": jax.device_count(),
            "jax": jax.__version__}
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = q.stdout.strip()
    return info


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


# ----------------------------------------------------------------------------- layers


def _bf16_impls(cell: str, shape, mode: str, gpu: bool, seed: int) -> list:
    """rnnlab with compute_dtype=bfloat16 and torch under bfloat16 autocast, same weights and inputs."""
    import jax
    import jax.numpy as jnp

    from rnnlab import Stack

    b, t, d, h = shape
    rng = np.random.default_rng(seed)
    x_np = rng.standard_normal((t, b, d), dtype=np.float32)
    r_np = rng.standard_normal((t, b, h), dtype=np.float32)
    stack = Stack(cell, d, h, compute_dtype=jnp.bfloat16)
    params = stack.init(jax.random.key(seed))
    out = [layers_bench.make_rnnlab(cell, stack, params, jnp.asarray(x_np), jnp.asarray(r_np), mode),
           layers_bench.make_torch(cell, params, x_np, r_np, d, h, mode, "cuda" if gpu else "cpu", bfloat16=True)]
    for impl in out:
        impl.call()
    return out


def bench_layers(shapes, repeats: int, gpu: bool, seed: int = 0, smoke: bool = False
                 ) -> tuple[list[dict], list[dict]]:
    impls32 = ["rnnlab", "rnnlab_xla", "torch", "flax"] + (["cudnn"] if gpu else [])
    modes = ("fwdbwd",) if smoke else layers_bench.MODES  # smoke: every code path once, fewer compiles
    rows, summaries = [], []
    for dtype in ("float32", "bfloat16"):
        for name in shapes:
            shape = layers_bench.parse_shape(name)
            for cell in layers_bench.CELLS if dtype == "float32" or not smoke else ("lstm",):
                for mode in modes:
                    label = f"{dtype} {cell} {mode} {name}"
                    log(f"  {label}")
                    if dtype == "float32":
                        impls = layers_bench.build(cell, shape, impls32, seed, mode, gpu)
                        agreement = layers_bench.check_agreement(impls)
                    else:
                        impls, agreement = _bf16_impls(cell, shape, mode, gpu, seed), None
                    layers_bench.time_round_robin(impls, repeats, 1, 0.0, label)
                    r, s = layers_bench.summarize(shape, cell, mode, impls, agreement)
                    for x in r:
                        x["dtype"] = dtype
                    s["dtype"] = dtype
                    rows += r
                    summaries.append(s)
    return rows, summaries


# ----------------------------------------------------------------------------- linear scans


def copy_bandwidth(n_bytes: int, repeats: int) -> float:
    """The device's achieved GB/s on a plain copy-and-scale of ``n_bytes`` (read + write)."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((n_bytes // 4,), jnp.float32)
    f = jax.jit(lambda a: a * 1.0001)
    jax.block_until_ready(f(x))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(x))
        times.append(time.perf_counter() - t0)
    return 2 * n_bytes / _median(times) / 1e9


def bench_scans(lengths, batch: int, d_h: int, repeats: int, seed: int = 0) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from rnnlab import Stack, scan

    rows = []
    for cell in SCAN_CELLS:
        for t in lengths:
            stack = Stack(cell, d_h, d_h)
            params = stack.init(jax.random.key(seed))
            x = jax.random.normal(jax.random.key(seed + 1), (t, batch, d_h), jnp.float32)
            p = params["layer_0"]["forward"]
            choice = scan.choose_path(stack.cell, p, stack.cell.initial_carry(batch, d_h), x)
            f = jax.jit(lambda params, x: stack.apply(params, x)[0])
            t0 = time.perf_counter()
            compiled = f.lower(params, x).compile()
            compile_s = time.perf_counter() - t0
            jax.block_until_ready(compiled(params, x))
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(compiled(params, x))
                times.append(time.perf_counter() - t0)
            moved = 2 * t * batch * d_h * 4  # the input read once, the output written once
            med = _median(times)
            rows.append({"cell": cell, "T": t, "B": batch, "H": d_h, "path": choice.path, "median_s": med,
                         "bytes_moved": moved, "achieved_gb_s": moved / med / 1e9, "compile_s": compile_s})
            log(f"  {cell} T={t}: {med * 1e3:.2f} ms, {moved / med / 1e9:.1f} GB/s ({choice.path})")
    return rows


# ----------------------------------------------------------------------------- LM step


def bench_lm(repeats: int, gpu: bool, smoke: bool) -> dict:
    """rnnlab's pytorch_example train step against the PyTorch example's (its model and its step:
    forward, cross entropy, backward, clip 0.25, SGD lr 20) on random tokens of the same shapes."""
    import jax
    import jax.numpy as jnp
    import pytorch_word_lm as torch_lm  # benchmarks/pytorch_word_lm.py
    import torch

    from experiments import language_modelling
    from rnnlab.models import lm as lm_model
    from rnnlab.tasks import lm as lm_task
    from rnnlab.train.optim import make_optimizer

    vocab, batch, bptt = (50, 2, 5) if smoke else (33278, 20, 35)
    config = language_modelling.get_config("pytorch_example")
    model = lm_model.build(config.model, vocab)
    tx = make_optimizer(config.optim)
    params = model.init(jax.random.key(0))
    state = jax.tree.map(jnp.array, {"params": params, "opt_state": tx.init(params),
                                     "carries": model.initial_carries(batch), "step": jnp.asarray(0, jnp.int32)})
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, (batch, bptt + 1))
    b = {"x": jnp.asarray(tokens[:, :-1], jnp.int32), "y": jnp.asarray(tokens[:, 1:], jnp.int32),
         "reset": jnp.zeros((batch, bptt), bool), "mask": jnp.ones((batch, bptt), bool), "new_epoch": np.bool_(False)}
    t0 = time.perf_counter()
    state, _ = lm_task.train_step(model, tx, state, b, jnp.float32(config.optim.lr), 0)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0

    device = "cuda" if gpu else "cpu"
    tmodel = torch_lm.RNNModel(vocab, 200, 200, 2, 0.2).to(device)
    crit = torch.nn.NLLLoss()  # the example's model returns log-probabilities
    data = torch.from_numpy(tokens.T.copy()).to(device)  # time-major, as the example
    hidden = tmodel.init_hidden(batch)
    sync = torch.cuda.synchronize if gpu else (lambda: None)

    def torch_step():
        nonlocal hidden
        hidden = tuple(h.detach() for h in hidden)
        tmodel.zero_grad()
        out, hidden = tmodel(data[:-1], hidden)
        loss = crit(out.view(-1, vocab), data[1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tmodel.parameters(), 0.25)
        with torch.no_grad():
            for p in tmodel.parameters():
                p.add_(p.grad, alpha=-20.0)
        sync()

    torch_step()
    times = {"rnnlab": [], "torch": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, _ = lm_task.train_step(model, tx, state, b, jnp.float32(config.optim.lr), 0)
        jax.block_until_ready(state)
        times["rnnlab"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        torch_step()
        times["torch"].append(time.perf_counter() - t0)
    tok = batch * bptt
    out = {"vocab": vocab, "batch": batch, "bptt": bptt, "compile_s": compile_s, "times_s": times,
           **{f"{k}_tokens_per_s": tok / _median(v) for k, v in times.items()}}
    out["rnnlab_speed_ratio_vs_torch"] = out["rnnlab_tokens_per_s"] / out["torch_tokens_per_s"]
    log(f"  LM step: rnnlab {out['rnnlab_tokens_per_s']:,.0f} tokens/s, torch {out['torch_tokens_per_s']:,.0f} "
        f"({out['rnnlab_speed_ratio_vs_torch']:.2f}x)")
    return out


# ----------------------------------------------------------------------------- report


def markdown(rep: dict) -> str:
    dev = rep["device"]
    lines = [f"# Accelerator benchmark: {dev['device_kind']} ({dev['platform']})", "",
             f"{dev.get('nvidia_smi', 'no nvidia-smi')}; jax {dev['jax']}; "
             f"{'smoke mode (tiny shapes)' if rep['smoke'] else 'full run'}.", "",
             "## Layers (speed ratio = peer time / rnnlab time; > 1: rnnlab faster)", "",
             "| dtype | cell | mode | B x T x D x H | " + " | ".join(rep["layer_peers"]) + " |",
             "|---|---|---|---|" + "---:|" * len(rep["layer_peers"])]
    for s in rep["layer_summaries"]:
        cells = [s.get(f"rnnlab_speed_ratio_vs_{p}") for p in rep["layer_peers"]]
        lines.append(f"| {s['dtype']} | {s['cell']} | {s['mode']} | {s['shape']} | "
                     + " | ".join("-" if c is None else f"{c:.2f}" for c in cells) + " |")
    lines += ["", f"## Linear scans (device copy bandwidth {rep['copy_gb_s']:.1f} GB/s)", "",
              "| cell | T | path | ms | achieved GB/s | of copy bandwidth |", "|---|---:|---|---:|---:|---:|"]
    for r in rep["scans"]:
        lines.append(f"| {r['cell']} | {r['T']} | {r['path']} | {1e3 * r['median_s']:.2f} | "
                     f"{r['achieved_gb_s']:.1f} | {100 * r['achieved_gb_s'] / rep['copy_gb_s']:.0f}% |")
    lm = rep["lm"]
    lines += ["", "## pytorch_example LM training step", "",
              f"rnnlab {lm['rnnlab_tokens_per_s']:,.0f} tokens/s, PyTorch {lm['torch_tokens_per_s']:,.0f} tokens/s "
              f"({lm['rnnlab_speed_ratio_vs_torch']:.2f}x); compile {lm['compile_s']:.1f} s.", "",
              "## Compile times of rnnlab's programs", "",
              f"layers: median {rep['compile']['layers_median_ms']:.0f} ms, max {rep['compile']['layers_max_ms']:.0f} "
              f"ms; scans: max {rep['compile']['scans_max_s']:.1f} s; LM step {lm['compile_s']:.1f} s."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for accelerator.json and accelerator.md")
    p.add_argument("--smoke", action="store_true", help="tiny shapes and lengths, 2 rounds: checks the code runs")
    p.add_argument("--repeats", type=int, default=0, help="timed rounds (default 5; smoke 2)")
    a = p.parse_args(argv)
    import jax

    from rnnlab import scan

    gpu = jax.default_backend() in scan.GPU_PLATFORMS
    repeats = a.repeats or (2 if a.smoke else 5)
    t_start = time.time()
    rep = {"smoke": a.smoke, "device": device_info(), "environment": layers_bench.environment()}
    log(f"device: {rep['device']}")
    log("layers")
    rows, summaries = bench_layers(SMOKE_SHAPES if a.smoke else SHAPES, repeats, gpu, smoke=a.smoke)
    rep.update(layer_rows=rows, layer_summaries=summaries,
               layer_peers=sorted({k[len("rnnlab_speed_ratio_vs_"):] for s in summaries for k in s
                                   if k.startswith("rnnlab_speed_ratio_vs_") and not k.endswith("_paired")}))
    log("scans")
    batch, d_h = (2, 8) if a.smoke else (8, 256)
    rep["copy_gb_s"] = copy_bandwidth((1 << 20) if a.smoke else (1 << 30), repeats)
    rep["scans"] = bench_scans(SMOKE_SCAN_T if a.smoke else SCAN_T, batch, d_h, repeats)
    log("lm")
    rep["lm"] = bench_lm(repeats, gpu, a.smoke)
    compiles = [r["compile_ms"] for r in rows if r["impl"] == "rnnlab" and r["compile_ms"] is not None]
    rep["compile"] = {"layers_median_ms": _median(compiles), "layers_max_ms": max(compiles),
                      "scans_max_s": max(r["compile_s"] for r in rep["scans"]), "lm_step_s": rep["lm"]["compile_s"]}
    rep["seconds"] = time.time() - t_start
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "accelerator.json"), "w") as f:
        json.dump(rep, f, indent=1)
    with open(os.path.join(a.out, "accelerator.md"), "w") as f:
        f.write(markdown(rep))
    log(markdown(rep))
    log(f"wrote {a.out}/accelerator.json and accelerator.md in {rep['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
