"""The cell registry: every module in this package (not starting with ``_``) is a
cell, found by name. Adding a gating idea is adding one file here.

A cell module provides (see ``_common`` for the shape legend)::

    init(key, d_in, d_h, **init_options) -> Params
    initial_carry(batch, d_h[, **carry_options]) -> Carry   # float32 leaves, each B x (something)
    precompute(params, x_TxBxD) -> xp_TxBxG            # optional; default: identity
    step(params, carry, xp_BxG[, h_mask_BxH], **step_options) -> (carry, h_BxH)

A cell whose recurrence is linear in its state, h_t = a_t * h_{t-1} + b_t
(elementwise; minGRU, minLSTM, LRU, RG-LRU), also provides the parallel path,
which ``scan.run`` composes with resets, lengths and reverse in ONE
``jax.lax.associative_scan``::

    linear_coefficients(params, xp_TxBxG) -> (a_TxBxN, b_TxBxN)  # may be complex
    LOG_SPACE = True          # optional: the pair is (log a, log b), b > 0 (Feng et al. 2024)
    to_state(carry) -> h_BxN                           # optional; default: identity
    from_state(h_BxN) -> carry                         # optional; default: identity
    readout(params, h_TxBxN, xp_TxBxG) -> hs_TxBxH     # optional; default: identity

Options are keyword-only arguments of ``init``, ``initial_carry`` or ``step``;
``get`` sends each to the function that declares it and rejects the rest.
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
        return self.module.initial_carry(batch, d_h, **self._opts(self.module.initial_carry))

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
        """Whether the recurrence is linear in the state: scan.run's parallel path."""
        return hasattr(self.module, "linear_coefficients")

    @property
    def log_space(self) -> bool:
        return getattr(self.module, "LOG_SPACE", False)

    def linear_coefficients(self, params, xp_TxBxG):
        fn = self.module.linear_coefficients
        return fn(params, xp_TxBxG, **self._opts(fn))

    def to_state(self, carry):
        fn = getattr(self.module, "to_state", None)
        return carry if fn is None else fn(carry)

    def from_state(self, h_BxN):
        fn = getattr(self.module, "from_state", None)
        return h_BxN if fn is None else fn(h_BxN)

    def readout(self, params, h_TxBxN, xp_TxBxG):
        fn = getattr(self.module, "readout", None)
        return h_TxBxN if fn is None else fn(params, h_TxBxN, xp_TxBxG, **self._opts(fn))

    @property
    def n_gates(self) -> int:
        return getattr(self.module, "N_GATES", 1)


def get(name: str | Cell, **options) -> Cell:
    """The cell ``name`` with ``options`` bound, e.g. ``get('lstm', forget_bias=0.0)``,
    ``get('gru', reset_after=False)``, ``get('elman', nonlinearity='relu')``."""
    if isinstance(name, Cell):
        return get(name.name, **{**dict(name.options), **options})
    module = _module(name)
    known = {**_keyword_options(module.init), **_keyword_options(module.step),
             **_keyword_options(module.initial_carry)}
    for hook in ("linear_coefficients", "readout"):
        if hasattr(module, hook):
            known.update(_keyword_options(getattr(module, hook)))
    known.pop("dtype", None)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for cell {name!r}; it accepts {sorted(known)}"
        )
    # defaults filled in: equal settings give equal (and equally hashed) Cells
    return Cell(name, tuple(sorted({**known, **options}.items())))
