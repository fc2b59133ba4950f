"""What a window's outputs hold (pipeline.postprocess, ROS-free) and when the node's publishers may send them."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from g2vlm_ros.backends.backend import GeometryResult
from g2vlm_ros.pipeline.frame import Frame
from g2vlm_ros.pipeline.postprocess import OutputPolicy, window_outputs

H, W = 6, 8  # the model's working resolution in these tests


def result(views: int, depth: float = 2.0) -> GeometryResult:
    depth_maps = torch.full((views, H, W), depth)
    depth_maps[:, 0, 0] = -1.0  # behind the camera: invalid
    depth_maps[:, 0, 1] = math.inf
    points = torch.zeros(views, H, W, 3)
    points[..., 2] = depth_maps
    points[:, 0, 1] = math.nan
    poses = torch.eye(4).repeat(views, 1, 1)
    poses[:, 0, 3] = torch.arange(views, dtype=torch.float32)  # view i at x = i
    k = torch.tensor([[4.0, 0.0, 4.0], [0.0, 4.0, 3.0], [0.0, 0.0, 1.0]]).repeat(views, 1, 1)
    confidence = torch.linspace(0, 1, H * W).reshape(1, H, W).repeat(views, 1, 1)
    return GeometryResult(depth=depth_maps, local_points=points, world_points=points.clone(), camera_to_world=poses,
                          intrinsics=k, colors=torch.zeros(views, H, W, 3, dtype=torch.uint8), confidence=confidence)


def frames() -> list[Frame]:
    """Camera-major like a window: a's two keyframes, then b's; b's images are twice the model's size."""
    image = np.zeros((H, W, 3), np.uint8)
    return [Frame("a", "a_opt", 10, image), Frame("a", "a_opt", 20, image),
            Frame("b", "b_opt", 11, np.zeros((2 * H, 2 * W, 3), np.uint8)), Frame("b", "b_opt", 21, image)]


def test_each_cameras_newest_frame_gets_scaled_masked_depth_at_its_own_size():
    window = frames()
    outputs = window_outputs(window, result(4), OutputPolicy(metres_per_unit=0.5), first_camera="a")
    assert [(camera.frame.camera, camera.index) for camera in outputs.cameras] == [("a", 1), ("b", 3)]
    depth = outputs.cameras[0].depth
    assert depth.shape == (H, W) and depth.dtype == np.float32
    assert np.isnan(depth[0, 0]) and np.isnan(depth[0, 1]), "invalid depth is NaN (REP 118), not 0 or inf"
    assert np.allclose(depth[1:], 1.0), "2 model units at 0.5 m per unit"
    assert outputs.metric and np.allclose(outputs.camera_to_world[:, 0, 3], [0.0, 0.5, 1.0, 1.5])
    assert outputs.path == [0, 1] and outputs.newest_stamp_ns == 21


def test_depth_and_intrinsics_follow_the_source_image_size():
    window = frames()
    window[3] = Frame("b", "b_opt", 21, np.zeros((2 * H, 2 * W, 3), np.uint8))
    outputs = window_outputs(window, result(4), OutputPolicy(metres_per_unit=None), first_camera="a")
    camera = outputs.cameras[1]
    assert camera.depth.shape == (2 * H, 2 * W) and camera.confidence.shape == (2 * H, 2 * W)
    assert not outputs.metric
    np.testing.assert_allclose(camera.model_intrinsics[:2, :2], [[8.0, 0.0], [0.0, 8.0]])


def test_the_cloud_drops_invalid_and_unconfident_points_and_is_withheld_without_a_scale():
    window = frames()
    cloud = window_outputs(window, result(4), OutputPolicy(None, confidence_threshold=0.5), "a").cloud
    assert np.isfinite(cloud.points).all() and (cloud.confidence >= 0.5).all()
    assert len(cloud.points) == 4 * int((torch.linspace(0, 1, H * W) >= 0.5).sum())
    strided = window_outputs(window, result(4), OutputPolicy(None, cloud_stride=2), "a").cloud
    assert len(strided.points) == 4 * (H // 2) * (W // 2)  # the NaN point (column 1) is off the stride grid
    withheld = window_outputs(window, result(4), OutputPolicy(None, withhold_geometry=True), "a")
    assert withheld.cloud is None and withheld.withhold_geometry


@pytest.fixture
def lifecycle_node():
    import rclpy
    from rclpy.lifecycle import LifecycleNode

    context = rclpy.Context()
    rclpy.init(context=context)
    node = LifecycleNode("g2vlm_outputs_test", context=context)
    yield node
    node.destroy_node()
    rclpy.try_shutdown(context=context)


def test_output_publishers_send_only_while_active(lifecycle_node):
    """Lifecycle publishers: an inactive node publishes nothing, whatever a window in flight still delivers."""
    import rclpy.publisher
    from rclpy.lifecycle.publisher import LifecyclePublisher
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import Image

    from g2vlm_ros.ros.outputs import FrameSettings, GeometryPublisher
    from g2vlm_ros.ros.tf_output import TfOutput

    node = lifecycle_node
    publisher = GeometryPublisher(node, ["a", "b"], False, QoSProfile(depth=5), TfOutput(node, False))
    everything = publisher._publishers()
    assert everything and all(isinstance(p, LifecyclePublisher) for p in everything)
    sent = []
    real_publish = rclpy.publisher.Publisher.publish  # what LifecyclePublisher calls once it lets a message through

    def record(self, msg):
        sent.append(self.topic_name)
        real_publish(self, msg)

    rclpy.publisher.Publisher.publish = record
    try:
        outputs = window_outputs(frames(), result(4), OutputPolicy(None), "a")
        publisher.publish(outputs, FrameSettings("g2vlm_map"))
        assert sent == [], "published before activation"
        publisher.set_active(True)
        publisher.publish(outputs, FrameSettings("g2vlm_map"))
        assert {"/g2vlm_outputs_test/points", "/g2vlm_outputs_test/a/depth_relative",
                "/g2vlm_outputs_test/b/confidence"} <= set(sent)
        publisher.set_active(False)
        count = len(sent)
        publisher.publish(outputs, FrameSettings("g2vlm_map"))
        for p in publisher._publishers():  # structural: not only the publish path checks, each publisher does
            p.publish(Image() if p.msg_type is Image else p.msg_type())
        assert len(sent) == count, "published after deactivation"
        confidence = publisher.cameras["a"].confidence
        assert isinstance(confidence, LifecyclePublisher) and not confidence.is_activated
    finally:
        rclpy.publisher.Publisher.publish = real_publish
        publisher.destroy()
