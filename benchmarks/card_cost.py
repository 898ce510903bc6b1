"""What one cell's report card costs at a budget, from the time of one training step per task.

    python benchmarks/card_cost.py [--cells gru,mlstm,mlstm:heads=8,mlstm:heads=16] [--budget small]
        [--tasks adding,copy,char_lm] [--out benchmarks/results/card_cost]

For each cell and task: the card's own trial config (``experiments/card.py``: the width matched
to the task's parameter budget, its batch and sequence length), one training step (forward and
backward of the model's loss, and the optimizer) timed after its compile, the median of
``--repeats`` calls; then that task's share of the card, steps x rates x seeds, at the card's
2 trials at a time. The cells are timed side by side in one run, so the ratios between them
hold on a loaded machine. Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402


def step_seconds(config, repeats: int) -> float:
    from experiments import lstm_vs_gru as base
    from rnnlab.tasks import sequence
    from rnnlab.train.optim import make_optimizer

    if base._get(config, "study.task") == "char_lm":
        raise ValueError("char_lm is timed by the LM task's own benchmark (benchmarks/layers.py); leave it out")
    model, spec = sequence.build(config)
    tx = make_optimizer(config.optim)
    params = model.init(jax.random.key(0))
    state = {"params": params, "opt_state": tx.init(params), "step": jax.numpy.asarray(0)}
    batch = sequence.device_batch(spec.batch(0, 0, config.task.batch_size))
    lr = jax.numpy.float32(config.optim.lr)
    state, _ = sequence.train_step(model, tx, state, batch, lr)  # compile
    jax.block_until_ready(state)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, m = sequence.train_step(model, tx, state, batch, lr)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None) -> int:
    from experiments import card

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", default="gru,mlstm,mlstm:heads=8,mlstm:heads=16")
    p.add_argument("--budget", default="small", choices=card.BUDGETS)
    p.add_argument("--tasks", default="adding,copy,mqar_p8")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "card_cost"))
    a = p.parse_args(argv)
    runs = len(card._LRS[a.budget]) * card.SEEDS_DEFAULT[a.budget]
    rows = []
    for token in a.cells.split(","):
        cell, options = card._cell_and_options(token)
        for task in a.tasks.split(","):
            arg = f"{task}@{a.budget},cell={cell}" + (f",cell_options={options}" if options else "")
            c = card.get_config(arg)
            s = step_seconds(c, a.repeats)
            minutes = s * c.train.num_steps * runs / 2 / 60  # 2 trials at a time
            rows.append({"cell": token, "task": task, "width": int(c.model.d_hidden),
                         "batch": int(c.task.batch_size), "steps": int(c.train.num_steps), "step_seconds": s,
                         "task_minutes_2_at_a_time": minutes})
            print(f"{token} {task}: width {c.model.d_hidden}, {s * 1e3:.1f} ms/step, {minutes:.1f} min for its "
                  f"{runs} trials", flush=True)
    first = rows[0]["cell"]
    for r in rows:
        ref = next(x for x in rows if x["cell"] == first and x["task"] == r["task"])
        r["step_ratio_to_" + first] = r["step_seconds"] / ref["step_seconds"]
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    meta = {"budget": a.budget, "cpus": os.cpu_count(), "load_1min": os.getloadavg()[0],
            "date": time.strftime("%Y-%m-%d %H:%M"), "command": "python benchmarks/card_cost.py " + " ".join(argv or
                                                                                                          sys.argv[1:])}
    with open(a.out + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    lines = [f"# Card cost at '{a.budget}' ({meta['date']}, {meta['cpus']} cores, load {meta['load_1min']:.1f})", "",
             f"`{meta['command']}`: one training step of each task's trial config, median of {a.repeats}; the "
             f"task's trials ({runs}: rates x seeds) at 2 at a time.", "",
             f"| cell | task | width | ms per step | x {first} | minutes for the task's trials |",
             "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['cell']} | {r['task']} | {r['width']} | {r['step_seconds'] * 1e3:.1f} | "
              f"{r['step_ratio_to_' + first]:.1f} | {r['task_minutes_2_at_a_time']:.1f} |" for r in rows]
    with open(a.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
