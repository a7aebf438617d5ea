"""Keep freed memory in the process: the C library allocator's settings for the processes ``sdapm-hf`` runs.

glibc hands a freed block above its mmap threshold (128 kB at start, raised on the fly up to 32 MB) back to the
kernel, and trims the top of its heap once more than its trim threshold lies free there; a later buffer of that size
is then mapped afresh, and each of its 4 kB pages faults in when first written. A memory step allocates many
buffers of (B, N) floats (512 kB at B = 32, N = 4,096), so at large N the step pays for faults in proportion to N.
``keep_freed_memory`` raises both thresholds to 1 GiB (``mallopt``), so that freed blocks stay in the process and
are reused; ``docs/benchmarks.md`` ("Memory scaling with sparse reads") measures the step both ways. The empty
memory itself costs no fill and no fault in any process: its large fields come from ``tensor_state.lazy_zeros``.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 30
# Where the environment sets the allocator itself, its choice stands.
ALLOCATOR_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to ``THRESHOLD`` for this process (module docstring).

    Returns:
        whether both were set: False off Linux, without ``mallopt`` (another C library), where it refuses, or where
        one of ``ALLOCATOR_VARIABLES`` is set in the environment (left as it is).
    """
    if not sys.platform.startswith("linux") or any(name in os.environ for name in ALLOCATOR_VARIABLES):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, THRESHOLD) == 1
