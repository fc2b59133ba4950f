"""Keeps a long-running process's resident memory from creeping up through heap fragmentation (glibc).

glibc serves large allocations (a window's tensors on a CPU: megabytes each) from mmap and hands them back to the
system when they are freed, until a freed block makes it raise its "mmap threshold" to that block's size. From
then on such blocks come from the heap, where the map's long-lived small allocations (pose-graph nodes, keyframe
points) settle between them and keep the freed pages from being returned. Measured with the map over 4-view
windows: about 0.8-2 MB of resident memory per keyframe (a 30-minute soak with the demo model grew by 70 %).

`malloc_trim(0)` after a window hands every whole free page of the heap back (about 2 ms): 100 keyframes then
cost under 5 MB. Fixing the mmap threshold instead (mallopt M_MMAP_THRESHOLD) bounds memory as well but makes
every large temporary a fresh mapping: the demo model's CPU windows took 30 % longer, trimming costs nothing
measurable there. Other C libraries and systems are left as they are.
"""
from __future__ import annotations

import ctypes
import math
import sys
from collections.abc import Callable
from typing import Optional


def _malloc_trim() -> Optional[Callable[[int], int]]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (e.g. musl): no such call
        return None
    trim.argtypes, trim.restype = (ctypes.c_size_t,), ctypes.c_int
    return trim


class HeapTrimmer:
    """Hands freed heap pages back to the system at most every `period_s` (call it after each window)."""

    def __init__(self, period_s: float = 1.0):
        self.period_s = period_s
        self._trim = _malloc_trim()
        self._last = -math.inf

    @property
    def available(self) -> bool:
        return self._trim is not None

    def __call__(self, now_s: float) -> bool:
        """Trims when the period has passed since the last trim; True when it did."""
        if self._trim is None or now_s - self._last < self.period_s:
            return False
        self._last = now_s
        self._trim(0)
        return True
