"""Keep the daemon's memory from creeping up over many large allocations.

glibc's malloc serves a large block from mmap only until the first such block
is freed; it then raises its threshold (up to 32 MiB) and takes later blocks
from the heap, whose freed space it seldom returns. Part buffers are such
blocks, so a long transfer's RSS grew with the archive (measured: peak RSS for
1 GiB ÷ 64 MiB = 1.13). A fixed threshold between the socket read size and the
part size keeps parts in mmap, given back the moment they are freed (1.00),
while 1 MiB socket reads reuse heap blocks: a threshold below them cost a
mmap, a munmap and 256 page faults per read.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MiB = 1024 * 1024


def fix_mmap_threshold(nbytes: int, trim: int = 64 * MiB) -> bool:
    """Serve blocks of ``nbytes`` or more from mmap; False where not glibc.

    Fixing the threshold also fixes the trim threshold, at 128 KiB unless
    set: the heap would then shrink and grow again around every socket read
    (measured: ~600 -> ~400 MiB/s; with 2 MiB, ~370), so it is set to
    ``trim`` (archiverd: four socket reads' worth).
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, nbytes) and mallopt(M_TRIM_THRESHOLD, trim))
