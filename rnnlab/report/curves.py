"""Learning curves from metrics.jsonl rows: extraction ('KIND/KEY' specs such as
'train/loss', 'valid/nll', 'eval/loss'), the mean over seeds, and drawing that never
leaves an empty panel (a curve of one point, such as a validation metric logged
once per trial, is drawn with a marker).

    python -m rnnlab.report.curves --workdir=runs/shakespeare_char --out=docs/lm/shakespeare_char
"""

from __future__ import annotations

import math
import os

import numpy as np

from rnnlab.report import style
from rnnlab.train.writers import read_metrics

MARKERS_UP_TO = 12  # points in a curve drawn with markers too: sparse evaluations stay visible


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def metric_curve(rows: list[dict], spec: str | None) -> list[tuple[int, float]]:
    """(step, value) of 'KIND/KEY' in metrics.jsonl rows, finite values only."""
    if not spec:
        return []
    kind, key = spec.split("/", 1)
    return [(int(r["step"]), float(r[key])) for r in rows if r.get("kind") == kind and _number(r.get(key))]


def mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """The mean over seeds at the steps every seed logged."""
    curves = [c for c in curves if c]
    if not curves:
        return []
    steps = set.intersection(*({s for s, _ in c} for c in curves))
    by_step = [dict(c) for c in curves]
    return [(s, float(np.mean([c[s] for c in by_step]))) for s in sorted(steps)]


def plot_curve(ax, points: list[tuple[int, float]], **kw):
    """Draw (step, value) points on ``ax``; with MARKERS_UP_TO points or fewer each
    point gets a marker (one point is a marker alone). Returns the Line2D or None."""
    if not points:
        return None
    if len(points) <= MARKERS_UP_TO:
        kw.setdefault("marker", "o")
    steps, values = zip(*points, strict=True)
    (line,) = ax.plot(steps, values, **kw)
    return line


def learning_curves(workdirs: dict[str, str] | list[str], out_prefix: str, *, metric: str = "loss",
                    title: str = "") -> list[str]:
    """Train and validation curves (x: step and wall-clock minutes) of one or more
    runs; writes OUT.png and OUT.svg and returns their paths."""
    plt = style.pyplot()
    if not isinstance(workdirs, dict):
        workdirs = {os.path.basename(os.path.normpath(w)): w for w in workdirs}
    fig, (ax_step, ax_time) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for name, wd in workdirs.items():
        rows = read_metrics(wd)
        if not rows:
            raise FileNotFoundError(f"no metrics.jsonl rows in {wd}; pass a run's workdir")
        t0 = rows[0]["time"]
        for kind, key in (("train", metric), ("valid", "nll")):
            pts = [(r["step"], (r["time"] - t0) / 60, r[key]) for r in rows if r["kind"] == kind and _number(r.get(key))]
            if pts:
                s, m, v = zip(*pts, strict=True)
                plot_curve(ax_step, list(zip(s, v, strict=True)), label=f"{name} {kind}")
                plot_curve(ax_time, list(zip(m, v, strict=True)), label=f"{name} {kind}")
    ax_step.set_xlabel("step")
    ax_time.set_xlabel("wall-clock minutes (incl. evaluation)")
    ax_step.set_ylabel("nats per token")
    ax_time.legend()
    fig.suptitle(title or ", ".join(workdirs))
    return style.save(fig, out_prefix, svg=True)


def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", action="append", required=True, help="a run's workdir (repeatable)")
    ap.add_argument("--out", required=True, help="output path prefix (.png and .svg are added)")
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    for p in learning_curves(args.workdir, args.out, title=args.title):
        print(p)


if __name__ == "__main__":
    main()
