"""The cell registry: every module in this package (not starting with ``_``) is a
cell, found by name. Adding a gating idea is adding one file here.

The contract is written as typed protocols in ``_common`` (with the shape legend)::

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

and a cell with a fused layer (``rnnlab.fused``) provides ``RECURRENT_PARAMS``,
``fused_forward``, ``fused_backward``, ``fused_param_grads`` (and optionally
``fused_available``).

A module is checked against the protocols once, when it is first loaded
(``get``): a missing required function, a misspelt one (``stepp``,
``linear_coeficients``), half a fused layer, a wrong arity or a keyword option
without a default is a ``CellContractError`` naming the file and the function.
What was found is kept in a ``CellSpec``; the rest of rnnlab reads that record,
never the module.

Options are keyword-only arguments of ``init``, ``initial_carry``, ``step`` (or
the linear and fused hooks); ``get`` checks each against the cell's options and
the type of its default, and sends it to the functions that declare it.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import inspect
import pkgutil
from collections.abc import Callable
from types import ModuleType
from typing import Any

from rnnlab.cells import _common

__all__ = ["Cell", "CellContractError", "CellSpec", "FusedSpec", "LinearSpec", "available", "get", "spec"]


class CellContractError(ValueError):
    """A cell file that does not follow the contract of ``rnnlab/cells/_common.py``."""


def available() -> list[str]:
    """Names of every registered cell: the modules of this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


# ----------------------------------------------------------------------------- the record


@dataclasses.dataclass(frozen=True, eq=False)
class LinearSpec:
    """The parallel path of a linear-recurrence cell (``_common.LinearRecurrence``)."""

    coefficients: Callable
    log_space: bool = False
    to_state: Callable | None = None
    from_state: Callable | None = None
    readout: Callable | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class FusedSpec:
    """The fused layer of a cell (``_common.FusedCell``)."""

    recurrent_params: tuple[str, ...]
    forward: Callable
    backward: Callable
    param_grads: Callable
    available: Callable | None = None  # (**options) -> bool; None: always


@dataclasses.dataclass(frozen=True, eq=False)
class CellSpec:
    """What a cell file provides, checked against the contract when it was loaded."""

    name: str
    file: str
    init: Callable
    initial_carry: Callable
    step: Callable
    precompute: Callable | None = None
    linear: LinearSpec | None = None
    fused: FusedSpec | None = None
    chunkwise: Callable | None = None  # the chunkwise-parallel form of a matrix-state cell (_common.Chunkwise)
    n_gates: int = 1
    option_choices: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    carry_names: tuple[str, ...] | None = None
    output_of_carry: Callable | None = None
    gates: Callable | None = None  # (params, carry, xp_BxG) -> ({name: (kind, values)}, memory gate): the probes
    recurrent_dropout: bool = False  # step takes h_mask_BxH
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # every option with its default
    takes: dict[Callable, frozenset[str]] = dataclasses.field(default_factory=dict)  # fn -> its option names


_REQUIRED = (_common.PlainCell,)
_OPTIONAL = (_common.Precompute, _common.LinearRecurrence, _common.LinearExtras, _common.Chunkwise, _common.FusedCell,
             _common.FusedExtras, _common.CellExtras)


def _members(protocol: type) -> dict[str, Callable | None]:
    """A protocol's names: its methods (the function) and its attributes (None)."""
    out: dict[str, Callable | None] = {n: None for n in getattr(protocol, "__annotations__", {})}
    out.update({n: v for n, v in vars(protocol).items() if inspect.isfunction(v) and not n.startswith("_")})
    return out


CONTRACT = {n: (p, f) for p in (*_REQUIRED, *_OPTIONAL) for n, f in _members(p).items()}


def _check_signature(file: str, name: str, fn: Any, proto_fn: Callable) -> None:
    """``fn`` takes the protocol's positional arguments; its options are keyword-only with defaults."""
    if not callable(fn):
        raise CellContractError(f"cell file {file}: `{name}` must be a function, got {type(fn).__name__}")
    want = [p.name for p in inspect.signature(proto_fn).parameters.values()
            if p.kind is inspect.Parameter.POSITIONAL_ONLY and p.name != "self"]
    params = list(inspect.signature(fn).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    var = any(p.kind is p.VAR_POSITIONAL for p in params)
    if len(required) > len(want) or (len(positional) < len(want) and not var):
        raise CellContractError(
            f"cell file {file}: `{name}` must take {len(want)} positional arguments ({', '.join(want)}) "
            f"and keyword-only options with defaults; it takes ({', '.join(p.name for p in positional)})")
    for p in params:
        if p.kind is p.KEYWORD_ONLY and p.default is p.empty:
            raise CellContractError(
                f"cell file {file}: option `{p.name}` of `{name}` has no default; give every option one "
                f"(e.g. `*, {p.name}: float = 1.0`) so that get() can fill it in")


def _misspelt(file: str, module: ModuleType) -> None:
    """A public name of the module that is close to a contract name it lacks: a typo."""
    lower = {n.lower(): n for n in CONTRACT}
    for name, value in vars(module).items():
        if name.startswith("_") or name in CONTRACT or inspect.ismodule(value) or inspect.isclass(value):
            continue
        own = inspect.isfunction(value) and value.__module__ == module.__name__
        if not (own or name.isupper()):
            continue  # imported helpers (dense_precompute, ...) are not the cell's own names
        for close in difflib.get_close_matches(name.lower(), lower, n=1, cutoff=0.8):
            meant = lower[close]
            if not hasattr(module, meant):
                raise CellContractError(
                    f"cell file {file}: `{name}` is not part of the cell contract; did you mean `{meant}`? "
                    f"(see the protocols in rnnlab/cells/_common.py; helpers start with `_`)")


def _missing(file: str, module: ModuleType, name: str, why: str) -> CellContractError:
    public = [n for n in vars(module) if not n.startswith("_")]
    close = difflib.get_close_matches(name, public, n=1, cutoff=0.6)
    hint = f"; did you mean to name `{close[0]}` `{name}`?" if close else ""
    return CellContractError(f"cell file {file}: no function `{name}` ({why}){hint}")


def _keyword_options(fn: Callable) -> dict[str, Any]:
    return {n: p.default for n, p in inspect.signature(fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def check(module: ModuleType, name: str | None = None) -> CellSpec:
    """``module`` checked against the cell contract, as a ``CellSpec``; a
    ``CellContractError`` naming the file and the function otherwise."""
    name = name or module.__name__.rsplit(".", 1)[-1]
    file = getattr(module, "__file__", None) or module.__name__
    has = lambda n: n in vars(module)  # noqa: E731
    get_ = lambda n: vars(module)[n]  # noqa: E731
    for n, (proto, _) in CONTRACT.items():
        if proto is _common.PlainCell and not has(n):
            raise _missing(file, module, n, "every cell needs init, initial_carry and step; see PlainCell in "
                                            "rnnlab/cells/_common.py")
    _misspelt(file, module)
    for n, (_, proto_fn) in CONTRACT.items():
        if has(n) and proto_fn is not None:
            _check_signature(file, n, get_(n), proto_fn)
    linear_names = [*_members(_common.LinearExtras)]
    if not has("linear_coefficients") and any(has(n) for n in linear_names):
        extras = [n for n in linear_names if has(n)]
        raise _missing(file, module, "linear_coefficients", f"{', '.join(extras)} only make sense beside it")
    fused_names = [*_members(_common.FusedCell)]
    if any(has(n) for n in [*fused_names, "fused_available"]) and not all(has(n) for n in fused_names):
        lacking = next(n for n in fused_names if not has(n))
        raise _missing(file, module, lacking, f"a fused layer is all of {', '.join(fused_names)} or none")
    for attr, kind in (("LOG_SPACE", bool), ("N_GATES", int), ("RECURRENT_PARAMS", tuple),
                       ("CARRY_NAMES", tuple), ("OPTION_CHOICES", dict)):
        if has(attr) and not isinstance(get_(attr), kind):
            raise CellContractError(f"cell file {file}: `{attr}` must be a {kind.__name__}, got {get_(attr)!r}")

    opt = lambda n: get_(n) if has(n) else None  # noqa: E731
    linear = None
    if has("linear_coefficients"):
        linear = LinearSpec(get_("linear_coefficients"), bool(opt("LOG_SPACE")), opt("to_state"),
                            opt("from_state"), opt("readout"))
    fused = None
    if has("fused_forward"):
        fused = FusedSpec(tuple(get_("RECURRENT_PARAMS")), get_("fused_forward"), get_("fused_backward"),
                          get_("fused_param_grads"), opt("fused_available"))
    fns = [get_(n) for n in ("init", "step", "initial_carry", "linear_coefficients", "readout", "chunkwise",
                             "gates", "fused_available",
                             "fused_forward", "fused_backward", "fused_param_grads") if has(n)]
    takes = {fn: frozenset(_keyword_options(fn)) - {"dtype"} for fn in fns}
    options: dict[str, Any] = {}
    for fn in fns[::-1]:  # the first function to declare an option gives its default
        options.update({k: v for k, v in _keyword_options(fn).items() if k != "dtype"})
    choices = dict(opt("OPTION_CHOICES") or {})
    for k in set(choices) - set(options):
        raise CellContractError(f"cell file {file}: OPTION_CHOICES names `{k}`, which is no option of the cell "
                                f"(its options: {sorted(options)})")
    return CellSpec(
        name=name, file=file, init=get_("init"), initial_carry=get_("initial_carry"), step=get_("step"),
        precompute=opt("precompute"), linear=linear, fused=fused, chunkwise=opt("chunkwise"),
        n_gates=opt("N_GATES") or 1,
        option_choices=choices, carry_names=opt("CARRY_NAMES"), output_of_carry=opt("output_of_carry"), gates=opt("gates"),
        recurrent_dropout="h_mask_BxH" in inspect.signature(get_("step")).parameters,
        options=options, takes=takes)


@functools.cache
def spec(name: str) -> CellSpec:
    """The checked record of cell ``name`` (its module loaded and checked once)."""
    if name not in available():
        close = difflib.get_close_matches(name, available(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown cell {name!r}; available cells: {', '.join(available())}{hint}")
    return check(importlib.import_module(f"{__name__}.{name}"), name)


# ----------------------------------------------------------------------------- a cell with options


@dataclasses.dataclass(frozen=True)
class Cell:
    """A cell with its options bound. Hashable, so it can be a static argument of
    ``jax.jit``; two Cells with the same name and options are equal."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def spec(self) -> CellSpec:
        return spec(self.name)

    def bind(self, fn: Callable) -> Callable:
        """``fn`` (a function of this cell's spec) with the options it declares bound."""
        takes = self.spec.takes.get(fn, frozenset())
        kw = {k: v for k, v in self.options if k in takes}
        return functools.partial(fn, **kw) if kw else fn

    def init(self, key, d_in: int, d_h: int, dtype=None):
        kw = {} if dtype is None else {"dtype": dtype}
        return self.bind(self.spec.init)(key, d_in, d_h, **kw)

    def initial_carry(self, batch: int, d_h: int):
        return self.bind(self.spec.initial_carry)(batch, d_h)

    def precompute(self, params, x_TxBxD):
        fn = self.spec.precompute
        return x_TxBxD if fn is None else fn(params, x_TxBxD)

    def step(self, params, carry, xp_BxG, h_mask_BxH=None):
        step = self.bind(self.spec.step)
        if h_mask_BxH is None:
            return step(params, carry, xp_BxG)
        return step(params, carry, xp_BxG, h_mask_BxH)

    @property
    def supports_recurrent_dropout(self) -> bool:
        return self.spec.recurrent_dropout

    @property
    def has_parallel(self) -> bool:
        """Whether scan.run has a parallel path for the cell: one associative scan (a
        recurrence linear in the state) or the chunkwise form (a matrix state)."""
        return self.spec.linear is not None or self.spec.chunkwise is not None

    @property
    def has_linear(self) -> bool:
        """Whether the recurrence is linear in the state (``linear_coefficients``)."""
        return self.spec.linear is not None

    def chunkwise(self, params, carry0, xp_TxBxG, reset_TxB, valid_TxB):
        return self.bind(self.spec.chunkwise)(params, carry0, xp_TxBxG, reset_TxB, valid_TxB)

    @property
    def has_fused(self) -> bool:
        """Whether the cell has a fused layer (``rnnlab.fused``) for these options."""
        fused = self.spec.fused
        return fused is not None and (fused.available is None or bool(self.bind(fused.available)()))

    @property
    def log_space(self) -> bool:
        return self.spec.linear is not None and self.spec.linear.log_space

    def linear_coefficients(self, params, xp_TxBxG):
        return self.bind(self.spec.linear.coefficients)(params, xp_TxBxG)

    def to_state(self, carry):
        fn = self.spec.linear.to_state
        return carry if fn is None else fn(carry)

    def from_state(self, h_BxN):
        fn = self.spec.linear.from_state
        return h_BxN if fn is None else fn(h_BxN)

    def readout(self, params, h_TxBxN, xp_TxBxG):
        fn = self.spec.linear.readout
        return h_TxBxN if fn is None else self.bind(fn)(params, h_TxBxN, xp_TxBxG)

    @property
    def has_gates(self) -> bool:
        return self.spec.gates is not None

    def gates(self, params, carry, xp_BxG):
        return self.bind(self.spec.gates)(params, carry, xp_BxG)

    @property
    def n_gates(self) -> int:
        return self.spec.n_gates


def _type_name(t: type) -> str:
    return {float: "a float", int: "an int", bool: "a bool (True/False)", str: "a string"}.get(t, t.__name__)


def _check_option(cell: CellSpec, key: str, value: Any) -> None:
    """``value`` has the type of the option's default (an int is a float; a bool only a bool),
    and is one of the declared choices of a str option."""
    default = cell.options[key]
    if default is None or not isinstance(default, (bool, int, float, str)):
        return
    kind = type(default)
    ok = (isinstance(value, bool) if kind is bool
          else isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float
          else isinstance(value, int) and not isinstance(value, bool) if kind is int
          else isinstance(value, str))
    choices = cell.option_choices.get(key)
    if ok and (choices is None or value in choices):
        return
    expected = f"one of {list(choices)}" if choices else _type_name(kind)
    raise ValueError(
        f"cell {cell.name!r}: option {key}={value!r} ({type(value).__name__}) must be {expected}, like its "
        f"default {key}={default!r}; e.g. cells.get({cell.name!r}, {key}={default!r}) or "
        f"--config.model.cell_options='{key}={default}'")


def get(name: str | Cell, **options) -> Cell:
    """The cell ``name`` with ``options`` bound, e.g. ``get('lstm', forget_bias=0.0)``,
    ``get('gru', reset_after=False)``, ``get('elman', nonlinearity='relu')``. An unknown
    option, or a value not of its default's type, is a ValueError that says what fits."""
    if isinstance(name, Cell):
        return get(name.name, **{**dict(name.options), **options})
    cell = spec(name)
    for key in sorted(options):
        if key not in cell.options:
            close = difflib.get_close_matches(key, cell.options, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown option {key!r} for cell {name!r}{hint}; it accepts {sorted(cell.options)}")
        _check_option(cell, key, options[key])
    # defaults filled in: equal settings give equal (and equally hashed) Cells
    return Cell(name, tuple(sorted({**cell.options, **options}.items())))
