"""Looking up transforms from /tf and /tf_static, with or without tf2 packages installed.

Preference order: tf2_ros (a real ROS install: its Buffer and TransformListener), a plain
tf2_msgs/TFMessage subscription feeding the numpy TransformBuffer (tf2_msgs present without
tf2_ros), and otherwise nothing. The last case happens only in pip-only environments (neither
package is on PyPI); lookups then raise TransformUnavailable naming why, so callers treat it like
any other missing transform. tf2 imports stay inside __init__ so this module imports everywhere.
"""
from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from g2vlm_ros.geometry.rotations import matrix_from_translation_quaternion, rotation_angle_deg
from g2vlm_ros.geometry.tf_buffer import TransformBuffer, TransformUnavailable

TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"


def matrix_from_transform_msg(transform: Any) -> np.ndarray:
    """4x4 parent_T_child of a geometry_msgs/Transform."""
    translation, rotation = transform.translation, transform.rotation
    return matrix_from_translation_quaternion((translation.x, translation.y, translation.z),
                                              (rotation.x, rotation.y, rotation.z, rotation.w))


class TfInput:
    """target_T_source lookups through whatever the environment provides."""

    def __init__(self, node: Node, cache_time_s: float = 10.0, callback_group: Optional[Any] = None):
        self.mode = "unavailable (not started)"
        self._node = node
        self._tf2_buffer = None
        self._tf2_listener = None
        self._tf2_exception: type[Exception] = Exception
        self._buffer: Optional[TransformBuffer] = None
        self._subscriptions: list = []
        self._expected_parents: dict[str, str] = {}
        self._foreign: dict[str, str] = {}
        try:
            import rclpy.duration
            import tf2_ros

            # tf2_ros's listener makes its own reentrant callback group (the only option common to Humble, Jazzy
            # and Kilted), so callback_group applies to the tf2_msgs fallback only.
            self._tf2_buffer = tf2_ros.Buffer(cache_time=rclpy.duration.Duration(seconds=cache_time_s))
            self._tf2_listener = tf2_ros.TransformListener(self._tf2_buffer, node)
            self._tf2_exception = tf2_ros.TransformException
            self.mode = "tf2_ros"
            return
        except ImportError:
            pass
        try:
            from tf2_msgs.msg import TFMessage
        except ImportError:
            self.mode = "unavailable (neither tf2_ros nor tf2_msgs is installed, so /tf cannot be read)"
            return
        self._buffer = TransformBuffer(cache_time_s)
        # The same QoS as tf2_ros's listener, so that any tf publisher matches: late joiners get the latched
        # static transforms through TRANSIENT_LOCAL.
        dynamic_qos = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.VOLATILE)
        static_qos = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._subscriptions = [
            node.create_subscription(TFMessage, TF_TOPIC, lambda msg: self._store(msg, static=False), dynamic_qos,
                                     callback_group=callback_group),
            node.create_subscription(TFMessage, TF_STATIC_TOPIC, lambda msg: self._store(msg, static=True),
                                     static_qos, callback_group=callback_group),
        ]
        self.mode = "tf2_msgs"

    @property
    def available(self) -> bool:
        return self._tf2_buffer is not None or self._buffer is not None

    def lookup(self, target: str, source: str, stamp_ns: int = 0) -> np.ndarray:
        """4x4 target_T_source at stamp_ns (0: latest available); raises TransformUnavailable saying why not."""
        if self._tf2_buffer is not None:
            import rclpy.time

            try:
                stamped = self._tf2_buffer.lookup_transform(target, source, rclpy.time.Time(nanoseconds=int(stamp_ns)))
            except self._tf2_exception as error:
                raise TransformUnavailable(f"{type(error).__name__}: {error}") from error
            return matrix_from_transform_msg(stamped.transform)
        if self._buffer is not None:
            return self._buffer.lookup(target, source, stamp_ns)
        if target == source:
            return np.eye(4)  # needs no TF at all, so it works even here
        raise TransformUnavailable(f"cannot look up '{target}' <- '{source}': TF input is {self.mode}")

    def known_frames(self) -> set[str]:
        """Every frame name in the TF tree as received so far (children and parents)."""
        parents = self._parents()
        return set(parents) | set(parents.values())

    def _parents(self) -> dict[str, str]:
        """child -> parent of the TF tree as received so far."""
        if self._tf2_buffer is not None:
            import yaml

            tree = yaml.safe_load(self._tf2_buffer.all_frames_as_yaml() or "{}") or {}
            return {str(child): str(entry.get("parent", ""))
                    for child, entry in tree.items() if isinstance(entry, dict)}
        buffer = self._buffer
        return buffer.parents() if buffer is not None else {}

    def watch_parents(self, expected: dict[str, str]) -> None:
        """Records transforms that give one of `expected`'s children another parent than expected (another node
        publishing a frame this node publishes); see foreign_parents()."""
        self._expected_parents = dict(expected)

    def foreign_parents(self) -> dict[str, str]:
        """child -> the other parent seen for a watched frame: from every received transform (tf2_msgs), or from the
        tree as it stands (tf2_ros, where this node's own transforms may hide the other parent between checks)."""
        for child, parent in self._parents().items():
            if parent and self._expected_parents.get(child, parent) != parent:
                self._foreign.setdefault(child, parent)
        return dict(self._foreign)

    def existing_frames(self, names: list[str], wait_s: float) -> list[str]:
        """Those of `names` that are in the TF tree, after giving TF up to wait_s to arrive (latched /tf_static
        comes within discovery time; /tf within a publisher's period)."""
        deadline = time.monotonic() + wait_s
        while True:
            known = self.known_frames()
            found = [name for name in names if name in known]
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)

    def motion(self, fixed_frame: str, before: Any, after: Any) -> Optional[tuple[float, float]]:
        """(metres, degrees) a camera moved between two of its frames (frame_id, stamp_ns), from TF in
        fixed_frame; None when TF cannot say."""
        try:
            start, end = (self.lookup(fixed_frame, frame.frame_id, frame.stamp_ns) for frame in (before, after))
        except TransformUnavailable:
            return None
        relative = np.linalg.inv(start) @ end
        return float(np.linalg.norm(relative[:3, 3])), rotation_angle_deg(relative[:3, :3])

    def destroy(self) -> None:
        """Releases the subscriptions; lookups afterwards raise TransformUnavailable."""
        if self._tf2_listener is not None:
            self._tf2_listener.unregister()
        for subscription in self._subscriptions:
            self._node.destroy_subscription(subscription)
        self._tf2_buffer = self._tf2_listener = self._buffer = None
        self._subscriptions = []
        self.mode = "unavailable (destroyed)"

    def _store(self, message: Any, static: bool) -> None:
        buffer = self._buffer  # read once: destroy() may clear it from another thread meanwhile
        if buffer is None:
            return
        for transform in message.transforms:
            stamp = transform.header.stamp
            translation, rotation = transform.transform.translation, transform.transform.rotation
            # tf2 strips a leading '/' (a ROS 1 habit) from frame ids it receives; do the same so names match.
            parent, child = transform.header.frame_id.lstrip("/"), transform.child_frame_id.lstrip("/")
            if self._expected_parents.get(child, parent) != parent:
                self._foreign.setdefault(child, parent)
            try:
                buffer.set_transform(parent, child, stamp.sec * 1_000_000_000 + stamp.nanosec,
                                           (translation.x, translation.y, translation.z),
                                           (rotation.x, rotation.y, rotation.z, rotation.w), static=static)
            except ValueError as error:
                # One bad transform from some publisher must not drop the good ones in the same message.
                self._node.get_logger().warning(f"ignoring a transform from {'/tf_static' if static else '/tf'}: "
                                                f"{error}", throttle_duration_sec=10.0)
