"""Give large buffers back to the system as soon as they are freed.

glibc's allocator serves a large block (a bundle of several MB, as received, decoded
and validated) from its heaps once a block of that size has been freed, and its
heaps rarely shrink: a flood of 15 MB requests, each refused within milliseconds,
grew a server to 1.5 GB although it never held more than a few of them at once.
With a fixed threshold, every block of ``_MMAP_THRESHOLD`` bytes or more is mapped
on its own and unmapped when freed (measured: 0.6 GB for the same flood).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["return_large_blocks"]

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # <malloc.h>
_MMAP_THRESHOLD = 1024 * 1024


def return_large_blocks() -> bool:
    """Fix glibc's mmap threshold for this process; False where there is no glibc
    (musl, macOS: their allocators return large blocks already)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) != 1:
        log.warning("could not set the allocator's mmap threshold; memory may stay high")
        return False
    return True
