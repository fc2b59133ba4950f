"""Answers in the robot's frames: the RobotFrame the node builds for a question from TF (a numpy
TransformBuffer filled like /tf) and an IMU history: target_frame transforms, "up" from TF, from the
IMU, and the refusals (no metric scale, unreachable frames), each checked against hand-computed geometry."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from g2vlm_ros.geometry.rotations import matrix_to_quaternion_xyzw
from g2vlm_ros.geometry.tf_buffer import TransformBuffer
from g2vlm_ros.reasoning.question import QuestionError
from g2vlm_ros.ros.robot_frames import ImuHistory, ImuSample, RobotFrames, up_from_acceleration

SECOND = 1_000_000_000
CAMERA_HEIGHT_M = 0.5
# REP 103: the optical frame looks along base x; its x is base -y and its y is base -z
BASE_R_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def pitch_down(degrees: float) -> np.ndarray:
    """Rotation about base y that tilts the camera's view (base x) towards the floor."""
    a = math.radians(degrees)
    return np.array([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])


def robot_tf(pitch_deg: float = 0.0, speed_m_per_s: float = 1.0) -> TransformBuffer:
    """odom -> base_link moving along x at speed (stamps 1..3 s), base_link -> cam_optical (pitched), imu_link."""
    buffer = TransformBuffer(cache_time_s=30.0)
    for seconds in (1, 2, 3):
        buffer.set_transform("odom", "base_link", seconds * SECOND, (speed_m_per_s * seconds, 0.0, 0.0),
                             (0.0, 0.0, 0.0, 1.0))
    rotation = pitch_down(pitch_deg) @ BASE_R_OPTICAL
    buffer.set_transform("base_link", "cam_optical", 0, (0.2, 0.0, CAMERA_HEIGHT_M),
                         matrix_to_quaternion_xyzw(rotation), static=True)
    # an IMU mounted upside down and turned: its frame is not the camera's, TF must be used
    buffer.set_transform("base_link", "imu_link", 0, (0.0, 0.0, 0.1), (1.0, 0.0, 0.0, 0.0), static=True)
    return buffer


def snapshot(stamps_s=(2,), metric: bool = True, frame_id: str = "cam_optical"):
    frames = [SimpleNamespace(camera="front", frame_id=frame_id, stamp_ns=int(s * SECOND)) for s in stamps_s]
    scale = SimpleNamespace(valid=metric, status="" if metric else "not enough motion")
    return SimpleNamespace(window=SimpleNamespace(frames=frames), scale=scale)


def frames_for(buffer: TransformBuffer, odom: str = "odom", base: str = "base_link", imu=None) -> RobotFrames:
    return RobotFrames(buffer.lookup, "g2vlm_world", odom, base, imu, imu_max_age_s=0.5)


def test_points_reach_base_link_through_the_camera_mount():
    frame, note = frames_for(robot_tf()).frame_for(snapshot(), "base_link")
    assert frame.name == "base_link"
    point_in_window = np.array([0.0, 0.0, 2.0, 1.0])  # 2 m straight ahead of the camera
    np.testing.assert_allclose(frame.window_to_target @ point_in_window, [2.2, 0.0, CAMERA_HEIGHT_M, 1.0],
                               atol=1e-9)
    assert frame.up_source == "tf" and "odom" in note
    np.testing.assert_allclose(frame.up_in_window, [0.0, -1.0, 0.0], atol=1e-9)  # up is the image's -y


def test_up_follows_the_camera_pitch():
    frame, _ = frames_for(robot_tf(pitch_deg=10.0)).frame_for(snapshot(), "")
    assert frame.window_to_target is None and frame.name == "g2vlm_world"
    # pitched down by 10 degrees, world up leans towards the camera's -z (backwards) by 10 degrees
    expected = np.array([0.0, -math.cos(math.radians(10)), -math.sin(math.radians(10))])
    np.testing.assert_allclose(frame.up_in_window, expected, atol=1e-9)


def test_a_moving_target_is_taken_at_the_windows_newest_stamp():
    # the window's first view at 1 s, its newest at 3 s: the robot drove 2 m since, so a point 2 m ahead of the
    # first view is now 0.2 m ahead of base_link (the camera sits 0.2 m in front of the base)
    frame, _ = frames_for(robot_tf()).frame_for(snapshot(stamps_s=(1, 3)), "base_link")
    np.testing.assert_allclose(frame.window_to_target @ [0.0, 0.0, 2.0, 1.0], [0.2, 0.0, CAMERA_HEIGHT_M, 1.0],
                               atol=1e-9)
    fixed, _ = frames_for(robot_tf()).frame_for(snapshot(stamps_s=(1, 3)), "odom")
    np.testing.assert_allclose(fixed.window_to_target @ [0.0, 0.0, 2.0, 1.0], [3.2, 0.0, CAMERA_HEIGHT_M, 1.0],
                               atol=1e-9)


def test_a_target_frame_without_metric_scale_is_refused_with_the_reason():
    with pytest.raises(QuestionError, match="metric scale.*not enough motion"):
        frames_for(robot_tf()).frame_for(snapshot(metric=False), "base_link")
    frame, _ = frames_for(robot_tf()).frame_for(snapshot(metric=False), "")  # the window's own frame: fine
    assert frame.window_to_target is None and frame.up_source == "tf"


def test_an_unreachable_target_frame_is_refused_with_tfs_reason():
    with pytest.raises(QuestionError, match="'map'.*does not exist"):
        frames_for(robot_tf()).frame_for(snapshot(), "map")
    with pytest.raises(QuestionError, match="no frame_id"):
        frames_for(robot_tf()).frame_for(snapshot(frame_id=""), "base_link")
    with pytest.raises(QuestionError, match="extrapolation"):  # the window is older than TF's history
        frames_for(robot_tf()).frame_for(snapshot(stamps_s=(0.5, 3)), "base_link")


def test_base_frame_gives_up_when_odom_is_absent():
    buffer = TransformBuffer()
    buffer.set_transform("base_link", "cam_optical", 0, (0.0, 0.0, 0.5),
                         matrix_to_quaternion_xyzw(BASE_R_OPTICAL), static=True)
    frame, note = frames_for(buffer).frame_for(snapshot(), "")
    assert frame.up_source == "tf" and "base_link" in note
    np.testing.assert_allclose(frame.up_in_window, [0.0, -1.0, 0.0], atol=1e-9)


def imu_with(acceleration, stamp_s: float = 2.0, frame_id: str = "imu_link") -> ImuHistory:
    history = ImuHistory()
    for offset in (-0.02, 0.0, 0.02):
        history.add(ImuSample(int((stamp_s + offset) * SECOND), frame_id, np.asarray(acceleration, float)))
    return history


def test_the_imu_gives_up_when_tf_has_no_gravity_frame():
    # the IMU is mounted upside down (180 degrees about x): at rest it measures gravity's reaction as -z
    imu = imu_with([0.0, 0.0, -9.81])
    frame, note = frames_for(robot_tf(pitch_deg=10.0), odom="", base="", imu=imu).frame_for(snapshot(), "")
    assert frame.up_source == "imu" and "3 IMU messages" in note
    expected = np.array([0.0, -math.cos(math.radians(10)), -math.sin(math.radians(10))])
    np.testing.assert_allclose(frame.up_in_window, expected, atol=1e-9)


@pytest.mark.parametrize("imu, reason", [
    (imu_with([0.0, 0.0, -14.0]), "robot accelerates"),
    (imu_with([0.0, 0.0, -9.81], stamp_s=5.0), "no IMU message within"),
    (imu_with([0.0, 0.0, -9.81], frame_id="imu_elsewhere"), "not connected"),
    (None, "no imu_topic"),
])
def test_without_tf_or_a_usable_imu_there_is_no_up_and_the_note_says_why(imu, reason):
    frame, note = frames_for(robot_tf(), odom="", base="", imu=imu).frame_for(snapshot(), "")
    assert frame.up_in_window is None and frame.up_source == "none"
    assert reason in note


def test_up_from_acceleration_checks_the_magnitude():
    up, _ = up_from_acceleration([0.0, 9.0, 0.0])
    np.testing.assert_allclose(up, [0.0, 1.0, 0.0])
    assert up_from_acceleration([0.0, 0.0, 0.0])[0] is None
    assert up_from_acceleration([math.nan, 0.0, 9.8])[0] is None
