"""Handing freed heap memory back to the operating system.

Building a serving snapshot of a large catalog allocates and frees gigabytes in blocks small
enough to come from the C heap, and glibc keeps freed heap pages for reuse: without this a
worker holds its peak, not what it uses.

>>> release_free_heap() in (True, False)
True
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache


@cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_free_heap() -> bool:
    """Return the heap's free pages to the operating system (glibc's ``malloc_trim``); False
    where the C library has no such call (musl, macOS), which is harmless."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
