"""`keep_freed_memory`: freed tensors' memory stays in the process while featvis computes (glibc).

Why: every optimisation step allocates and frees hundreds of MB of activations. glibc's malloc
hands large freed blocks back to the kernel (blocks over 32 MiB always go to munmap, the free
top of the heap is trimmed), so the next step takes them again as fresh zero-filled pages, one
page fault per 4 KiB. A 64-step render of 8 mixed4a channels measured 1.7 million page faults
and 12.3 s with glibc's defaults, 0.24 million and 10.6 s within this block (2-core VM).
Within it every block comes from the heap (no mmap) and the heap is not trimmed (below 2 GiB
free); on leaving the outermost block glibc's limits return to where its own adaptive rule
takes them for large blocks (mmap above 32 MiB, trim above 64 MiB) and what is free is handed
back at once. Elsewhere (macOS, Windows, musl) it changes nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import platform
import threading
from typing import Iterator

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # mallopt parameters, <malloc.h>
HEAP_BLOCK = 32 << 20  # glibc's largest M_MMAP_THRESHOLD on 64-bit systems
NEVER = 2**31 - 1  # the largest trim threshold mallopt takes (an int): 2 GiB of free heap top
MMAP_MAX = 65536  # glibc's default number of mmapped blocks

_lock = threading.Lock()
_depth = 0


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc with mallopt and malloc_trim, else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(None)
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None
    libc.mallopt.argtypes, libc.malloc_trim.argtypes = [ctypes.c_int, ctypes.c_int], [ctypes.c_size_t]
    return libc


def _set(keep: bool) -> None:
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_MAX, 0 if keep else MMAP_MAX)
        libc.mallopt(M_MMAP_THRESHOLD, HEAP_BLOCK)
        libc.mallopt(M_TRIM_THRESHOLD, NEVER if keep else 2 * HEAP_BLOCK)


def give_back_memory() -> None:
    """Hand free heap memory back to the system now (after a one-off large allocation such as a huge
    photo's pixels), unless a `keep_freed_memory` block is running."""
    libc = _glibc()
    with _lock:
        if libc is not None and _depth == 0:
            libc.malloc_trim(0)


@contextlib.contextmanager
def keep_freed_memory(give_back: bool = True) -> Iterator[bool]:
    """Within the block (nestable, process-wide) freed memory is reused instead of returned to the
    system; yields whether this C library allows it. ``give_back=False`` on the outermost block
    skips handing the free memory back at its end (tens of ms): for a process that ends there."""
    global _depth
    with _lock:
        _depth += 1
        if _depth == 1:
            _set(keep=True)
    try:
        yield _glibc() is not None
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _set(keep=False)
                libc = _glibc()
                if libc is not None and give_back:
                    libc.malloc_trim(0)
