"""Keep the daemon's memory from creeping up over many large allocations.

glibc's malloc serves a large block from mmap only until the first such block
is freed; it then raises its threshold (up to 32 MiB) and takes later blocks
from the heap, whose freed space it seldom returns. Every part buffer and
every 1 MiB socket read is such a block, so a long transfer's RSS grows with
the archive (measured: peak RSS for 1 GiB ÷ 64 MiB = 1.13). A fixed threshold
keeps those blocks in mmap, given back the moment they are freed (1.00).
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3
DEFAULT_THRESHOLD = 256 * 1024


def fix_mmap_threshold(nbytes: int = DEFAULT_THRESHOLD) -> bool:
    """Serve blocks of ``nbytes`` or more from mmap; False where not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, nbytes))
