"""Acceptance of the continuous world, across processes: a synthetic robot (test/fixtures/synthetic_robot.py:
images, odom -> base_link, the camera's mount) walks past a wall; the node runs the perfect-geometry plugin
(test/fixtures/scene_backend.py) with scale_source tf, chains its overlapping windows into one metric map and
must report the robot where it truly is: ~/odom and map -> odom within 1 cm of the truth over the whole walk.
One node and one robot serve every test of the module (a node start costs seconds)."""
from __future__ import annotations

import math
import uuid

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import OccupancyGrid, Odometry, Path
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2

from conftest import wait_until
from g2vlm_interfaces.srv import SaveMap, SaveTrajectory

SPEED_M = 0.04  # metres per frame at 10 Hz, along odom x; the camera's optical axes are odom's (synthetic_scene)
TOLERANCE_M = 0.01
SCENE_BACKEND = "plugin:scene_backend:SceneBackend"


def stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


@pytest.fixture(scope="module")
def walk(start_module_node, start_module_robot, ros_client, tf2_msgs_env):
    import json

    camera = f"c0_{uuid.uuid4().hex[:6]}"
    node = start_module_node(backend=SCENE_BACKEND, cameras=[camera], scale_source="tf", odom_frame="odom",
                             base_frame="base_link", window_size=4, map_stride=2, map_publish_period_s=0.5,
                             extra_env={**tf2_msgs_env, "G2VLM_TEST_SCENE": json.dumps({"speed_m": SPEED_M})})
    odometry = ros_client.collect(Odometry, "/g2vlm/odom")
    paths = ros_client.collect(Path, "/g2vlm/path")
    diagnostics = ros_client.collect(DiagnosticArray, "/diagnostics")
    robot = start_module_robot(cameras=[camera], rate_hz=10.0, speed_m=SPEED_M, echo_parent="g2vlm_map",
                               echo_frames=True)
    wait_until(lambda: len(odometry) >= 30 and paths, 60, "the walk produced too little odometry")
    frames = {entry["stamp_ns"]: entry["frame"] for entry in robot.echoed() if "frame" in entry}
    return {"node": node, "camera": camera, "odometry": list(odometry), "paths": list(paths), "robot": robot,
            "frames": frames, "diagnostics": diagnostics}


def first_keyframe(walk) -> int:
    """The frame index of the map's origin: the oldest keyframe of the trajectory (the first window's first view)."""
    origin = walk["paths"][-1].poses[0]
    position = origin.pose.position
    assert (position.x, position.y, position.z) == pytest.approx((0, 0, 0), abs=1e-6), "the map starts at its origin"
    return walk["frames"][stamp_ns(origin.header.stamp)]


def test_odometry_follows_the_true_walk_within_a_centimetre(walk):
    origin = first_keyframe(walk)
    errors = []
    for message in walk["odometry"]:
        assert message.header.frame_id == "g2vlm_map" and message.child_frame_id == "base_link"
        frame = walk["frames"][stamp_ns(message.header.stamp)]
        position, q = message.pose.pose.position, message.pose.pose.orientation
        # the base sits where camera 0 is (no mount offset); the map's axes are the camera's, i.e. odom's
        errors.append(math.dist((position.x, position.y, position.z), (SPEED_M * (frame - origin), 0.0, 0.0)))
        assert abs(q.w) == pytest.approx(1.0, abs=1e-4), "the walk never turns"
    travelled = SPEED_M * (walk["frames"][stamp_ns(walk["odometry"][-1].header.stamp)] - origin)
    assert travelled > 1.0, f"the walk must be long enough to drift ({travelled:.2f} m)"
    assert max(errors) < TOLERANCE_M, f"odometry up to {max(errors) * 100:.2f} cm off the truth"
    covariance = np.array(walk["odometry"][-1].pose.covariance).reshape(6, 6)
    assert np.all(np.diag(covariance) > 0) and math.sqrt(covariance[0, 0]) < TOLERANCE_M


def test_map_to_odom_is_the_truth_over_the_whole_walk(walk):
    origin = first_keyframe(walk)
    transforms = [entry for entry in walk["robot"].echoed() if entry.get("parent") == "g2vlm_map"]
    assert transforms and {entry["child"] for entry in transforms} == {"odom"}, (
        "with the robot's odometry, the map parents odom only (REP 105), not the node's camera frames")
    for entry in transforms:  # map_T_odom = inverse(odom_T_camera at the map's origin): -x of the first keyframe
        assert math.dist(entry["translation"], (-SPEED_M * origin, 0.0, 0.0)) < TOLERANCE_M
        assert abs(entry["rotation_xyzw"][3]) == pytest.approx(1.0, abs=1e-4)


def test_the_path_is_the_chained_keyframe_trajectory_and_diagnostics_say_so(walk):
    origin = first_keyframe(walk)
    poses = walk["paths"][-1].poses
    assert len(poses) >= 10 and walk["paths"][-1].header.frame_id == "g2vlm_map"
    for pose in poses:
        frame = walk["frames"][stamp_ns(pose.header.stamp)]
        position = pose.pose.position
        assert math.dist((position.x, position.y, position.z), (SPEED_M * (frame - origin), 0, 0)) < TOLERANCE_M

    def map_status() -> list[dict[str, str]]:
        return [{value.key: value.value for value in status.values}
                for message in list(walk["diagnostics"]) for status in message.status if status.name == "g2vlm: map"]

    # diagnostics come once a second, the path twice: the status may lag the path by a few keyframes
    wait_until(lambda: map_status() and int(map_status()[-1]["keyframes"]) >= len(poses), 20,
               f"the map status never counted the path's {len(poses)} keyframes")
    status = map_status()[-1]
    assert status["units"] == "metres" and status["segments"] == "1" and status["last_status"] == "chained"
    assert status["odometry_child_frame"] == "base_link"  # the robot's convention, as ~/odom says


def test_map_and_grid_reach_a_late_subscriber(walk, ros_client):
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    clouds = ros_client.collect(PointCloud2, "/g2vlm/map", latched)
    grids = ros_client.collect(OccupancyGrid, "/g2vlm/map_grid", latched)
    wait_until(lambda: clouds and grids, 10, "the map is not latched for late subscribers")
    assert clouds[0].header.frame_id == "g2vlm_map" and clouds[0].width > 0
    assert grids[0].header.frame_id == "g2vlm_map" and grids[0].info.width > 0


def test_save_services_write_the_map_and_the_trajectory(walk, ros_client, tmp_path):
    trajectory = ros_client.call(SaveTrajectory, "/g2vlm/save_trajectory",
                                 SaveTrajectory.Request(path=str(tmp_path / "walk.tum")))
    assert trajectory.success, trajectory.message
    with open(trajectory.path) as lines:
        rows = [line.split() for line in lines if not line.startswith("#")]
    origin = first_keyframe(walk)
    frames = {entry["stamp_ns"]: entry["frame"] for entry in walk["robot"].echoed() if "frame" in entry}  # up to now
    assert len(rows) >= 10 and all(len(row) == 8 for row in rows)
    for row in rows:  # "seconds.nanoseconds tx ty tz qx qy qz qw": the stamp to the nanosecond, a frame's
        seconds, nanoseconds = row[0].split(".")
        frame = frames[int(seconds) * 1_000_000_000 + int(nanoseconds)]
        assert math.dist([float(v) for v in row[1:4]], (SPEED_M * (frame - origin), 0, 0)) < TOLERANCE_M
    saved = ros_client.call(SaveMap, "/g2vlm/save_map", SaveMap.Request(path=str(tmp_path / "room.pcd")))
    assert saved.success and (tmp_path / "room.pcd").read_bytes().startswith(b"# .PCD"), saved.message
    refused = ros_client.call(SaveMap, "/g2vlm/save_map", SaveMap.Request(path=str(tmp_path / "room.txt")))
    assert not refused.success and ".ply or .pcd" in refused.message
    assert walk["node"].alive()
