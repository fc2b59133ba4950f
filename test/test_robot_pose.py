"""The robot's base and map -> odom from a window's camera pose and TF (ros/map_outputs.robot_pose), in process:
odometry that reaches TF after its image must not switch ~/odom and TF to the camera frames mid-run."""
from __future__ import annotations

import numpy as np
import pytest

from g2vlm_ros.geometry.tf_buffer import TransformBuffer
from g2vlm_ros.pipeline.frame import Frame
from g2vlm_ros.ros.map_outputs import MapFrames, RobotPose, odometry_child, robot_pose

SECOND = 1_000_000_000
MOUNT = np.array([0.2, 0.0, 0.5])  # camera in base_link (rotation left out: the frames' axes agree here)


def translation(x: float, y: float = 0.0, z: float = 0.0) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = (x, y, z)
    return matrix


@pytest.fixture
def tf():
    buffer = TransformBuffer()
    buffer.set_transform("base_link", "camera_optical", 0, MOUNT, (0, 0, 0, 1), static=True)
    for second in (1, 2):  # the robot drives 1 m along odom x per second
        buffer.set_transform("odom", "base_link", second * SECOND, (float(second), 0, 0), (0, 0, 0, 1))
    return buffer


def frame(stamp_ns: int) -> Frame:
    return Frame("camera", "camera_optical", stamp_ns, np.zeros((4, 4, 3), np.uint8))


def test_the_base_and_map_to_odom_come_from_tf_at_the_frame_s_stamp(tf):
    camera_to_map = translation(5.2, 0.0, 0.5)  # the map says the camera is at x = 5.2: the base is at x = 5
    robot = robot_pose(tf, "odom", "base_link", frame(2 * SECOND), camera_to_map)
    np.testing.assert_allclose(robot.map_from_base, translation(5.0), atol=1e-12)
    np.testing.assert_allclose(robot.map_from_odom, translation(3.0), atol=1e-12)  # odom's base is at x = 2


def test_odometry_not_yet_in_tf_keeps_the_previous_map_to_odom_once_the_robot_was_known(tf):
    late = frame(3 * SECOND)  # odom -> base_link at 3 s has not arrived
    camera_to_map = translation(6.2, 0.0, 0.5)
    assert robot_pose(tf, "odom", "base_link", late, camera_to_map) is None, "never known: the camera frames"
    previous = robot_pose(tf, "odom", "base_link", frame(2 * SECOND), translation(5.2, 0.0, 0.5))
    robot = robot_pose(tf, "odom", "base_link", late, camera_to_map, previous=previous)
    np.testing.assert_allclose(robot.map_from_base, translation(6.0), atol=1e-12)  # through the mount
    np.testing.assert_allclose(robot.map_from_odom, previous.map_from_odom)


def test_without_the_camera_s_mount_the_base_is_unknown(tf):
    previous = robot_pose(tf, "odom", "base_link", frame(2 * SECOND), translation(5.2, 0.0, 0.5))
    unmounted = Frame("other", "other_optical", 2 * SECOND, np.zeros((4, 4, 3), np.uint8))
    assert robot_pose(tf, "odom", "base_link", unmounted, np.eye(4), previous=previous) is None
    assert robot_pose(None, "odom", "base_link", frame(2 * SECOND), np.eye(4), previous=previous) is None


def test_with_robot_odometry_configured_odom_waits_for_the_robot_instead_of_using_the_camera_frame():
    """~/odom's child frame never changes in a run: with robot odometry configured it is base_link or withheld
    (diagnostics say why); without, it is the camera's optical frame."""
    frames = MapFrames("g2vlm_map", "g2vlm/front_optical", "odom", "base_link")
    known = RobotPose(np.eye(4), np.eye(4))
    child, said = odometry_child(None, None, True, frames)
    assert child is None and said.startswith("withheld: waiting for TF odom -> base_link")
    assert odometry_child(known, None, True, frames) == ("base_link", "base_link")
    child, said = odometry_child(None, known, True, frames)
    assert child is None and "camera mount" in said
    assert odometry_child(None, None, False, frames) == ("g2vlm/front_optical", "g2vlm/front_optical")
