"""python -m experiments.gradient_gallery --figure NAME|all [--smoke] [--out DIR]"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO_ROOT not in sys.path:  # the rnnlab beside this folder
    sys.path.insert(0, REPO_ROOT)

from experiments.gradient_gallery import FIGURES  # noqa: E402

PUBLISHED = os.path.join(REPO_ROOT, "docs", "gradient_flow", "gallery")


def run_figure(name: str, out: str, smoke: bool, work: str = "") -> dict:
    """Runs one figure and writes its artifacts under ``out/name``; returns its record. A figure
    with trials (``run(smoke, work)``) keeps their workdirs under ``work``."""
    import jax

    jax.config.update("jax_enable_x64", True)  # the gallery's numbers are float64
    from experiments.gradient_gallery import common

    module = importlib.import_module(f"experiments.gradient_gallery.{name}")
    print(f"{name}: {module.TITLE}{' (smoke)' * smoke}", flush=True)
    t0, c0 = time.time(), time.process_time()
    if "work" in inspect.signature(module.run).parameters:
        result = module.run(smoke, work=work or os.path.join("runs", "gradient_gallery"))
    else:
        result = module.run(smoke)
    record = common.write(module, result, out, smoke=smoke, seconds=time.time() - t0,
                          cpu_seconds=time.process_time() - c0)
    for c in record["checks"]:
        print(f"  {'holds' if c['holds'] else 'FAILS'}: {c['quantity']} = {c['value']:.4g} "
              f"(claim: {c['op']} {c['threshold']:g})", flush=True)
    print(f"{name}: {record['wall_seconds']} s -> {os.path.join(out, name)}", flush=True)
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.gradient_gallery", description=__doc__)
    p.add_argument("--figure", required=True, help=f"one of {', '.join(FIGURES)}, or all")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, seconds each (CI)")
    p.add_argument("--out", default="", help=f"artifact folder (default: {os.path.relpath(PUBLISHED, REPO_ROOT)}, "
                   "or runs/gradient_gallery_smoke with --smoke: a smoke run never overwrites the published figures)")
    p.add_argument("--work", default="", help="where figures with trials keep their workdirs (default "
                   "runs/gradient_gallery; the same command resumes them)")
    args = p.parse_args(argv)
    names = FIGURES if args.figure == "all" else (args.figure,)
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        p.error(f"--figure {unknown[0]!r}: no such figure; choose from {', '.join(FIGURES)}, or all")
    out = args.out or (os.path.join("runs", "gradient_gallery_smoke") if args.smoke else PUBLISHED)
    records = [run_figure(n, out, args.smoke, args.work) for n in names]
    failed = [r["figure"] for r in records if not r["all_hold"]]
    if failed:
        print(f"claims not reproduced: {', '.join(failed)} (see each figure's JSON)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
