"""Giving the memory a finished file freed back to the system.

glibc keeps what a thread frees in that thread's arena, for the thread's next allocations. The worker's
pipeline decodes, restores and writes on different threads, so each arena keeps the high-water mark of
its own stage and the process holds their sum: a 60 MP batch peaked a fifth above one file at a time.
``malloc_trim`` hands the free pages of every arena back (measured in docs/benchmarks.md, *The worker's
heap*). Elsewhere than glibc there is nothing to do. ``LOWLUX_HEAP_TRIM=0`` in the environment turns
it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable


def _glibc_malloc_trim() -> Callable[[int], int] | None:
    if os.environ.get("LOWLUX_HEAP_TRIM", "1") == "0":
        return None
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _glibc_malloc_trim()


def release_freed_memory() -> bool:
    """Return the heap's free pages to the system; True where that could be done (glibc)."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
