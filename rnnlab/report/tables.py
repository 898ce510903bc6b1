"""Markdown tables and CSV files rendered from gathered rows, and the text of an
interval with its footnotes (2 seeds, a lower end clipped at 0).

    lines = markdown_table(["configuration", "test"], [[label, ci_text(s)] for label, s in rows])
    lines += footnotes([s for _, s in rows])
"""

from __future__ import annotations

import csv
import math
import os

FEW_SEEDS_MARK = "†"  # the interval is over 2 seeds
CLIPPED_MARK = "‡"  # the lower end was clipped at 0


def fmt(v, spec: str = ".4g") -> str:
    """A number for a table: '-' for None / NaN / inf."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def marks(s: dict) -> str:
    return (FEW_SEEDS_MARK if s.get("n") == 2 else "") + (CLIPPED_MARK if s.get("clipped") else "")


def ci_text(s: dict, spec: str = ".4g") -> str:
    """'mean ± std [low, high]' of a stats.mean_ci dict, with footnote marks; a single
    seed gives the mean alone."""
    if s.get("n", 0) < 2:
        return fmt(s.get("mean"), spec) + (" (1 seed)" if s.get("n") == 1 else "")
    return f"{fmt(s['mean'], spec)} ± {fmt(s['std'], '.2g')} [{fmt(s['ci_low'], spec)}, {fmt(s['ci_high'], spec)}]{marks(s)}"


def footnotes(all_stats: list[dict]) -> list[str]:
    """The footnotes the marks of ``ci_text`` refer to, for those present."""
    out = []
    if any(s.get("n") == 2 for s in all_stats):
        out.append(f"{FEW_SEEDS_MARK} 2 seeds: wide interval (Student t with 1 degree of freedom, t = 12.7); "
                   "read it as a rough range, not as evidence of a difference.")
    if any(s.get("clipped") for s in all_stats):
        out.append(f"{CLIPPED_MARK} lower end clipped at 0: the quantity cannot be negative, and the symmetric "
                   "Student-t interval reached below 0.")
    return [""] + out if out else []


def markdown_table(header: list[str], rows: list[list], align: list[str] | None = None) -> list[str]:
    """A markdown table; cells are formatted with ``fmt`` and '|' inside a cell is escaped."""
    def cell(v):
        return fmt(v).replace("|", "/").replace("\n", " ")

    sep = [{"r": "---:", "c": ":---:"}.get(a, "---") for a in (align or ["l"] * len(header))]
    return ["| " + " | ".join(map(cell, header)) + " |", "|" + "|".join(sep) + "|"] + [
        "| " + " | ".join(map(cell, r)) + " |" for r in rows]


def write_csv(path: str, rows: list[dict], keys: list[str] | None = None) -> None:
    """Rows (dicts) as CSV; the columns are ``keys`` or every key in first-seen order."""
    keys = keys or list(dict.fromkeys(k for r in rows for k in r))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys, restval="", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
