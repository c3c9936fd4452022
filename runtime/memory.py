"""Memory of a long-running worker: freed heap handed back, long-lived objects out of the collector's way.

Building a serving snapshot of a large catalog allocates and frees gigabytes in blocks small
enough to come from the C heap, and glibc keeps freed heap pages for reuse: without
:func:`release_free_heap` a worker holds its peak, not what it uses.

Python's cyclic garbage collector now and then walks every object it tracks, holding the GIL,
so no request moves meanwhile. A worker's torch, transformers and MiniLM alone are about
450,000 objects (a full collection: 100 to 150 ms); :func:`freeze_long_lived` takes what is
alive after a step that leaves long-lived objects (a swap, the ONNX exports) out of later
collections.

>>> release_free_heap() in (True, False)
True
>>> import gc
>>> freeze_long_lived() > 0
True
>>> gc.unfreeze()  # a worker keeps them frozen; this example does not
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
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


def freeze_long_lived() -> int:
    """Collect every generation, then exempt what is still alive from later collections
    (``gc.freeze``); objects frozen before are collected first if they have become garbage, so
    call it after each step that leaves many long-lived objects (one full collection each
    time). How many objects are frozen."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
