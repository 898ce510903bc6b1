"""The native CPU time loop of the fused LSTM and GRU layers (``rnn_cpu.cc``).

XLA:CPU runs a scanned recurrence as one small GEMM and a few elementwise kernels per
step, each dispatched to its thread pool: at (B, H) = (32, 256) a step's
``(32x256) @ (256x1024)`` takes about 140 us, 60 % of the two cores' peak. ``rnn_cpu.cc``
runs the whole loop in one XLA FFI custom call: W_h packed once per call, a
register-blocked GEMM kernel, the gate nonlinearities on the step's tile while it is in
cache, and a persistent team of threads (batch rows split with no synchronisation, units
split with one barrier per step). The products that are parallel in time are in the same
call, as ONE GEMM each over the live (t, b) rows: the input projection before the loop (or
inside each step's GEMM while the packed weights fit in cache), d x and the weight
gradients after it; see ``rnnlab.fused``.

Padding. A batch of sequences of mixed lengths is padded to the longest; past a
sequence's end its steps are dead (carry frozen, output 0, no gradient into the gates).
Dead rows take no part in any GEMM of the call: each step's GEMM runs on the rows still
live at that step (gathered when some are dead), and the products over all steps (input
projection, d x, weight gradients) run on the live (t, b) rows. The results are bitwise
those of computing the dead rows and dropping them (``options(skip_padding=False)``;
tests/test_native.py). The speech recipe's
batches are about half padding.

Ensembles. Under ``jax.vmap`` (the speech model's members) each member's layer is its
own call in the program (``options(vmap_method=...)``); a loop of calls, what "sequential" makes,
copies every input and output in and out. With both, the speech recipe's training step
runs 1.4x faster than before, bitwise the same (``benchmarks/speech_step.py
--implementations before,padding,now``).

The library is compiled on first use with the system C++ compiler (``-O3
-march=native``, about 6 s) into ``$RNNLAB_CACHE_DIR`` (default ``~/.cache/rnnlab``),
keyed by the source, the compiler, the jaxlib FFI headers and this machine's CPU, and
then reused by every process. Where it cannot be built (no compiler, another OS) rnnlab
warns once and uses the XLA fused layers, which compute the same function.

Settings are read when a layer is traced, from ``options`` (a context manager, local to
the thread and context that traces: ``contextvars``), never from module globals::

    with native.options(thread_share=2):   # two programs call the native loop at once
        step(...)                          # traced here: each gets half the CPUs' threads

Environment:
  RNNLAB_NATIVE=0          use the XLA fused layers everywhere (the native loop is off)
  RNNLAB_NATIVE_THREADS=N  threads of the native loop (default: the CPUs this process may use, divided
                           among ``options().thread_share`` programs running at once)
  RNNLAB_CACHE_DIR=DIR     where the compiled library is kept
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import dataclasses
import fcntl
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rnnlab.cache import cache_dir

SOURCE = Path(__file__).with_name("rnn_cpu.cc")
CXX_FLAGS = ("-O3", "-march=native", "-std=c++17", "-pthread", "-shared", "-fPIC")
VMAP_METHOD_DEFAULT = "sequential_unrolled"
CELLS = ("lstm", "gru")  # the cells with a native loop (GRU: reset-after only, as its fused layer)
TARGETS = tuple(f"rnnlab_{cell}_{kind}" for cell in CELLS for kind in ("forward", "infer", "backward"))


class BuildError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class Options:
    """How a native call is made, read when a layer is traced (``settings``; results are
    bitwise the same for every value, tests/test_native.py).

    thread_share: programs that call the native loop at once (the speech recipe's
      train.member_threads): the default thread count is the CPUs divided among them.
    skip_padding: steps past a sequence's end take no part in any GEMM; False: they are
      computed and dropped (benchmarks/speech_step.py --implementations measures both).
    vmap_method: the layer under ``jax.vmap`` (ensemble members): "sequential_unrolled",
      one call per member in the program; "sequential" (a loop of its own, with copies in
      and out) cost the speech recipe's three-member bidirectional GRU stack 1.2-1.4x.
    """

    thread_share: int = 1
    skip_padding: bool = True
    vmap_method: str = VMAP_METHOD_DEFAULT


_OPTIONS: contextvars.ContextVar[Options] = contextvars.ContextVar(
    "rnnlab_native_options", default=Options())  # noqa: B039 (Options is frozen)


def current() -> Options:
    """The options in force here (this thread's context)."""
    return _OPTIONS.get()


@contextlib.contextmanager
def options(**changes) -> Iterator[Options]:
    """Native calls traced inside the block use these options, e.g.
    ``with native.options(thread_share=2):``. Local to the current context: a thread
    started inside sees them only when run in a copy of it (``contextvars.copy_context``)."""
    for k, v in changes.items():
        default = getattr(Options(), k, None)
        if default is None:
            raise TypeError(f"native.options: no option {k!r}; options: {[f.name for f in dataclasses.fields(Options)]}")
        if type(v) is not type(default) or (k == "thread_share" and v < 1):
            raise ValueError(f"native.options: {k}={v!r} must be a {type(default).__name__} like {default!r}"
                             + (" and >= 1" if k == "thread_share" else ""))
    token = _OPTIONS.set(dataclasses.replace(_OPTIONS.get(), **changes))
    try:
        yield _OPTIONS.get()
    finally:
        _OPTIONS.reset(token)


def switched_off() -> bool:
    return os.environ.get("RNNLAB_NATIVE", "1").strip().lower() in ("0", "false", "off", "no")


def threads() -> int:
    value = os.environ.get("RNNLAB_NATIVE_THREADS")
    if value:
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"RNNLAB_NATIVE_THREADS must be a positive integer, got {value!r}") from None
        if n < 1:
            raise ValueError(f"RNNLAB_NATIVE_THREADS must be a positive integer, got {value!r}")
        return n
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // current().thread_share)


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not cxx:
        raise BuildError("no C++ compiler found (set CXX, or install g++)")
    return cxx


def _cpu_signature() -> str:
    """-march=native code runs only on CPUs with the same features: key the cache by them."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("flags", "model name", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def library_path() -> Path:
    cxx = _compiler()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout
    ffi_header = Path(jax.ffi.include_dir()) / "xla" / "ffi" / "api" / "ffi.h"
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(CXX_FLAGS).encode(), cxx.encode(), version.encode(),
                 ffi_header.read_bytes() if ffi_header.exists() else b"", _cpu_signature().encode()):
        key.update(part)
        key.update(b"\0")
    return cache_dir() / "native" / key.hexdigest()[:20] / "rnn_cpu.so"


def build() -> Path:
    """The compiled library, built if this source/compiler/CPU has none in the cache yet.
    Concurrent processes (pytest -n, several trials) take turns on a lock; the library
    appears by an atomic rename, so nobody loads a half-written file."""
    path = library_path()
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return path
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".so.tmp")
        os.close(fd)
        cmd = [_compiler(), *CXX_FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            os.unlink(tmp)
            raise BuildError(f"compiling {SOURCE.name} failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
        os.replace(tmp, path)
    return path


@functools.cache
def _load() -> ctypes.CDLL | None:
    try:
        if platform.system() != "Linux":
            raise BuildError(f"the native loop is built for Linux only, this is {platform.system()}")
        lib = ctypes.cdll.LoadLibrary(str(build()))
    except (BuildError, OSError) as err:
        warnings.warn(f"rnnlab: the native CPU loop is unavailable, using the XLA fused layers: {err}",
                      RuntimeWarning, stacklevel=3)
        return None
    for name in TARGETS:
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    return lib


def available() -> bool:
    """Whether the native loop is on (``RNNLAB_NATIVE`` is not 0, read at every trace) and
    built and registered."""
    return not switched_off() and _load() is not None


def supports(cell_name: str, arrays) -> bool:
    """Whether ``rnnlab.fused`` can hand this layer to the native code: an LSTM or GRU
    with every array float32 (float64 and bfloat16 stay on the XLA path), in a process
    with one device. With several (data parallel over forced CPU devices, or processes)
    the batch is sharded, and XLA would gather it to run a custom call on every device
    whole; the XLA fused layer is partitioned along the batch instead."""
    return (cell_name in CELLS and all(a.dtype == jnp.float32 for a in jax.tree.leaves(arrays))
            and jax.device_count() == 1 and available())


# ----------------------------------------------------------------------------- the calls
def _flag(mask_TxB):
    return jnp.zeros((0,), jnp.uint8) if mask_TxB is None else mask_TxB.astype(jnp.uint8)


def _h_mask(mask_BxH):
    return jnp.zeros((0,), jnp.float32) if mask_BxH is None else mask_BxH


def settings() -> tuple[int, bool, str]:
    """What a native call is traced with now: (threads, skip_padding, vmap_method), from
    ``options`` and the environment. ``rnnlab.fused`` caches its traced layers under it:
    JAX keeps a custom_vjp function's traced rules, so a setting changed later would
    otherwise not be seen."""
    opts = current()
    return threads(), opts.skip_padding, opts.vmap_method


def _call(target: str, out_shapes, *args, reverse: bool, setting: tuple[int, bool, str] | None):
    if not available():
        raise RuntimeError("rnnlab's native CPU loop is not available (see the warning above, or RNNLAB_NATIVE)")
    n_threads, skip, vmap_method = setting or settings()
    fn = jax.ffi.ffi_call(target, out_shapes, vmap_method=vmap_method)
    return fn(*args, reverse=np.int64(bool(reverse)), threads=np.int64(n_threads), skip_dead=np.int64(skip))


def forward(cell_name: str, params, carry0, carry_reset, xs_TxBxD, reset_TxB, valid_TxB, h_mask_BxH, reverse: bool,
            keep: bool = True, setting: tuple[int, bool, str] | None = None):
    """The layer's forward pass: input projection and loop. -> (carry_T, ys_TxBxH,
    saved_TxBxA), saved laid out as ``fused._pack`` does (per step and row: the carry
    that entered the step, then the gate activations; zeros for the activations of a
    padded step); ``keep=False`` (no backward pass follows): saved is not written and
    None is returned in its place. ``setting``: ``settings()``'s (the default: now)."""
    t, b, _ = xs_TxBxD.shape
    w_h = params["w_h_HxG"]
    h = w_h.shape[0]
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    masks = (_flag(reset_TxB), _flag(valid_TxB), _h_mask(h_mask_BxH))
    dense = (xs_TxBxD, params["w_x_DxG"], params["b_G"], w_h)
    target = f"rnnlab_{cell_name}_{'forward' if keep else 'infer'}"
    if cell_name == "lstm":
        (c0, h0), (cr, hr) = carry0, carry_reset
        outs = (f32(t, b, h), f32(b, h), f32(b, h), *([f32(t, b, 6 * h)] if keep else []))
        ys, c_t, h_t, *saved = _call(target, outs, *dense, c0, h0, cr, hr, *masks, reverse=reverse, setting=setting)
        return (c_t, h_t), ys, saved[0] if keep else None
    outs = (f32(t, b, h), f32(b, h), *([f32(t, b, 5 * h)] if keep else []))
    ys, h_t, *saved = _call(target, outs, *dense, params["b_hn_H"], carry0, carry_reset, *masks, reverse=reverse,
                            setting=setting)
    return h_t, ys, saved[0] if keep else None


def backward(cell_name: str, params, xs_TxBxD, saved_TxBxA, dys_TxBxH, d_carry_T, reset_TxB, valid_TxB,
             h_mask_BxH, reverse: bool, setting: tuple[int, bool, str] | None = None):
    """The layer's backward pass: loop, then d xs and every weight gradient as one GEMM
    each. -> (d_params, d_carry0, d_carry_reset, d_xs)."""
    t, b, d = xs_TxBxD.shape
    w_x, w_h = params["w_x_DxG"], params["w_h_HxG"]
    h, g = w_h.shape
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    masks = (_flag(reset_TxB), _flag(valid_TxB), _h_mask(h_mask_BxH))
    grads = (f32(t, b, d), f32(d, g), f32(g), f32(h, g))
    if cell_name == "lstm":
        dc_t, dh_t = d_carry_T
        dx, dw_x, db, dw_h, dc0, dh0, dcr, dhr = _call(
            "rnnlab_lstm_backward", (*grads, f32(b, h), f32(b, h), f32(b, h), f32(b, h)),
            xs_TxBxD, w_x, w_h, saved_TxBxA, dys_TxBxH, dc_t, dh_t, *masks, reverse=reverse, setting=setting)
        d_params = {"w_x_DxG": dw_x, "b_G": db, "w_h_HxG": dw_h}
        return d_params, (dc0, dh0), (dcr, dhr), dx
    dx, dw_x, db, dw_h, db_hn, dh0, dhr = _call(
        "rnnlab_gru_backward", (*grads, f32(h), f32(b, h), f32(b, h)),
        xs_TxBxD, w_x, w_h, params["b_hn_H"], saved_TxBxA, dys_TxBxH, d_carry_T, *masks, reverse=reverse,
        setting=setting)
    d_params = {"w_x_DxG": dw_x, "b_G": db, "w_h_HxG": dw_h, "b_hn_H": db_hn}
    return d_params, dh0, dhr, dx
