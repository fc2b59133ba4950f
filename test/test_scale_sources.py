"""Metric scale from each source, end to end: a synthetic robot process (images, TF, depth) drives
the node process, which runs the SceneBackend plugin (a perfect up-to-scale model of the synthetic
scene, in units of metres / TRUE_SCALE). Every source must recover TRUE_SCALE within 2 %, metric
depth must then read the scene's true distance, and nothing may be labelled metres before a scale
is known.
"""
from __future__ import annotations

import math
import uuid

import numpy as np
import pytest
from geometry_msgs.msg import PoseArray
from sensor_msgs.msg import Image, PointCloud2

from conftest import wait_until
from g2vlm_interfaces.msg import MetricScale
from g2vlm_ros.ros.conversions import image_to_numpy_float, unpack_point_cloud

TRUE_SCALE, PLANE_DEPTH_M, SPACING_M = 2.5, 2.0, 0.12  # as in test/fixtures/synthetic_scene.py
SCENE_BACKEND = "plugin:scene_backend:SceneBackend"


def scene_env(tf2_msgs_env, **scene) -> dict[str, str]:
    import json

    return {**tf2_msgs_env, "G2VLM_TEST_SCENE": json.dumps(scene)}


def names(count: int) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    return [f"c{index}_{tag}" for index in range(count)]


def valid_scales(messages: list[MetricScale]) -> list[MetricScale]:
    return [msg for msg in messages if msg.valid]


def test_tf_scale_recovers_the_true_scale_and_places_the_map_above_odom(start_node, start_robot, ros_client,
                                                                       tf2_msgs_env):
    cameras = names(1)
    speed = 0.04  # metres per frame at 10 Hz
    start_node(backend=SCENE_BACKEND, cameras=cameras, scale_source="tf", odom_frame="odom", window_size=4,
               keyframe_min_motion_m=0.07, extra_env=scene_env(tf2_msgs_env, speed_m=speed))
    scale = ros_client.collect(MetricScale, "/g2vlm/scale")
    depth = ros_client.collect(Image, f"/g2vlm/{cameras[0]}/depth")
    poses = ros_client.collect(PoseArray, "/g2vlm/poses")
    robot = start_robot(cameras=cameras, rate_hz=10.0, speed_m=speed, echo_parent="g2vlm_map")
    wait_until(lambda: len(valid_scales(scale)) >= 3 and depth and poses, 30, "no metric scale from TF")

    fit = valid_scales(scale)[-1]
    assert fit.source == "tf" and fit.metres_per_unit == pytest.approx(TRUE_SCALE, rel=0.02)
    assert fit.residual_m < 0.01 and fit.samples == 4 and fit.age_s == 0.0
    assert fit.header.frame_id == "g2vlm_map"
    np.testing.assert_allclose(image_to_numpy_float(depth[-1]), PLANE_DEPTH_M, rtol=0.02)
    # three keyframes >= 0.07 m (2 frames) apart by TF, then the present frame: the window spans >= 5 frames
    window = poses[-1].poses
    assert len(window) == 4 and window[-1].position.x - window[0].position.x >= 5 * speed * 0.98
    # map -> odom (REP 105): the map's origin is the first window's first camera position, expressed in odom
    wait_until(lambda: any(e["child"] == "odom" for e in robot.echoed()), 10, "no g2vlm_map -> odom on /tf")
    placed = [e for e in robot.echoed() if e["child"] == "odom"][-1]
    assert placed["parent"] == "g2vlm_map" and placed["rotation_xyzw"][3] == pytest.approx(1.0)
    assert placed["translation"][1] == pytest.approx(0.0, abs=1e-3)  # y: camera 0 has no lateral offset
    frames_travelled = -placed["translation"][0] / speed
    assert abs(frames_travelled - round(frames_travelled)) < 0.03, "the origin must sit on a camera position"


def test_tf_scale_without_motion_publishes_only_relative_outputs(start_node, start_robot, ros_client, tf2_msgs_env):
    cameras = names(1)
    start_node(backend=SCENE_BACKEND, cameras=cameras, scale_source="tf", odom_frame="odom", window_size=3,
               extra_env=scene_env(tf2_msgs_env, speed_m=0.0))
    scale = ros_client.collect(MetricScale, "/g2vlm/scale")
    relative = ros_client.collect(Image, f"/g2vlm/{cameras[0]}/depth_relative")
    metric = ros_client.collect(Image, f"/g2vlm/{cameras[0]}/depth")
    points = ros_client.collect(PointCloud2, "/g2vlm/points")
    poses = ros_client.collect(PoseArray, "/g2vlm/poses")
    start_robot(cameras=cameras, rate_hz=10.0, speed_m=0.0)
    wait_until(lambda: len(scale) >= 3 and relative, 30, "no window processed")
    assert not valid_scales(scale), "a standing robot gives TF no scale to measure"
    assert "not enough motion" in scale[-1].status and math.isnan(scale[-1].metres_per_unit)
    np.testing.assert_allclose(image_to_numpy_float(relative[-1]), PLANE_DEPTH_M / TRUE_SCALE, rtol=1e-5)
    assert not metric and not points and not poses, "unscaled geometry must not be published as metres"


def test_rig_scale_works_without_motion(start_node, start_robot, ros_client, tf2_msgs_env):
    cameras = names(2)
    # one set per window: the second view is the second camera
    start_node(backend=SCENE_BACKEND, cameras=cameras, scale_source="rig", window_size=1,
               extra_env=scene_env(tf2_msgs_env))
    scale = ros_client.collect(MetricScale, "/g2vlm/scale")
    points = ros_client.collect(PointCloud2, "/g2vlm/points")
    poses = ros_client.collect(PoseArray, "/g2vlm/poses")
    start_robot(cameras=cameras, rate_hz=10.0, speed_m=0.0)
    wait_until(lambda: valid_scales(scale) and points and poses, 30, "no metric scale from the rig")
    fit = valid_scales(scale)[-1]
    assert fit.source == "rig" and fit.metres_per_unit == pytest.approx(TRUE_SCALE, rel=0.02)
    # the second camera sits SPACING_M along y in metres; the cloud's wall is PLANE_DEPTH_M away
    second = poses[-1].poses[1].position
    assert (second.x, second.y, second.z) == pytest.approx((0.0, SPACING_M, 0.0), abs=1e-4)
    cloud = unpack_point_cloud(points[-1])
    np.testing.assert_allclose(cloud["z"], PLANE_DEPTH_M, rtol=1e-4)
    assert [field.name for field in points[-1].fields] == ["x", "y", "z", "rgb"], "no confidence: no field"
    topics = dict(ros_client.node.get_topic_names_and_types())
    assert f"/g2vlm/{cameras[0]}/depth" in topics
    assert f"/g2vlm/{cameras[0]}/confidence" not in topics, "a model without confidence must not offer the topic"


def test_depth_topic_scale_is_robust_to_invalid_and_outlier_pixels(start_node, start_robot, ros_client,
                                                                  tf2_msgs_env):
    cameras = names(1)
    start_node(backend=SCENE_BACKEND, cameras=cameras, scale_source="depth_topic",
               scale_depth_topic=f"/{cameras[0]}/depth_metric", extra_env=scene_env(tf2_msgs_env))
    scale = ros_client.collect(MetricScale, "/g2vlm/scale")
    depth = ros_client.collect(Image, f"/g2vlm/{cameras[0]}/depth")
    start_robot(cameras=cameras, rate_hz=10.0, depth=True)
    wait_until(lambda: valid_scales(scale) and depth, 30, "no metric scale from the depth topic")
    fit = valid_scales(scale)[-1]
    assert fit.source == "depth_topic" and fit.metres_per_unit == pytest.approx(TRUE_SCALE, rel=0.02)
    assert fit.samples == 32 * 22  # the 2 NaN rows are left out; the 4 outliers are counted but outvoted
    np.testing.assert_allclose(image_to_numpy_float(depth[-1]), PLANE_DEPTH_M, rtol=0.02)


def test_fixed_scale_is_reported_on_the_scale_topic(start_node, ros_client, tf2_msgs_env):
    from test_node_process import publish_until, rgb_image, stamped

    cameras = names(1)
    start_node(backend=SCENE_BACKEND, cameras=cameras, scale_source="fixed", fixed_scale=TRUE_SCALE,
               extra_env=scene_env(tf2_msgs_env))
    scale = ros_client.collect(MetricScale, "/g2vlm/scale")
    publisher = ros_client.node.create_publisher(Image, f"/{cameras[0]}/image_raw", 10)
    publish_until(ros_client, publisher, lambda: rgb_image((0, 0, 0), stamped(ros_client, "o"), width=64, height=48),
                  scale)
    assert scale[-1].valid and scale[-1].source == "fixed" and scale[-1].metres_per_unit == TRUE_SCALE


