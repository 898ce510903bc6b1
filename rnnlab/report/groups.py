"""Trials grouped into configurations with the seed factored out, and the labels
that name a configuration by what varies across the sweep.

    label_of = labeller([t["config"] for t in trials], fallback="gradient_flow")
    by_config = group(trials, fallback="gradient_flow")   # label -> trials (seeds)

A label lists only the dotted keys whose values differ between trials, besides the
seed ('optim.lr=0.01, model.cell=gru'); when only the seed varies every trial has
the same configuration and the label is ``fallback`` (the study or variant name).
"""

from __future__ import annotations

import json
from collections.abc import Callable

SEED_KEYS = ("seed",)  # last dotted part of a key that only picks a seed


def is_seed(key: str) -> bool:
    return key.split(".")[-1] in SEED_KEYS


def varying_keys(flat_configs: list[dict]) -> list[str]:
    """Dotted keys whose values differ between the configs, the seed keys left out (in
    first-seen order)."""
    keys = list(dict.fromkeys(k for c in flat_configs for k in c))
    return [k for k in keys if not is_seed(k) and len({json.dumps(c.get(k), sort_keys=True) for c in flat_configs}) > 1]


def labeller(flat_configs: list[dict], fallback: str) -> Callable[[dict], str]:
    """A function config -> label over the keys that vary among ``flat_configs``."""
    if not fallback:
        raise ValueError("a label fallback (the study or variant name) is needed for sweeps where only the seed varies")
    keys = varying_keys(flat_configs)
    return lambda c: ", ".join(f"{k}={c.get(k)}" for k in keys) or fallback


def group(trials: list[dict], fallback: str, config_key: str = "config") -> dict[str, list[dict]]:
    """Label -> the trials (dicts with a flat config under ``config_key``) of that configuration."""
    label = labeller([t[config_key] for t in trials], fallback)
    out: dict[str, list[dict]] = {}
    for t in trials:
        out.setdefault(label(t[config_key]), []).append(t)
    return out
