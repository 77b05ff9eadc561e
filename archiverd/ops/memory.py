"""Keep the daemon's memory from creeping up over many large allocations.

glibc's malloc serves a large block from mmap only until the first such block
is freed; it then raises its threshold (up to 32 MiB) and takes later blocks
from the heap, whose freed space it seldom returns. Part buffers and 1 MiB
socket reads are such blocks, so a long transfer's RSS grew with the archive
(measured: peak RSS for 1 GiB ÷ 64 MiB = 1.13). A fixed threshold of 256 KiB
keeps them in mmap, given back the moment they are freed (1.00).

The price, measured: every socket read then costs a mmap, a munmap and its
page faults (1 region: ~690 -> ~400 MiB/s, still well above the 250 MiB/s
goal). Thresholds between the read size and the part size, with a larger trim
threshold, kept the speed but let RSS wander by up to 18% from run to run.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3


def fix_mmap_threshold(nbytes: int) -> bool:
    """Serve blocks of ``nbytes`` or more from mmap; False where not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, nbytes))
