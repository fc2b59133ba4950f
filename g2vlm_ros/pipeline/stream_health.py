"""Whether camera input, time synchronization and inference are alive: the conditions /diagnostics reports.

A counter that only changes when something happens cannot tell "nothing happened": a camera that stops
keeps its last rate, cameras stamped from different clocks never form a synchronized set, and a model that
hangs completes no window. Each check here compares the time since the last event with a timeout, and says
what the operator should look at. Kept free of rclpy so that the rules are tested without ROS.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Optional

Clock = Callable[[], float]


class Activity:
    """Monotonic times of the events the checks measure from, updated by the node as they happen."""

    def __init__(self, clock: Clock = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self.activated_at: Optional[float] = None  # None while inactive
        self.last_set_at: Optional[float] = None  # last synchronized set of all cameras
        self.last_window_at: Optional[float] = None  # last window that completed inference

    def now(self) -> float:
        return self._clock()

    def activated(self) -> None:
        with self._lock:
            self.activated_at, self.last_set_at, self.last_window_at = self._clock(), None, None

    def deactivated(self) -> None:
        with self._lock:
            self.activated_at = None

    def set_matched(self) -> None:
        self.last_set_at = self._clock()

    def window_completed(self) -> None:
        self.last_window_at = self._clock()

    def since(self, event_at: Optional[float]) -> Optional[float]:
        """Seconds since `event_at`, or since activation when it has not happened yet; None while inactive."""
        if self.activated_at is None:
            return None
        return self._clock() - (event_at if event_at is not None else self.activated_at)


def camera_stalled(age_s: Optional[float], timeout_s: float) -> Optional[str]:
    """The camera's problem when its last image (age_s; None: none yet) is older than timeout_s."""
    if age_s is None or age_s <= timeout_s:
        return None
    return f"stalled: no image for {age_s:.1f} s (camera_timeout_s {timeout_s:g})"


def sync_failure(newest_stamps_ns: Mapping[str, Optional[int]], ages_s: Mapping[str, Optional[float]],
                 since_last_set_s: Optional[float], slop_s: float, timeout_s: float) -> Optional[str]:
    """Why live cameras form no synchronized set: their stamps are further apart than sync_slop_s.

    Only when every camera delivers images (a stalled camera is reported as such) and no set has formed for
    timeout_s; the message gives the spread of the cameras' newest stamps, which names the skewed camera."""
    if len(newest_stamps_ns) < 2 or since_last_set_s is None or since_last_set_s <= timeout_s:
        return None
    if any(age is None or age > timeout_s for age in ages_s.values()):
        return None
    stamps = {camera: stamp for camera, stamp in newest_stamps_ns.items() if stamp is not None}
    if len(stamps) < 2:
        return None
    oldest, newest = min(stamps, key=stamps.get), max(stamps, key=stamps.get)
    skew_s = (stamps[newest] - stamps[oldest]) * 1e-9
    return (f"no synchronized set for {since_last_set_s:.1f} s: camera '{newest}' is stamped {skew_s:.3f} s after "
            f"camera '{oldest}' (sync_slop_s {slop_s:g}); check that the cameras' clocks agree, and that the node "
            "keeps up with their frames (one that falls behind drops each camera's frames on its own)")


def inference_stale(since_last_window_s: Optional[float], timeout_s: float, cause: str = "") -> Optional[str]:
    """The inference problem when no window has completed for timeout_s while active."""
    if since_last_window_s is None or since_last_window_s <= timeout_s:
        return None
    return (f"stale: no window completed for {since_last_window_s:.1f} s (inference_timeout_s {timeout_s:g})"
            + (f": {cause}" if cause else ""))
