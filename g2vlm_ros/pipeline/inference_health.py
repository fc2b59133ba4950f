"""How the node lives with failing inference: out-of-memory shrinks the window, other errors are
counted and graded for diagnostics (ROS-free).

Out of memory is the one failure that a smaller input fixes: a window of K keyframes per camera
is retried with its newest K-1, K-2, ... sets until it fits or a single set fails too, and the
limit found is kept for later windows (until the node is configured again), so the node does not
run into the same wall on every window. Any other error fails just that window; the next one is
tried as usual.
"""
from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Optional

from g2vlm_ros.backends.backend import GeometryResult
from g2vlm_ros.pipeline.windowing import Window

OUT_OF_MEMORY_POLICIES = ("reduce_window", "skip_window")
FAILING_AFTER = 3  # this many failed windows in a row: the inference status is an error, not a warning
RECENT_FAILURE_S = 10.0  # a failure this recent keeps the status at least a warning


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA/CPU allocation failures of torch, and the allocation errors other runtimes report in text."""
    import torch

    out_of_memory_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                            getattr(torch.cuda, "OutOfMemoryError", None), MemoryError) if t)
    if isinstance(error, out_of_memory_types):
        return True
    text = str(error).lower()
    return "out of memory" in text or "failed to allocate memory" in text


def release_cached_memory() -> None:
    """Hands cached CUDA blocks back (after an out-of-memory, or when the model is released)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def newest_sets(window: Window, keyframes: int) -> Window:
    """The window cut to its newest `keyframes` synchronized sets (frames are camera-major, time-ordered)."""
    if keyframes >= window.keyframes:
        return window
    frames = [frame for camera in window.cameras for frame in window.frames_of(camera)[-keyframes:]]
    return replace(window, frames=frames, keyframes=keyframes)


def run_window(backend, window: Window, health: InferenceHealth,
               on_retry: Callable[[Window, Window, str], None]) -> tuple[Window, GeometryResult]:
    """`backend.run` on the images of `window` (frames with an `rgb`), within the health's keyframe
    limit, retrying smaller after out-of-memory as the policy allows; returns the window actually run
    and its result, or raises the error that ended it. `on_retry(window, smaller, reason)` hears of
    each retry."""
    window = health.limited(window)
    while True:
        try:
            return window, backend.run([frame.rgb for frame in window.frames])
        except Exception as error:
            smaller = health.smaller_after_out_of_memory(window, error)
            if smaller is None:
                raise
            reason = f"{type(error).__name__}: {error}"  # the text only: see below
        # Out here the error is gone, and with it its traceback, whose frames hold the failed attempt's
        # activations: freed only now, so the retry finds the memory they took (on an H200 capped between
        # the needs of 2 and 4 views, retrying inside the except block ran out again down to 1 view).
        gc.collect()
        backend.release_caches()  # the failed size's constants: they would stay beside the smaller ones
        release_cached_memory()
        on_retry(window, smaller, reason)
        window = smaller


@dataclass(frozen=True)
class HealthStatus:
    level: str  # "ok" | "warn" | "error"
    message: str


class InferenceHealth:
    """Failure bookkeeping of the inference thread, read by diagnostics from another thread."""

    def __init__(self, policy: str = "reduce_window"):
        if policy not in OUT_OF_MEMORY_POLICIES:
            raise ValueError(f"out-of-memory policy '{policy}' is not one of {', '.join(OUT_OF_MEMORY_POLICIES)}")
        self.policy = policy
        self.keyframe_limit: Optional[int] = None  # set after an out-of-memory: at most this many sets per window
        self.out_of_memory_events = 0
        self.consecutive_failures = 0
        self.last_error = ""
        self._last_failure: Optional[float] = None
        self._lock = threading.Lock()

    def limited(self, window: Window) -> Window:
        limit = self.keyframe_limit
        return newest_sets(window, limit) if limit is not None else window

    def smaller_after_out_of_memory(self, window: Window, error: BaseException) -> Optional[Window]:
        """The window to retry after `error`, or None when it must fail (not out of memory, the
        skip_window policy, or a single set already)."""
        if not is_out_of_memory(error):
            return None
        with self._lock:
            self.out_of_memory_events += 1
        if self.policy != "reduce_window" or window.keyframes <= 1:
            return None
        self.keyframe_limit = window.keyframes - 1
        return newest_sets(window, window.keyframes - 1)

    def record_success(self) -> None:
        with self._lock:
            self.consecutive_failures = 0

    def record_failure(self, error: BaseException) -> None:
        with self._lock:
            self.consecutive_failures += 1
            self.last_error = f"{type(error).__name__}: {error}"
            self._last_failure = time.monotonic()

    def status(self) -> HealthStatus:
        with self._lock:
            if self.consecutive_failures >= FAILING_AFTER:
                return HealthStatus("error", f"the last {self.consecutive_failures} windows failed: {self.last_error}")
            if self._last_failure is not None and time.monotonic() - self._last_failure < RECENT_FAILURE_S:
                return HealthStatus("warn", f"a window failed: {self.last_error}")
        if self.keyframe_limit is not None:
            return HealthStatus("warn", f"windows limited to {self.keyframe_limit} keyframe(s) per camera after "
                                        "running out of memory")
        return HealthStatus("ok", "")
