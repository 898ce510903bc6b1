"""The C allocator's policy for processes that train on the CPU.

XLA:CPU allocates every step's temporaries and outputs afresh: the logits of the
word LM alone are 700 x 33,278 floats (93 MB) per step. glibc's malloc serves a block
that large with mmap and gives it back with munmap, so the next step takes a page
fault for every 4 KB again and the kernel zeroes each page. ``configure`` asks glibc
to keep freed memory for reuse instead:

  M_ARENA_MAX=1      one heap for all threads, so a block freed by one XLA thread serves the
                     next step's allocation on another (a thread's own arena, 64 MB at most,
                     would take blocks larger than that from mmap whatever M_MMAP_MAX says)
  M_MMAP_MAX=0       blocks of any size from the heap, not mmap
  M_TRIM_THRESHOLD   the heap's free top is not handed back to the kernel

The process's resident memory then stays at its peak (which the next step needs again
anyway). ``rnnlab.main`` and the benchmarks call it before JAX starts its threads; a
library user can call it at the top of a script. ``RNNLAB_MALLOC=default`` keeps glibc's
defaults; elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # glibc's <malloc.h>
_done: list[bool] = []


def configure() -> bool:
    """Apply the policy once per process; True when glibc took it."""
    if _done:
        return _done[0]
    ok = False
    if os.environ.get("RNNLAB_MALLOC", "reuse").strip().lower() != "default":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
            mallopt = None
        if mallopt is not None:
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            ok = all(mallopt(k, v) == 1 for k, v in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0),
                                                        (M_TRIM_THRESHOLD, 2**31 - 1)))
    _done.append(ok)
    return ok
