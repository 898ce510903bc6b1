"""Helpers for experiment config files (``get_config(arg)``): the ':variant,k=v'
argument and typed dotted overrides. Configs themselves live in experiments/."""

from __future__ import annotations

import ast
from typing import Any

import ml_collections


def parse_arg(arg: str, default: str = "default") -> tuple[str, dict[str, str]]:
    """'smoke,cell=gru,optim.lr=0.1' -> ('smoke', {'cell': 'gru', 'optim.lr': '0.1'})."""
    variant, overrides, seen_variant = default, {}, False
    for item in filter(None, (s.strip() for s in (arg or "").split(","))):
        if "=" in item:
            k, v = item.split("=", 1)
            overrides[k.strip()] = v.strip()
        elif overrides:
            last = next(reversed(overrides))
            raise ValueError(
                f"{item!r} follows {last}={overrides[last]!r} in the config string {arg!r}: a ',' separates "
                f"overrides there, so a value cannot contain one; pass it as a flag instead, e.g. "
                f"--config.{last}='{overrides[last]},{item},...' (the variant, if any, comes first)")
        elif seen_variant:
            raise ValueError(f"two variants in the config string {arg!r} ({variant!r} and {item!r}); give one")
        else:
            variant, seen_variant = item, True
    return variant, overrides


def set_dotted(c: ml_collections.ConfigDict, dotted: str, value: str) -> None:
    """Set ``c[dotted]`` from a string, converted to the declared field's type;
    an undeclared key is a KeyError naming it."""
    *path, last = dotted.split(".")
    node = c
    for p in path:
        if p not in node:
            raise KeyError(f"config has no key {dotted!r}")
        node = node[p]
    if last not in node:
        raise KeyError(f"config has no key {dotted!r}")
    old = node[last]
    if isinstance(old, bool):
        node[last] = value.lower() in ("1", "true", "yes")
    else:
        node[last] = type(old)(value)


def with_option(spec: str, key: str, value: str) -> str:
    """Set one 'key=value' in a cell_options string, replacing any earlier value."""
    items = [s for s in spec.split(",") if s.strip() and s.split("=")[0].strip() != key]
    return ",".join(items + [f"{key}={value}"])


def parse_options(spec: str) -> dict[str, Any]:
    """'forget_bias=0.0,input_init=pytorch' -> {'forget_bias': 0.0, 'input_init': 'pytorch'}."""
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if "=" not in item:
            raise ValueError(f"model.cell_options: {item!r} is not key=value (e.g. 'forget_bias=0.0')")
        k, v = (s.strip() for s in item.split("=", 1))
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out
