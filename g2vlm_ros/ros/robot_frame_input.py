"""The ROS side of robot frames for /g2vlm/ask: TF lookups and the optional IMU subscription (imu_topic)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
from sensor_msgs.msg import Imu

from g2vlm_ros.ros.robot_frames import ImuHistory, ImuSample, RobotFrames
from g2vlm_ros.ros.tf_input import TfInput


class RobotFrameInput:
    """Created at configure with the node's TfInput; `frames` is what the ask handler uses."""

    def __init__(self, node, config, tf_input: TfInput, qos, callback_group: Optional[Any] = None):
        self._node = node
        self.imu: Optional[ImuHistory] = ImuHistory() if config.imu_topic else None
        self._subscription = None
        if self.imu is not None:
            self._subscription = node.create_subscription(Imu, config.imu_topic, self._on_imu, qos,
                                                          callback_group=callback_group)
        self.frames = RobotFrames(tf_input.lookup, config.map_frame, config.odom_frame, config.base_frame,
                                  self.imu, config.imu_max_age_s)

    def _on_imu(self, message: Imu) -> None:
        acceleration = message.linear_acceleration
        stamp = message.header.stamp
        stamp_ns = stamp.sec * 1_000_000_000 + stamp.nanosec
        if stamp_ns == 0:  # an unstamped IMU: its arrival is the best time there is
            stamp_ns = self._node.get_clock().now().nanoseconds
        self.imu.add(ImuSample(stamp_ns, message.header.frame_id.lstrip("/"),
                               np.array([acceleration.x, acceleration.y, acceleration.z], dtype=np.float64)))

    def destroy(self) -> None:
        if self._subscription is not None:
            self._node.destroy_subscription(self._subscription)
            self._subscription = None
