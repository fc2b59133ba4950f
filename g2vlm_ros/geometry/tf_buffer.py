"""A small, ROS-free transform buffer with tf2's lookup semantics (numpy only).

tf2_ros is not on PyPI, so pip-only installs cannot use tf2's BufferCore. This module keeps the same
model: a forest of frames where each child has exactly one parent, dynamic links kept as a short
time-ordered history (interpolated, never extrapolated) and static links valid at all times. The ROS
adapter (g2vlm_ros.ros.tf_input) feeds it from /tf and /tf_static; keeping it free of rclpy lets it
be tested, and reasoned about, without a ROS graph.
"""
from __future__ import annotations

import bisect
import math
import threading
from dataclasses import dataclass, field

import numpy as np

from g2vlm_ros.geometry.rotations import invert_rigid, matrix_from_translation_quaternion, slerp


class TransformUnavailable(LookupError):
    """No transform between two frames at the requested time; the message says why."""


def _seconds(stamp_ns: int) -> str:
    # Integer arithmetic: float seconds would lose the last digits of present-day epoch stamps.
    sign = "-" if stamp_ns < 0 else ""
    whole, fraction = divmod(abs(stamp_ns), 1_000_000_000)
    return f"{sign}{whole}.{fraction:09d}".rstrip("0").rstrip(".") + " s"


@dataclass
class _Link:
    """What is known about parent_T_child for one child frame."""

    parent: str
    static_transform: np.ndarray | None = None
    stamps_ns: list[int] = field(default_factory=list)
    translations: list[np.ndarray] = field(default_factory=list)
    rotations: list[np.ndarray] = field(default_factory=list)

    def describe(self, child: str) -> str:
        return f"'{self.parent}' -> '{child}'"

    def at(self, child: str, stamp_ns: int) -> np.ndarray:
        if self.static_transform is not None:
            return self.static_transform
        oldest, newest = self.stamps_ns[0], self.stamps_ns[-1]
        if stamp_ns < oldest or stamp_ns > newest:
            direction = "past" if stamp_ns < oldest else "future"
            raise TransformUnavailable(
                f"lookup would require extrapolation into the {direction}: requested time {_seconds(stamp_ns)}, "
                f"but {self.describe(child)} has data only from {_seconds(oldest)} to {_seconds(newest)}")
        after = bisect.bisect_left(self.stamps_ns, stamp_ns)
        if self.stamps_ns[after] == stamp_ns:
            return matrix_from_translation_quaternion(self.translations[after], self.rotations[after])
        before = after - 1
        fraction = (stamp_ns - self.stamps_ns[before]) / (self.stamps_ns[after] - self.stamps_ns[before])
        translation = self.translations[before] + fraction * (self.translations[after] - self.translations[before])
        return matrix_from_translation_quaternion(translation, slerp(self.rotations[before], self.rotations[after],
                                                                     fraction))


class TransformBuffer:
    """Transforms between frames of a tf-style tree over time; safe to fill and query from different threads."""

    def __init__(self, cache_time_s: float = 10.0):
        if not (math.isfinite(cache_time_s) and cache_time_s > 0):
            raise ValueError(f"cache_time_s must be a positive number of seconds, not {cache_time_s!r}")
        self._cache_time_ns = int(round(cache_time_s * 1e9))
        self._links: dict[str, _Link] = {}  # keyed by child frame: a frame has at most one parent
        self._lock = threading.Lock()

    def set_transform(self, parent: str, child: str, stamp_ns: int, translation, rotation_xyzw,
                      static: bool = False) -> None:
        """Stores parent_T_child (maps child coordinates into parent); a new parent replaces the child's old one."""
        for role, name in (("parent", parent), ("child", child)):
            if not isinstance(name, str) or not name:
                raise ValueError(f"{role} frame name must be a non-empty string, not {name!r}")
        if parent == child:
            raise ValueError(f"frame '{child}' cannot be its own parent")
        if isinstance(stamp_ns, bool) or int(stamp_ns) != stamp_ns or stamp_ns < 0:
            raise ValueError(f"stamp_ns must be a non-negative integer of nanoseconds, not {stamp_ns!r}")
        stamp_ns = int(stamp_ns)
        translation = np.asarray(translation, dtype=np.float64).reshape(-1)
        rotation = np.asarray(rotation_xyzw, dtype=np.float64).reshape(-1)
        if translation.shape != (3,) or not np.all(np.isfinite(translation)):
            raise ValueError(f"translation of '{parent}' -> '{child}' must be 3 finite numbers, not {translation}")
        if rotation.shape != (4,) or not np.all(np.isfinite(rotation)):
            raise ValueError(f"rotation of '{parent}' -> '{child}' must be 4 finite numbers x, y, z, w, not {rotation}")
        norm = float(np.linalg.norm(rotation))
        if norm < 1e-9:
            raise ValueError(f"rotation of '{parent}' -> '{child}' is a zero quaternion")
        rotation = rotation / norm

        with self._lock:
            link = self._links.get(child)
            # Reparenting, or switching between static and dynamic, starts the link afresh, as tf2 does:
            # mixing samples of two different parents in one history would interpolate nonsense.
            if link is None or link.parent != parent or (link.static_transform is not None) != static:
                link = self._links[child] = _Link(parent)
            if static:
                link.static_transform = matrix_from_translation_quaternion(translation, rotation)
                return
            index = bisect.bisect_left(link.stamps_ns, stamp_ns)
            if index < len(link.stamps_ns) and link.stamps_ns[index] == stamp_ns:
                link.translations[index], link.rotations[index] = translation, rotation  # a resend wins
            else:
                link.stamps_ns.insert(index, stamp_ns)
                link.translations.insert(index, translation)
                link.rotations.insert(index, rotation)
            expired = bisect.bisect_left(link.stamps_ns, link.stamps_ns[-1] - self._cache_time_ns)
            del link.stamps_ns[:expired], link.translations[:expired], link.rotations[:expired]

    def parents(self) -> dict[str, str]:
        """child -> parent for every frame that has a parent."""
        with self._lock:
            return {child: link.parent for child, link in self._links.items()}

    def frames(self) -> list[str]:
        with self._lock:
            return sorted(set(self._links) | {link.parent for link in self._links.values()})

    def can_transform(self, target: str, source: str, stamp_ns: int = 0) -> bool:
        try:
            self.lookup(target, source, stamp_ns)
        except TransformUnavailable:
            return False
        return True

    def lookup(self, target: str, source: str, stamp_ns: int = 0) -> np.ndarray:
        """target_T_source: maps points in `source` into `target` at `stamp_ns` (0: latest time common to the chain)."""
        if isinstance(stamp_ns, bool) or int(stamp_ns) != stamp_ns or stamp_ns < 0:
            raise ValueError(f"stamp_ns must be a non-negative integer of nanoseconds, not {stamp_ns!r}")
        if target == source:
            return np.eye(4)
        with self._lock:
            known = set(self._links) | {link.parent for link in self._links.values()}
            for role, name in (("target", target), ("source", source)):
                if name not in known:
                    raise TransformUnavailable(f"{role} frame '{name}' does not exist (known frames: "
                                               f"{', '.join(sorted(known)) or 'none'})")
            source_path, target_path = self._path_to_root(source), self._path_to_root(target)
            target_ancestors = set(target_path)
            common = next((frame for frame in source_path if frame in target_ancestors), None)
            if common is None:
                raise TransformUnavailable(
                    f"frames '{target}' and '{source}' are not connected: '{target}' belongs to the tree rooted at "
                    f"'{target_path[-1]}' and '{source}' to the tree rooted at '{source_path[-1]}'")
            # The links to walk are those of every frame below the common ancestor on either path.
            source_children = source_path[:source_path.index(common)]
            target_children = target_path[:target_path.index(common)]
            stamp_ns = self._resolve_stamp(target, source, source_children + target_children, stamp_ns)
            common_T_source = self._chain_to_ancestor(source_children, stamp_ns)
            common_T_target = self._chain_to_ancestor(target_children, stamp_ns)
        return invert_rigid(common_T_target) @ common_T_source

    def _path_to_root(self, frame: str) -> list[str]:
        path = [frame]
        while path[-1] in self._links:
            parent = self._links[path[-1]].parent
            # Reparenting messages can arrive in an order that briefly closes a loop; report it, don't spin.
            if parent in path:
                raise TransformUnavailable(f"the tree has a loop: {' -> '.join(reversed(path + [parent]))}")
            path.append(parent)
        return path

    def _resolve_stamp(self, target: str, source: str, children: list[str], stamp_ns: int) -> int:
        dynamic = [(child, self._links[child]) for child in children if self._links[child].static_transform is None]
        if stamp_ns != 0 or not dynamic:
            return stamp_ns
        latest_common = min(link.stamps_ns[-1] for _, link in dynamic)
        if any(link.stamps_ns[0] > latest_common for _, link in dynamic):
            spans = "; ".join(f"{link.describe(child)} from {_seconds(link.stamps_ns[0])} to "
                              f"{_seconds(link.stamps_ns[-1])}" for child, link in dynamic)
            raise TransformUnavailable(f"no time is common to every dynamic link between '{target}' and '{source}' "
                                       f"(data: {spans})")
        return latest_common

    def _chain_to_ancestor(self, children: list[str], stamp_ns: int) -> np.ndarray:
        ancestor_T_frame = np.eye(4)
        for child in children:  # ordered from the starting frame upwards
            ancestor_T_frame = self._links[child].at(child, stamp_ns) @ ancestor_T_frame
        return ancestor_T_frame
