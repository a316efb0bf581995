"""Freed heap memory goes back to the OS when the trainer asks (glibc)."""

from __future__ import annotations

import ctypes
import sys

import pytest

from stocklab.allocator import release_free_memory


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim is Linux-only")
def test_release_returns_freed_heap_pages_to_the_os():
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    # 200 MB in 64 KB blocks (below the mmap threshold: heap memory), touched so it is resident
    blocks = [libc.malloc(64 * 1024) for _ in range(3200)]
    for b in blocks:
        ctypes.memset(b, 1, 64 * 1024)
    for b in blocks[:-1]:  # the last block pins the top of the heap, so glibc cannot trim by itself
        libc.free(b)
    before = _rss_mb()
    assert release_free_memory()
    after = _rss_mb()
    libc.free(blocks[-1])
    assert before - after > 100, f"RSS {before:.0f} MB -> {after:.0f} MB"
