"""Broadcasting world -> camera transforms on /tf, with or without tf2 packages installed.

Preference order: tf2_ros.TransformBroadcaster (a real ROS install), a plain /tf publisher of
tf2_msgs/TFMessage (tf2_msgs present without tf2_ros), and otherwise no TF at all. The last case
happens only in pip-only environments (tf2_msgs is not on PyPI); poses are then still available
as PoseStamped topics, and the node says once, at start-up, that TF is off and why.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
from geometry_msgs.msg import Pose, TransformStamped
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header

from g2vlm_ros.geometry.rotations import matrix_to_quaternion_xyzw


def pose_from_matrix(camera_to_world: np.ndarray) -> Pose:
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in camera_to_world[:3, 3])
    qx, qy, qz, qw = matrix_to_quaternion_xyzw(camera_to_world[:3, :3])
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = qx, qy, qz, qw
    return pose


def transform_from_matrix(camera_to_world: np.ndarray, header: Header, child_frame_id: str) -> TransformStamped:
    pose = pose_from_matrix(camera_to_world)
    transform = TransformStamped()
    transform.header = header
    transform.child_frame_id = child_frame_id
    transform.transform.translation.x = pose.position.x
    transform.transform.translation.y = pose.position.y
    transform.transform.translation.z = pose.position.z
    transform.transform.rotation = pose.orientation
    return transform


class TfOutput:
    """Sends TransformStamped lists to /tf through whatever the environment provides."""

    def __init__(self, node: Node, enabled: bool):
        self.mode = "disabled by parameter"
        self._send = None
        if not enabled:
            return
        try:
            from tf2_ros import TransformBroadcaster

            broadcaster = TransformBroadcaster(node)
            self._send = broadcaster.sendTransform
            self.mode = "tf2_ros"
        except ImportError:
            try:
                from tf2_msgs.msg import TFMessage

                qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.VOLATILE)
                publisher = node.create_publisher(TFMessage, "/tf", qos)
                self._send = lambda transforms: publisher.publish(TFMessage(transforms=list(transforms)))
                self.mode = "tf2_msgs"
            except ImportError:
                self.mode = "unavailable (neither tf2_ros nor tf2_msgs is installed; poses are on PoseStamped topics)"

    @property
    def active(self) -> bool:
        return self._send is not None

    def send(self, transforms: Sequence[TransformStamped]) -> Optional[int]:
        if self._send is None or not transforms:
            return None
        self._send(list(transforms))
        return len(transforms)
