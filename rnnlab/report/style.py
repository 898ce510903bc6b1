"""THE matplotlib set-up for every figure in the repository: the Agg backend (no
display needed, safe in subprocesses and on clusters) and one look.

    from rnnlab.report import style
    plt = style.pyplot()
    fig, ax = plt.subplots()
    ...
    style.save(fig, "docs/study/curves")      # curves.png (and .svg with svg=True)
"""

from __future__ import annotations

import os

LOOK = {  # one look: light grid, readable small legends, no top/right frame
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "figure.dpi": 110,
    "savefig.dpi": 120,
    "savefig.bbox": "tight",
    "lines.markersize": 4,
}


def pyplot():
    """matplotlib.pyplot on the Agg backend with the house look applied."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(LOOK)
    return plt


def save(fig, stem: str, *, svg: bool = False) -> list[str]:
    """Write ``stem.png`` (and ``stem.svg``), close the figure; returns the paths.
    ``stem`` may end in .png already."""
    stem = stem[:-4] if stem.endswith(".png") else stem
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    paths = [f"{stem}.png"] + ([f"{stem}.svg"] if svg else [])
    for p in paths:
        fig.savefig(p)
    pyplot().close(fig)
    return paths
