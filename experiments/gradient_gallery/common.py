"""What every gallery figure shares: its record (claim, check, settings, time), where it
writes (``OUT/NAME/NAME.{png,svg,json,csv}``) and progress lines.

A figure module has ``NAME``, ``TITLE``, ``CLAIM`` (the paper's claim in one sentence)
and ``run(smoke: bool) -> Result``; ``write`` adds the time and stores it."""

from __future__ import annotations

import csv
import json
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Check:
    """The claim as a number: ``value`` compared with ``threshold`` by ``op`` ('<', '<=' or '>')."""

    quantity: str  # what is measured, in words
    value: float
    op: str
    threshold: float

    @property
    def holds(self) -> bool:
        return bool({"<": self.value < self.threshold, "<=": self.value <= self.threshold,
                     ">": self.value > self.threshold}[self.op])

    def to_json(self) -> dict:
        return {"quantity": self.quantity, "value": float(self.value), "op": self.op,
                "threshold": float(self.threshold), "holds": self.holds}


@dataclass
class Result:
    settings: dict[str, Any]  # what was run (sizes, grids, seeds)
    checks: list[Check]
    numbers: dict[str, Any]  # the measured quantities behind the figure (JSON-able)
    rows: list[dict[str, Any]] = field(default_factory=list)  # the CSV behind the figure
    figure: Any = None  # a matplotlib figure; saved as PNG and SVG


def _plain(x):
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return str(x)  # JSON has no inf/nan: 'inf'
    return x


def write(module, result: Result, out_root: str, *, smoke: bool, seconds: float, cpu_seconds: float) -> dict:
    """Stores a figure's artifacts under ``out_root/NAME/`` and returns its record."""
    from rnnlab.report import style

    out = os.path.join(out_root, module.NAME)
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, module.NAME)
    if result.figure is not None:
        style.save(result.figure, stem, svg=True)
    if result.rows:
        with open(f"{stem}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(result.rows[0]))
            w.writeheader()
            w.writerows(result.rows)
    record = {"figure": module.NAME, "title": module.TITLE, "claim": module.CLAIM, "smoke": smoke,
              "command": f"python -m experiments.gradient_gallery --figure {module.NAME}" + (" --smoke" * smoke),
              "settings": _plain(result.settings), "checks": [c.to_json() for c in result.checks],
              "all_hold": all(c.holds for c in result.checks), "numbers": _plain(result.numbers),
              "wall_seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
              "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}"}
    tmp = f"{stem}.json.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    os.replace(tmp, f"{stem}.json")  # a crash never leaves half a record
    return record


class Progress:
    """``every`` seconds at most: 'NAME: i/n (what) | elapsed | ETA'."""

    def __init__(self, name: str, total: int, every: float = 5.0):
        self.name, self.total, self.every = name, total, every
        self.t0 = self.last = time.time()

    def __call__(self, i: int, what: str = "") -> None:
        now = time.time()
        if now - self.last < self.every and i < self.total:
            return
        self.last = now
        done = now - self.t0
        eta = done / max(i, 1) * (self.total - i)
        print(f"{self.name}: {i}/{self.total} {what} | {done:.0f} s | ETA {eta:.0f} s", flush=True)
