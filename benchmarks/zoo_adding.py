"""Every registered cell on the adding problem at T = 100 (Hochreiter & Schmidhuber
1997; baseline MSE 1/6 = 0.1667 by always predicting 1): a short run per cell,
final eval/test MSE against the baseline, into docs/zoo/adding_T100.json and the
table of docs/zoo/README.md. Not a CI test: a few minutes of CPU.

    nice -n 5 python benchmarks/zoo_adding.py                     # every cell, 400 steps, 1x32
    nice -n 5 python benchmarks/zoo_adding.py --cells mingru,lru --steps 200 --root /tmp/zoo

Each cell is one trial of experiments/gradient_flow.py (Adam 1e-2, clipping 1.0,
batch 50) run as ``python -m rnnlab.main`` in ROOT/CELL, so a rerun reuses
finished trials. LRU and IndRNN run 2 layers, as their papers do on this task:
one LRU's h_T is linear in the inputs, so it cannot form sum_t v_t m_t; one
layer of independent relu units has to both gate by the marker and accumulate
(the 2-layer runs are in docs/zoo/adding_T100.json; no 1-layer run is stored).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from rnnlab import cells  # noqa: E402
from rnnlab.train import writers  # noqa: E402

BASELINE = 1.0 / 6.0
LAYERS = {"lru": 2, "indrnn": 2}  # see the docstring


def run_cell(name: str, args) -> dict:
    workdir = os.path.join(args.root, name)
    layers = LAYERS.get(name, 1)
    cmd = [sys.executable, "-m", "rnnlab.main",
           f"--config=experiments/gradient_flow.py:default,cell={name},T=100,H={args.hidden},steps={args.steps}",
           f"--workdir={workdir}", f"--config.model.num_layers={layers}", "--config.train.checkpoint_steps=0",
           f"--config.train.eval_every={args.steps // 4}", f"--config.train.log_every={args.steps // 4}",
           f"--config.train.checkpoint_every={args.steps}"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"cell": name, "error": proc.stderr[-2000:]}
    with open(os.path.join(workdir, "result.json")) as f:
        res = json.load(f)
    return {"cell": name, "layers": layers, "hidden": args.hidden, "steps": res["step"], "parameters": res["parameters"],
            "eval_mse": res["eval_loss"], "test_mse": res.get("test_loss"), "baseline": BASELINE,
            "below_baseline": res["eval_loss"] < BASELINE, "train_seconds": res["train_seconds"],
            "wall_seconds": time.time() - t0}


def readme(rows: list[dict], meta: dict) -> str:
    lines = ["# The cell zoo on the adding problem, T = 100", "",
             f"Written by `benchmarks/zoo_adding.py` ({meta['steps']} steps per cell, Adam 1e-2, clipping 1.0, "
             f"batch 50; {meta['hidden']} units; one seed; 2 shared CPU cores, load {meta['load_avg'][0]:.1f} at "
             f"start). Baseline MSE 1/6 = {BASELINE:.4f} (always predict 1). Numbers: `adding_T100.json`.", "",
             "| cell | layers x H | parameters | eval MSE | test MSE | / baseline | below baseline | train s |",
             "|---|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['cell']} | error | | | | | | |")
            continue
        lines.append(f"| {r['cell']} | {r['layers']}x{r['hidden']} | {r['parameters']:,} | {r['eval_mse']:.4f} | "
                     f"{r['test_mse']:.4f} | {r['eval_mse'] / BASELINE:.3f} | "
                     f"{'yes' if r['below_baseline'] else 'NO'} | {r['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", default=",".join(cells.available()))
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--root", default="runs/zoo_adding")
    ap.add_argument("--out", default="docs/zoo")
    args = ap.parse_args(argv)
    names = args.cells.split(",")
    meta = {"steps": args.steps, "hidden": args.hidden, "load_avg": os.getloadavg(), "cpu_count": os.cpu_count()}
    progress, rows = writers.Progress(len(names)), []
    for i, name in enumerate(names):
        rows.append(run_cell(name, args))
        r = rows[-1]
        progress.line(i + 1, {"cell": name, **({"eval_mse": r["eval_mse"]} if "eval_mse" in r else {"error": 1})}, 0)
    meta["load_avg_end"] = os.getloadavg()
    os.makedirs(args.out, exist_ok=True)
    writers.write_json_atomic(os.path.join(args.out, "adding_T100.json"), {"meta": meta, "rows": rows})
    text = readme(rows, meta)
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(text)
    print(text, flush=True)


if __name__ == "__main__":
    main()
