"""rnnlab.allocator: with the policy a freed 64 MB block is reused without new page faults;
with RNNLAB_MALLOC=default (glibc's defaults, mmap for big blocks) every reuse faults again."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux", reason="glibc's mallopt")

CODE = textwrap.dedent("""
    import ctypes, resource, threading
    from rnnlab import allocator
    ok = allocator.configure()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    n = 64 << 20
    faults = []

    def cycle():  # what an XLA thread does every step: a big block, written, freed
        for _ in range(4):
            p = libc.malloc(n)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            ctypes.memset(p, 1, n)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
            libc.free(p)

    t = threading.Thread(target=cycle)  # not the main thread: its own arena without the policy
    t.start(); t.join()
    print(ok, max(faults[1:]))
""")


def _run(env_extra):
    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ok, faults = out.stdout.split()
    return ok == "True", int(faults)


def test_freed_memory_is_reused_without_page_faults():
    ok, faults = _run({"RNNLAB_MALLOC": "reuse"})
    assert ok
    assert faults < 100, f"{faults} page faults writing a re-allocated 64 MB block"


def test_default_keeps_glibc_behaviour():
    ok, faults = _run({"RNNLAB_MALLOC": "default"})
    assert not ok
    assert faults > 10_000  # 64 MB / 4 KB pages, every time
