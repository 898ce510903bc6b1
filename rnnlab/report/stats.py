"""Mean, sample standard deviation and the 95% Student-t interval of a metric over
seeds, with the caveats a reader needs:

- n = 1: no interval (NaN ends); n = 2: the interval is shown but flagged
  (``caveat``), since t with 1 degree of freedom is 12.7 and the interval is wide;
- a quantity that cannot be negative (a loss, NLL, bpc, perplexity, MSE, error
  rate: ``nonnegative(metric)``) gets its lower end CLIPPED at 0 (``clipped`` says
  when that happened); the upper end is the plain Student-t one.

    s = mean_ci([2.93, 2.97, 2.99], nonnegative=True)
    s["mean"], s["ci_low"], s["ci_high"], s["caveat"]
"""

from __future__ import annotations

import math
import re

import numpy as np
from scipy import stats as scipy_stats

# metric names (any part of 'kind/key' or a result.json key) that cannot go below 0
_NONNEGATIVE = re.compile(r"loss|nll|bpc|bits|ppl|perplexity|mse|cross_?entropy|(^|[_/])(wer|cer|ce)($|[_/])")


def nonnegative(metric: str | None) -> bool:
    """Whether ``metric`` (e.g. 'valid/nll', 'test_bpc', 'eval_loss') names a quantity >= 0."""
    return bool(metric) and bool(_NONNEGATIVE.search(metric.lower()))


def caveat(n: int) -> str | None:
    """What a reader must know about an interval over ``n`` seeds (None when nothing)."""
    if n == 1:
        return "1 seed: no interval"
    if n == 2:
        return "2 seeds: wide interval (t with 1 degree of freedom = 12.7)"
    return None


def mean_ci(values: list[float], level: float = 0.95, *, nonnegative: bool = False) -> dict:
    """{n, mean, std (ddof 1), ci_low, ci_high, clipped, caveat} of ``values``: the
    interval is mean -+ t_(n-1) * std / sqrt(n), its lower end clipped at 0 when
    ``nonnegative`` (then ``clipped`` is True if the clip changed it)."""
    x = np.asarray(values, np.float64)
    n = len(x)
    out = {"n": n, "mean": math.nan, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan,
           "clipped": False, "caveat": caveat(n)}
    if n == 0:
        return out
    out["mean"] = float(x.mean())
    if n < 2:
        return out
    std = float(x.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    low, high = out["mean"] - half, out["mean"] + half
    if nonnegative and low < 0:
        low, out["clipped"] = 0.0, True
    out.update(std=std, ci_low=low, ci_high=high)
    return out


def separated(a: dict | None, b: dict | None) -> bool:
    """Whether two ``mean_ci`` intervals lie apart (neither reaches the other). False when
    either is missing or has fewer than 2 values, so no interval."""
    if not a or not b or a.get("n", 0) < 2 or b.get("n", 0) < 2:
        return False
    return a["ci_high"] < b["ci_low"] or b["ci_high"] < a["ci_low"]
