"""Keeps a long-running process's resident memory from creeping up through heap fragmentation (glibc).

glibc serves large allocations (a window's tensors on a CPU: megabytes each) from mmap and hands them back to the
system when they are freed, until a freed block makes it raise its "mmap threshold" to that block's size. From
then on such blocks come from the heap, where the map's long-lived small allocations (pose-graph nodes, keyframe
points) settle between them and keep the freed pages from ever being returned. Measured with the map over 4-view
windows: about 2 MB of resident memory per keyframe with the adjusting threshold, 0.02 MB with it fixed at
glibc's default of 128 kB. Setting it explicitly (mallopt M_MMAP_THRESHOLD) turns the adjustment off. Other
C libraries and systems are left as they are.
"""
from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter number (glibc malloc.h)
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own default: blocks this large come from mmap


def fix_mmap_threshold() -> bool:
    """Fixes glibc's mmap threshold for this process; False where there is no glibc (nothing changed)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): no such knob
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
