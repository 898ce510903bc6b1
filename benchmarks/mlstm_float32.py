"""mLSTM's two forms in float32 against float64, at T = 4096 with resets and lengths.

    python benchmarks/mlstm_float32.py [--out benchmarks/results/mlstm_float32]

For each direction: the largest error, relative to max(|reference|, 1) per array
(tests/test_parallel_scan.py's measure), of the outputs and final carry and of the
gradients (parameters, carry0, inputs) of the sequential path (a scan of ``step``)
and of the chunkwise-parallel path, both in float32, against the sequential path in
float64 (the same problem as tests/test_parallel_scan.py). Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import test_parallel_scan as t  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                 "mlstm_float32"))
    p.add_argument("--steps", type=int, default=4096)
    args = p.parse_args(argv)
    rows = []
    for reverse in (False, True):
        cell, params, xs, carry0, reset, lengths = t._problem("mlstm", args.steps, jnp.float32)
        kw = dict(reset_TxB=reset, lengths_B=lengths, reverse=reverse)
        to64 = lambda tree: jax.tree.map(lambda a: a.astype(jnp.float64), tree)  # noqa: E731
        ref_out, ref_g = t._loss_and_grads(cell, to64(params), to64(carry0), to64(xs), "sequential", **kw)
        got = {path: t._loss_and_grads(cell, params, carry0, xs, path, **kw) for path in ("sequential", "parallel")}
        row = {"reverse": reverse, "steps": args.steps}
        for path, (out, g) in got.items():
            row[f"{path}_outputs_vs_float64"] = float(t._max_rel_err(out, ref_out))
            row[f"{path}_grads_vs_float64"] = float(t._max_rel_err(g, ref_g))
        row["parallel_vs_sequential_outputs"] = float(t._max_rel_err(got["parallel"][0], got["sequential"][0]))
        row["parallel_vs_sequential_grads"] = float(t._max_rel_err(got["parallel"][1], got["sequential"][1]))
        print(json.dumps(row), flush=True)
        rows.append(row)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"command": "python benchmarks/mlstm_float32.py", "jax": jax.__version__, "rows": rows}, f, indent=1)
    lines = ["| direction | float32 path | outputs vs float64 | gradients vs float64 |", "|---|---|---:|---:|"]
    for r in rows:
        for path in ("sequential", "parallel"):
            lines.append(f"| {'reverse' if r['reverse'] else 'forward'} | {path} | "
                         f"{r[f'{path}_outputs_vs_float64']:.2e} | {r[f'{path}_grads_vs_float64']:.2e} |")
    lines.append("")
    lines.append("Between the two float32 paths: " + "; ".join(
        f"{'reverse' if r['reverse'] else 'forward'}: outputs {r['parallel_vs_sequential_outputs']:.2e}, "
        f"gradients {r['parallel_vs_sequential_grads']:.2e}" for r in rows) + ".")
    with open(args.out + ".md", "w") as f:
        f.write(f"mLSTM at T = {args.steps}, float32 against float64 (`python benchmarks/mlstm_float32.py`, "
                f"jax {jax.__version__}):\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
