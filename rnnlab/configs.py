"""Helpers for experiment config files (``get_config(arg)``): the ':variant,k=v'
argument and typed dotted overrides. Configs themselves live in experiments/."""

from __future__ import annotations

import ast
import difflib
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


TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")


class ConfigKeyError(KeyError):
    """A key the config does not declare. ``str()`` is the one-line message itself
    (a plain KeyError would print it quoted)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def dotted_keys(c: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every key of ``c`` as a dotted path, sections and leaves: ['optim', 'optim.lr', ...]."""
    out = []
    for k, v in c.items():
        out.append(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            out += dotted_keys(v, f"{prefix}{k}.")
    return out


def unknown_key_message(c: ml_collections.ConfigDict, dotted: str) -> str:
    """'config has no key 'train.tensorbord'; did you mean 'train.tensorboard'?' (the
    suggestion by difflib over every dotted key; without a close one, the keys there)."""
    keys = dotted_keys(c)
    close = difflib.get_close_matches(dotted, keys, n=1, cutoff=0.6)
    if close:
        return f"config has no key {dotted!r}; did you mean {close[0]!r}?"
    parts = dotted.split(".")
    parent = next((".".join(parts[:n]) for n in range(len(parts) - 1, 0, -1) if ".".join(parts[:n]) in keys), "")
    there = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent]
    where = f"under {parent!r}" if parent else "at the top"
    return f"config has no key {dotted!r}; the keys {where} are: {', '.join(there)}"


def has_key(c: ml_collections.ConfigDict, dotted: str) -> bool:
    node: Any = c
    for p in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or p not in node:
            return False
        node = node[p]
    return True


def parse_bool(value: str, *, name: str = "value") -> bool:
    """'true'/'false', '1'/'0', 'yes'/'no' (any case) -> bool; anything else is a
    ValueError (so a typo such as 'ture' is never read as False)."""
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"config {name}={value!r} is not a boolean; use one of true/false, 1/0, yes/no")


def parse_tuple(value: str, like: tuple, *, name: str = "value") -> tuple:
    """'0;500;2000' (or '0,500,2000') -> (0, 500, 2000): items separated by ';' or
    ',' (in the variant argument ',' separates overrides, so use ';' there), each
    converted to the type of ``like``'s first item (when ``like`` is empty: a Python
    literal if it reads as one, else the string). '' is the empty tuple; a tuple's
    own text, '(0, 500)' (what str() of one gives), is read too."""
    value = value.strip()
    if value[:1] and value[0] in "([" and value[-1] in ")]":  # str(tuple): a sweep's override passed on as text
        try:
            got = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"config {name}={value!r} is not a tuple; write e.g. '0;500' or '(0, 500)'") from None
        return tuple(got) if not like else tuple(_convert(str(v), like[0], f"{name}[{i}]") for i, v in enumerate(got))
    items = [s.strip() for s in value.replace(";", ",").split(",")]
    if items == [""]:
        return ()
    if not like:
        return tuple(_literal_or_str(item) for item in items)
    return tuple(_convert(item, like[0], f"{name}[{i}]") for i, item in enumerate(items))


def _literal_or_str(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _convert(value: str, like: Any, name: str) -> Any:
    if isinstance(like, bool):
        return parse_bool(value, name=name)
    if isinstance(like, tuple):
        return parse_tuple(value, like, name=name)
    if isinstance(like, str):
        return value
    if like is None:
        raise ValueError(f"config {name} has no declared type (its default is None); set it in the config file")
    try:
        return type(like)(value)
    except (TypeError, ValueError):
        raise ValueError(f"config {name}={value!r} is not a {type(like).__name__} (the default is {like!r})") from None


def set_dotted(c: ml_collections.ConfigDict, dotted: str, value: str) -> None:
    """Set ``c[dotted]`` from a string (the ``:k=v`` part of a variant argument),
    converted to the type of the declared default: booleans strictly (true/false,
    1/0, yes/no, any case), tuples from ';'-separated items (``checkpoint_steps=0;500``),
    numbers by their type. Errors are one line: an undeclared key is a
    ``ConfigKeyError`` (a KeyError) with the closest key as a suggestion; a value
    that does not convert is a ValueError naming the key and the type."""
    if not has_key(c, dotted):
        raise ConfigKeyError(unknown_key_message(c, dotted))
    *path, last = dotted.split(".")
    node = c
    for p in path:
        node = node[p]
    node[last] = _convert(value, node[last], dotted)


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


COMPUTE_DTYPES = ("", "float32", "bfloat16")


def compute_dtype(name: str):
    """model.compute_dtype: '' or 'float32' -> None (float32 throughout), 'bfloat16' ->
    jnp.bfloat16 (matmuls and gates in bfloat16; parameters, optimizer state, carries and
    the loss stay float32)."""
    import jax.numpy as jnp

    if name not in COMPUTE_DTYPES:
        raise ValueError(f"model.compute_dtype={name!r}: expected one of {COMPUTE_DTYPES} "
                         "('' = float32 compute)")
    return jnp.bfloat16 if name == "bfloat16" else None
