"""glibc allocator tuning shared by the data loader and the flow extractor (torch-free)."""

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_tuned_pid = None


def keep_freed_memory_for_reuse() -> None:
    """Stop glibc from returning every freed buffer of 100 kB-3 MB (a clip view, a flow field) to the OS.

    By default each such buffer is a fresh mmap, so every op on it pays page faults on zero-filled pages:
    measured 3x slower per augmented view (16 -> 5 ms, bench/bench_data.py) and a quarter of the
    Farnebäck flow time (8.6 -> 6.5 ms of CPU per frame pair at 128x171). Serving blocks up to 32 MB from
    the heap and trimming only above 128 MB of free heap removes that. Per process (DataLoader and
    extraction workers call it themselves); a no-op outside glibc.
    """
    global _tuned_pid
    if _tuned_pid == os.getpid() or not sys.platform.startswith("linux"):
        return
    _tuned_pid = os.getpid()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 128 << 20)
    except (OSError, AttributeError):  # not glibc (e.g. musl): keep the default allocator
        pass
