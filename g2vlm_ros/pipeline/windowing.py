"""Aligns N camera streams in time, picks keyframes and assembles windows of K keyframes per camera for one inference.

A multi-view model needs one image per camera taken at (nearly) the same time, and a multi-frame window needs
frames far enough apart to give a baseline, yet the answer must describe the present. So frames are grouped into
synchronized sets (one frame per camera), sparse sets become keyframes, and every window ends with the newest set.
Kept free of rclpy so that these rules can be tested without ROS.
"""
from __future__ import annotations

import bisect
import math
import operator
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Optional, Protocol, TypeVar

import numpy as np

_LUMA_PER_UNIT = np.array([0.299, 0.587, 0.114]) / 255.0  # ITU-R BT.601 weights, scaled so grey is in [0, 1]


def thumbnail(rgb: np.ndarray, size: int = 32) -> np.ndarray:
    """[H,W,3] uint8 -> [size,size] float32 grey in [0,1] by block averaging (any H,W >= 1)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an [H,W,3] uint8 image, got {rgb.dtype} {rgb.shape}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    height, width = rgb.shape[:2]
    rows, cols = (np.arange(size) * height) // size, (np.arange(size) * width) // size
    # reduceat sums a[start_i:start_next] or, when the next start is not larger, just a[start_i]: an image smaller
    # than the thumbnail repeats its pixels instead of leaving empty blocks. Summing within rows first (contiguous
    # memory) in uint32 (exact below 16M pixels per row) is about 4x faster on 1080p than rows first in uint64.
    row_sums = np.add.reduceat(rgb, cols, axis=1, dtype=np.uint32)
    sums = np.add.reduceat(row_sums, rows, axis=0, dtype=np.uint64)
    counts = np.outer(_block_lengths(rows, height), _block_lengths(cols, width))
    grey = (sums @ _LUMA_PER_UNIT) / counts
    return np.clip(grey, 0.0, 1.0).astype(np.float32)


def _block_lengths(starts: np.ndarray, total: int) -> np.ndarray:
    return np.maximum(np.diff(np.append(starts, total)), 1)


def image_change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails of the same size, in [0,1]."""
    if a.shape != b.shape:
        raise ValueError(f"thumbnails differ in shape: {a.shape} vs {b.shape}")
    return float(np.clip(np.mean(np.abs(a.astype(np.float32) - b.astype(np.float32))), 0.0, 1.0))


class TimedFrame(Protocol):
    """What the assembler needs from a frame."""

    camera: str
    stamp_ns: int
    thumbnail: Optional[np.ndarray]  # None when the frame was taken while image change was not tested


F = TypeVar("F", bound=TimedFrame)

Motion = Callable[[Sequence[TimedFrame], Sequence[TimedFrame]], Optional[tuple[float, float]]]
"""motion(previous_keyframe_set, candidate_set) -> (translation_m, rotation_deg) of the first camera, or None."""

KeyframeProcessed = Callable[[Sequence[TimedFrame]], bool]
"""keyframe_processed(keyframe_set) -> whether a window holding this keyframe set has been through the model."""


@dataclass(frozen=True)
class WindowPolicy:
    window_size: int = 1  # K keyframes per camera in one window
    sync_slop_s: float = 0.05  # max stamp spread within one synchronized set
    keyframe_min_interval_s: float = 0.0  # a new keyframe needs this much time since the last (pivot stamps)
    keyframe_min_motion_m: float = 0.0  # content criteria, any one suffices; 0 disables each
    keyframe_min_rotation_deg: float = 0.0
    keyframe_min_image_change: float = 0.0
    buffer_per_camera: int = 8  # frames kept per camera while waiting for a match

    def validate(self) -> None:
        for name in ("window_size", "buffer_per_camera"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("sync_slop_s", "keyframe_min_interval_s", "keyframe_min_motion_m", "keyframe_min_rotation_deg",
                     "keyframe_min_image_change"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.keyframe_min_image_change > 1:
            raise ValueError(f"keyframe_min_image_change must be <= 1, got {self.keyframe_min_image_change!r}")


@dataclass
class Window(Generic[F]):
    frames: list[F]  # camera-major: all K frames of camera 0 in time order, then camera 1, ...
    cameras: list[str]
    keyframes: int  # K
    newest_stamp_ns: int  # newest stamp in the window
    anchor_stamp_ns: int  # pivot stamp of the newest synchronized set
    # False when the newest set is not a keyframe: it ends this window for the present, but the map places it
    # without keeping it (every other set of a window is a keyframe)
    newest_is_keyframe: bool = True

    def is_keyframe(self, index: int) -> bool:
        """Whether frames[index] belongs to a keyframe set (only the newest set may not)."""
        return self.newest_is_keyframe or index % self.keyframes != self.keyframes - 1

    def frames_of(self, camera: str) -> list[F]:
        start = self.cameras.index(camera) * self.keyframes
        return self.frames[start:start + self.keyframes]


@dataclass
class WindowStats:
    sets_matched: int = 0
    frames_unmatched: int = 0  # discarded without ever being part of a set (out-of-order drops not included)
    keyframes: int = 0
    motion_unknown: int = 0
    out_of_order: int = 0  # dropped on add: too old to take part in any new set
    image_change_unknown: int = 0  # keyframe decisions where a frame had no thumbnail to compare


@dataclass(frozen=True)
class _SyncSet(Generic[F]):
    frames: tuple[F, ...]  # one per camera, in camera order
    pivot_ns: int


_stamp = operator.attrgetter("stamp_ns")


def _closest(buffer: list[F], stamp_ns: int) -> F:
    return min(buffer, key=lambda frame: abs(frame.stamp_ns - stamp_ns))  # ties: the older, leaving newer ones


class WindowAssembler(Generic[F]):
    """Turns per-camera frames into windows of K synchronized sets; poll() returns the newest complete window.

    Matching is greedy nearest-stamp: the pivot camera is the one whose newest frame is the oldest, because every
    other camera already has a frame at least that new, so frames still to come (in order) cannot be closer to a
    pivot frame than what is buffered now; a match decided now is final.

    Not thread-safe: the caller serializes add(), poll() and reset() (the node holds its own lock).
    """

    def __init__(self, cameras: Sequence[str], policy: WindowPolicy, motion: Optional[Motion] = None,
                 keyframe_processed: Optional[KeyframeProcessed] = None):
        """`keyframe_processed`: when given, once windows are complete a new keyframe waits until the newest one
        has been through the model. Consecutive processed windows then always share a keyframe, however many
        windows a slow model drops in between, which is what chains them into one map."""
        if not cameras:
            raise ValueError("cameras must not be empty")
        if len(set(cameras)) != len(cameras):
            raise ValueError(f"camera names must be unique, got {list(cameras)}")
        self.cameras = list(cameras)
        self.stats = WindowStats()
        self._motion = motion
        self._keyframe_processed = keyframe_processed
        self._camera_index = {camera: index for index, camera in enumerate(self.cameras)}
        self.policy = policy
        self.reset()

    @property
    def policy(self) -> WindowPolicy:
        return self._policy

    @policy.setter
    def policy(self, policy: WindowPolicy) -> None:
        """Takes effect with the next frame; the stamp thresholds are derived here, so a runtime change of
        keyframe_min_interval_s or sync_slop_s is never shadowed by a value cached at construction."""
        policy.validate()
        if hasattr(self, "_policy") and policy.window_size != self._policy.window_size:
            raise ValueError("window_size cannot change on a running assembler; make a new one")
        self._policy = policy
        self._slop_ns = round(policy.sync_slop_s * 1e9)
        self._min_interval_ns = round(policy.keyframe_min_interval_s * 1e9)

    def reset(self) -> None:
        """Forget buffered frames, keyframes and the stamps of the last set; the counters keep counting."""
        self._buffers: list[list[F]] = [[] for _ in self.cameras]  # each sorted by stamp
        self._last_used_ns: list[Optional[int]] = [None] * len(self.cameras)
        self._last_pivot_ns: Optional[int] = None
        self._keyframe_sets: deque[_SyncSet[F]] = deque(maxlen=self.policy.window_size)

    @property
    def buffered_frames(self) -> int:
        return sum(len(buffer) for buffer in self._buffers)

    def add(self, frame: F) -> None:
        index = self._camera_index.get(frame.camera)
        if index is None:
            raise ValueError(f"frame from unknown camera '{frame.camera}', expected one of {self.cameras}")
        last_used_ns = self._last_used_ns[index]
        # Windows need each camera's frames strictly increasing. (This also drops every frame at or before the last
        # pivot - slop, which could not join a new set: each camera's used frame is within slop of that pivot.)
        if last_used_ns is not None and frame.stamp_ns <= last_used_ns:
            self.stats.out_of_order += 1
            return
        buffer = self._buffers[index]
        bisect.insort_right(buffer, frame, key=_stamp)
        if len(buffer) > self.policy.buffer_per_camera:
            del buffer[0]
            self.stats.frames_unmatched += 1

    def poll(self) -> Optional[Window[F]]:
        """The window of the newest synchronized set not used before, if complete; older new sets only feed the
        keyframe logic, in time order."""
        newest_window_sets: Optional[list[_SyncSet[F]]] = None
        newest_is_keyframe = True
        while (sync_set := self._next_set()) is not None:
            self.stats.sets_matched += 1
            newest_window_sets, newest_is_keyframe = self._window_sets(sync_set)
        if newest_window_sets is None or len(newest_window_sets) < self.policy.window_size:
            return None
        frames = [sync_set.frames[camera] for camera in range(len(self.cameras)) for sync_set in newest_window_sets]
        return Window(frames=frames, cameras=list(self.cameras), keyframes=self.policy.window_size,
                      newest_stamp_ns=max(frame.stamp_ns for frame in frames),
                      anchor_stamp_ns=newest_window_sets[-1].pivot_ns, newest_is_keyframe=newest_is_keyframe)

    def _next_set(self) -> Optional[_SyncSet[F]]:
        """The oldest new set, consumed from the buffers; or None, after dropping frames that cannot match."""
        if not all(self._buffers):
            return None
        pivot_index = min(range(len(self.cameras)), key=lambda index: self._buffers[index][-1].stamp_ns)
        pivot_buffer = self._buffers[pivot_index]
        position = 0
        pivot_newest_ns = pivot_buffer[-1].stamp_ns
        while position < len(pivot_buffer):
            pivot = pivot_buffer[position]
            if self._last_pivot_ns is not None and pivot.stamp_ns <= self._last_pivot_ns:
                position += 1  # cannot be a pivot again, but may still join a set as another camera's partner
                continue
            members = tuple(pivot if index == pivot_index else _closest(buffer, pivot.stamp_ns)
                            for index, buffer in enumerate(self._buffers))
            stamps = [member.stamp_ns for member in members]
            if max(stamps) - min(stamps) <= self._slop_ns:
                self._consume(members, pivot.stamp_ns)
                return _SyncSet(members, pivot.stamp_ns)
            # The other cameras' partners for this pivot will not get closer (see class docstring): it never matches.
            del pivot_buffer[position]
            self.stats.frames_unmatched += 1
        # Any set needs a pivot-camera frame within slop; those left (and those to come) are no older than this.
        oldest_pivot_ns = pivot_buffer[0].stamp_ns if pivot_buffer else pivot_newest_ns
        for buffer in self._buffers:
            unmatchable = bisect.bisect_left(buffer, oldest_pivot_ns - self._slop_ns, key=_stamp)
            self.stats.frames_unmatched += unmatchable
            del buffer[:unmatchable]
        return None

    def _consume(self, members: tuple[F, ...], pivot_ns: int) -> None:
        for index, member in enumerate(members):
            buffer = self._buffers[index]
            at_or_before = bisect.bisect_right(buffer, member.stamp_ns, key=_stamp)
            self.stats.frames_unmatched += at_or_before - 1  # all but the member itself
            del buffer[:at_or_before]
            self._last_used_ns[index] = member.stamp_ns
        self._last_pivot_ns = pivot_ns

    def _window_sets(self, sync_set: _SyncSet[F]) -> tuple[list[_SyncSet[F]], bool]:
        """Updates the keyframes with `sync_set`; returns the sets of its window (maybe fewer than K) and whether
        `sync_set` became a keyframe.

        A set that is not a keyframe still ends its window after the last K-1 keyframes: outputs describe the present
        while the keyframes give the baseline.
        """
        keyframe_sets = list(self._keyframe_sets)
        if self._is_keyframe(sync_set):
            self._keyframe_sets.append(sync_set)
            self.stats.keyframes += 1
            return list(self._keyframe_sets), True
        baseline = keyframe_sets[max(0, len(keyframe_sets) - (self.policy.window_size - 1)):]
        return baseline + [sync_set], False

    def _is_keyframe(self, candidate: _SyncSet[F]) -> bool:
        if not self._keyframe_sets:
            return True
        last = self._keyframe_sets[-1]
        if candidate.pivot_ns - last.pivot_ns < self._min_interval_ns:
            return False
        if (self._keyframe_processed is not None and len(self._keyframe_sets) >= self.policy.window_size
                and not self._keyframe_processed(last.frames)):
            return False
        policy = self.policy
        motion_enabled = policy.keyframe_min_motion_m > 0 or policy.keyframe_min_rotation_deg > 0
        change_enabled = policy.keyframe_min_image_change > 0
        if not motion_enabled and not change_enabled:
            return True
        # Motion is asked whenever it is enabled, so motion_unknown counts missing TF regardless of image change.
        moved = motion_enabled and self._moved_enough(last, candidate)
        return moved or (change_enabled and any(
            self._changed_enough(before.thumbnail, after.thumbnail)
            for before, after in zip(last.frames, candidate.frames, strict=True)))

    def _changed_enough(self, before: Optional[np.ndarray], after: Optional[np.ndarray]) -> bool:
        # A keyframe kept while the criterion was off has no thumbnail (they are made only while it is on): its
        # change is unknown, and the candidate becomes a keyframe so that the next comparison has both.
        if before is None or after is None:
            self.stats.image_change_unknown += 1
            return True
        return image_change(before, after) >= self.policy.keyframe_min_image_change

    def _moved_enough(self, last: _SyncSet[F], candidate: _SyncSet[F]) -> bool:
        motion = self._motion(last.frames, candidate.frames) if self._motion is not None else None
        if motion is None:
            self.stats.motion_unknown += 1
            return False
        translation_m, rotation_deg = motion
        policy = self.policy
        return (policy.keyframe_min_motion_m > 0 and translation_m >= policy.keyframe_min_motion_m) or (
            policy.keyframe_min_rotation_deg > 0 and rotation_deg >= policy.keyframe_min_rotation_deg)
