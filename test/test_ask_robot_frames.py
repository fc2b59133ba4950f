"""Acceptance across processes: the node (perfect-geometry SceneBackend, metric scale) and a synthetic robot's TF
(odom -> base_link moving, base_link -> camera), asked in base_link and odom: depth and distance of known pixels
come back as the scene's exact geometry expressed through TF. One node process for the module."""
from __future__ import annotations

import json
import math
import uuid

import numpy as np
import pytest
from sensor_msgs.msg import Image

from conftest import wait_until
from g2vlm_interfaces.srv import Ask
from test_scale_sources import PLANE_DEPTH_M, SCENE_BACKEND, TRUE_SCALE, scene_env

CAMERA = f"c0_{uuid.uuid4().hex[:6]}"
FOCAL_PX, WIDTH, HEIGHT = 50.0, 64, 48  # as in test/fixtures/synthetic_scene.py
PIXEL = (10.0, 40.0)
SPEED_M = 0.01  # per frame


@pytest.fixture(scope="module")
def asked(start_module_node, start_module_robot, tf2_msgs_env):
    from conftest import RosClient

    client = RosClient()
    # the scene's geometry and the robot's odometry move alike: windows span several frames
    start_module_node(backend=SCENE_BACKEND, cameras=[CAMERA], scale_source="fixed", fixed_scale=TRUE_SCALE,
                      odom_frame="odom", extra_env=scene_env(tf2_msgs_env, speed_m=SPEED_M))
    depth = client.collect(Image, f"/g2vlm/{CAMERA}/depth")
    start_module_robot(cameras=[CAMERA], rate_hz=10.0, speed_m=SPEED_M)
    wait_until(lambda: depth, 30, "no metric window")

    def ask(question: str, target_frame: str = "") -> Ask.Response:
        return client.call(Ask, "/g2vlm/ask", Ask.Request(question=question, target_frame=target_frame))

    yield ask
    client.close()


def expected_point() -> np.ndarray:
    """The wall point seen at PIXEL, in the camera's frame (which the robot mounts at base_link's origin with
    identity rotation, so it is also the point in base_link)."""
    x, y = PIXEL
    return np.array([(x - (WIDTH - 1) / 2) / FOCAL_PX * PLANE_DEPTH_M, (y - (HEIGHT - 1) / 2) / FOCAL_PX *
                     PLANE_DEPTH_M, PLANE_DEPTH_M])


def test_depth_of_a_pixel_in_base_link_is_the_scenes_point_through_tf(asked):
    response = asked(json.dumps({"form": "depth", "pixels": [list(PIXEL)]}), target_frame="base_link")
    assert response.success, response.error
    assert response.form == "depth" and response.value_source == "measured" and response.unit == "m"
    assert response.frame_id == "base_link" and response.value == pytest.approx(PLANE_DEPTH_M, rel=1e-3)
    point = response.points[0]
    np.testing.assert_allclose([point.x, point.y, point.z], expected_point(), atol=2e-3)
    assert 0.0 <= response.window_age_s < 30.0


def test_distance_in_odom_adds_the_robots_position(asked):
    response = asked(json.dumps({"form": "distance", "pixels": [list(PIXEL)], "target_frame": "odom"}))
    assert response.success, response.error
    assert response.frame_id == "odom"
    assert response.value == pytest.approx(float(np.linalg.norm(expected_point())), rel=1e-3)
    point = response.points[0]
    # the robot drives along odom x at 0.01 m per frame: y and z are fixed, x is the point's plus the base's
    assert (point.y, point.z) == pytest.approx(tuple(expected_point()[1:]), abs=2e-3)
    travelled = point.x - expected_point()[0]
    assert travelled >= 0 and abs(travelled / 0.01 - round(travelled / 0.01)) < 0.05


def test_an_unknown_target_frame_is_refused_with_tfs_reason(asked):
    response = asked("What is the depth at (10, 40)?", target_frame="map")
    assert not response.success and "'map'" in response.error and math.isnan(response.value)
