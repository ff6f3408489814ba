"""Hand the heap memory that large background jobs freed back to the operating system.

A merge or an index build allocates and frees hundreds of megabytes of buffers. glibc keeps freed
memory in its arenas for reuse, so the process's resident memory stays near its peak long after
the job (measured: a writer flood into 4 collections settled at ~1 GB over its start, of which
`malloc_trim` returned ~200-300 MB). Background maintenance calls :func:`release_free_heap` after
a storage turn during which no flush ran, and ``compact()`` after its work. Where the C library
has no ``malloc_trim`` (musl, macOS) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import time
from typing import Callable, Optional

__all__ = ["release_free_heap", "can_release"]


def _malloc_trim() -> Optional[Callable[[int], int]]:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim   # a CDLL call releases the GIL while it runs
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def can_release() -> bool:
    """Whether this C library can return freed heap memory on request."""
    return _TRIM is not None


def release_free_heap() -> float:
    """Return free heap pages of every malloc arena to the OS; the seconds it took (0 when unable)."""
    if _TRIM is None:
        return 0.0
    started = time.perf_counter()
    _TRIM(0)
    return time.perf_counter() - started
