"""Figures from a run's metrics.jsonl (matplotlib, Agg backend: no display needed).

    python -m rnnlab.plots --workdir=runs/shakespeare_char --out=docs/lm/shakespeare_char
"""

from __future__ import annotations

import math
import os

from rnnlab.train.writers import read_metrics


def learning_curves(workdirs: dict[str, str] | list[str], out_prefix: str, *, metric: str = "loss",
                    title: str = "") -> list[str]:
    """Train and validation curves (x: step and wall-clock minutes) of one or more
    runs; writes OUT.png and OUT.svg and returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(workdirs, dict):
        workdirs = {os.path.basename(os.path.normpath(w)): w for w in workdirs}
    fig, (ax_step, ax_time) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for name, wd in workdirs.items():
        rows = read_metrics(wd)
        if not rows:
            raise FileNotFoundError(f"no metrics.jsonl rows in {wd}")
        t0 = rows[0]["time"]
        for kind, key, style in (("train", metric, "-"), ("valid", "nll", "o-")):
            pts = [(r["step"], (r["time"] - t0) / 60, r[key]) for r in rows
                   if r["kind"] == kind and isinstance(r.get(key), float) and math.isfinite(r[key])]
            if pts:
                s, m, v = zip(*pts, strict=True)
                label = f"{name} {kind}"
                ax_step.plot(s, v, style, label=label, ms=3)
                ax_time.plot(m, v, style, label=label, ms=3)
    ax_step.set_xlabel("step")
    ax_time.set_xlabel("wall-clock minutes (incl. evaluation)")
    ax_step.set_ylabel("nats per token")
    for ax in (ax_step, ax_time):
        ax.grid(alpha=0.3)
    ax_time.legend()
    fig.suptitle(title or ", ".join(workdirs))
    fig.tight_layout()
    os.makedirs(os.path.dirname(out_prefix) or ".", exist_ok=True)
    paths = [f"{out_prefix}.png", f"{out_prefix}.svg"]
    for p in paths:
        fig.savefig(p, dpi=120)
    plt.close(fig)
    return paths


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
