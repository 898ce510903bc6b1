"""The cell registry: every module in this package (not starting with ``_``) is a
cell, found by name. Adding a gating idea is adding one file here.

A cell module provides (see ``_common`` for the shape legend)::

    init(key, d_in, d_h, **init_options) -> Params
    initial_carry(batch, d_h) -> Carry                 # float32
    precompute(params, x_TxBxD) -> xp_TxBxG            # optional; default: identity
    step(params, carry, xp_BxG[, h_mask_BxH], **step_options) -> (carry, h_BxH)
    parallel(params, xp_TxBxG, carry0, **step_options) -> (carry_T, hs_TxBxH)  # optional

Options are keyword-only arguments of ``init`` or ``step``; ``get`` sends each to
the function that declares it and rejects the rest.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import pkgutil
from types import ModuleType
from typing import Any

__all__ = ["Cell", "available", "get"]


def available() -> list[str]:
    """Names of every registered cell: the modules of this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


@functools.cache
def _module(name: str) -> ModuleType:
    if name not in available():
        raise ValueError(f"unknown cell {name!r}; available cells: {', '.join(available())}")
    return importlib.import_module(f"{__name__}.{name}")


def _keyword_options(fn) -> dict[str, Any]:
    sig = inspect.signature(fn)
    return {
        n: p.default for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


@dataclasses.dataclass(frozen=True)
class Cell:
    """A cell module with its options bound. Hashable, so it can be a static
    argument of ``jax.jit``; two Cells with the same name and options are equal."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def module(self) -> ModuleType:
        return _module(self.name)

    def _opts(self, fn) -> dict[str, Any]:
        accepted = _keyword_options(fn)
        return {k: v for k, v in self.options if k in accepted and k != "dtype"}

    def init(self, key, d_in: int, d_h: int, dtype=None):
        kw = self._opts(self.module.init)
        if dtype is not None:
            kw["dtype"] = dtype
        return self.module.init(key, d_in, d_h, **kw)

    def initial_carry(self, batch: int, d_h: int):
        return self.module.initial_carry(batch, d_h)

    def precompute(self, params, x_TxBxD):
        fn = getattr(self.module, "precompute", None)
        return x_TxBxD if fn is None else fn(params, x_TxBxD)

    def step(self, params, carry, xp_BxG, h_mask_BxH=None):
        kw = self._opts(self.module.step)
        if h_mask_BxH is None:
            return self.module.step(params, carry, xp_BxG, **kw)
        return self.module.step(params, carry, xp_BxG, h_mask_BxH, **kw)

    @property
    def supports_recurrent_dropout(self) -> bool:
        return "h_mask_BxH" in inspect.signature(self.module.step).parameters

    @property
    def has_parallel(self) -> bool:
        return hasattr(self.module, "parallel")

    def parallel(self, params, xp_TxBxG, carry0):
        return self.module.parallel(params, xp_TxBxG, carry0, **self._opts(self.module.parallel))

    @property
    def n_gates(self) -> int:
        return getattr(self.module, "N_GATES", 1)


def get(name: str | Cell, **options) -> Cell:
    """The cell ``name`` with ``options`` bound, e.g. ``get('lstm', forget_bias=0.0)``,
    ``get('gru', reset_after=False)``, ``get('elman', nonlinearity='relu')``."""
    if isinstance(name, Cell):
        return get(name.name, **{**dict(name.options), **options})
    module = _module(name)
    known = {**_keyword_options(module.init), **_keyword_options(module.step)}
    if hasattr(module, "parallel"):
        known.update(_keyword_options(module.parallel))
    known.pop("dtype", None)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for cell {name!r}; it accepts {sorted(known)}"
        )
    # defaults filled in: equal settings give equal (and equally hashed) Cells
    return Cell(name, tuple(sorted({**known, **options}.items())))
