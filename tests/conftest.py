"""float64 is on for the whole suite so parity tests can check 1e-10; every
float32 test passes float32 arrays explicitly, and test_contract checks that
float32 in gives float32 out (so no code silently upcasts).

One JAX persistent compilation cache serves the whole session: the xdist workers
and every command-line run a test starts (they inherit JAX_COMPILATION_CACHE_DIR),
so a program compiled once (the speech step, the LM smoke step) is read back, not
recompiled, by the next process. An executable read back is the one XLA wrote:
results are the same to the bit. The cache lives in a fresh temporary folder,
removed at the end; set JAX_COMPILATION_CACHE_DIR yourself to keep one.

The suite's programs are compiled at XLA's backend optimisation level 0
(``--xla_backend_optimization_level=0``) and with XLA:CPU's older loop fusion
emitters (``--xla_cpu_use_fusion_emitters=false``; the MLIR emitters, the
default, compile slower), both added to XLA_FLAGS here, so the workers and every
process a test starts inherit them. Compiling is most of the suite's time and its
programs are tiny, so LLVM's optimisation costs more than it saves (the
before/after timings are in issue 34's notes). The HLO is the same; the machine code may round differently in the
last bits, and no test depends on that: tests compare with references computed
in the same run (parity, bitwise resume) or within tolerances, and the suite
passes either way. Set a flag yourself in XLA_FLAGS to choose otherwise."""

import os
import shutil
import tempfile

for _flag in ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"):
    if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):  # before any backend starts
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

_OWN_CACHE = "RNNLAB_TEST_OWNS_JAX_CACHE"


def pytest_configure(config):
    if not hasattr(config, "workerinput") and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="rnnlab-tests-jax-cache-")
        os.environ[_OWN_CACHE] = "1"  # set before xdist starts its workers: they inherit both
    # a size bound turns on JAX's file lock: a process never reads an entry another is half-way writing
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))
    # the command-line runs tests start keep every program (each restart compiles the same ones again);
    # in this process only the costly ones: writing each small test's programs costs more than it saves
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_compilation_cache_max_size", int(os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"]))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput") and os.environ.pop(_OWN_CACHE, None):
        shutil.rmtree(os.environ.pop("JAX_COMPILATION_CACHE_DIR"), ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """The slow tier first (a stable sort, the same on every xdist worker): with --dist=worksteal
    the long tests start at once and the short ones fill in around them, instead of a long test
    starting near the end and holding the run while the other worker idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
