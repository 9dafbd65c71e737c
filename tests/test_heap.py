"""Memory a finished file freed goes back to the system (lowlux.heap)."""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import os
import threading

import pytest

from lowlux import heap

BLOCK = 64 * 1024  # below glibc's mmap threshold: served from the thread's arena, kept there when freed
BLOCKS = 3200  # 200 MiB


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def freed_in_a_thread() -> list:
    """200 MiB allocated, touched and freed in a thread of its own (its own arena), all but the last block,
    which pins the arena so glibc cannot give the rest back by itself."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    kept = []

    def work() -> None:
        blocks = [libc.malloc(BLOCK) for _ in range(BLOCKS)]
        for b in blocks:
            ctypes.memset(b, 1, BLOCK)
        for b in blocks[:-1]:
            libc.free(b)
        kept.append((libc, blocks[-1]))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    return kept


@pytest.mark.skipif(not heap.release_freed_memory(), reason="not glibc: nothing to hand back")
def test_what_a_thread_freed_goes_back_to_the_system():
    kept = freed_in_a_thread()
    before = rss_mib()
    assert heap.release_freed_memory()
    after = rss_mib()
    libc, block = kept[0]
    libc.free(block)
    assert before - after > 100, (before, after)  # of the 200 MiB freed


def test_it_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("LOWLUX_HEAP_TRIM", "0")
    try:
        assert importlib.reload(heap).release_freed_memory() is False
    finally:
        monkeypatch.delenv("LOWLUX_HEAP_TRIM")
        importlib.reload(heap)
