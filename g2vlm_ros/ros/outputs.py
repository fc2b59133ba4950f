"""Turns a GeometryResult for one window into ROS messages and publishes them.

Per camera (under the node's namespace, e.g. /g2vlm/<camera>/...):
  depth_relative  32FC1, model units, when no metric scale is known
  depth           32FC1, metres (REP 118), only with a metric scale
  confidence      32FC1 in [0,1], only when the model predicts confidence
  camera_info     the camera's own CameraInfo, or intrinsics estimated by the model
  pose            PoseStamped camera-to-world in world_frame
Shared: points (PointCloud2 in world_frame) and /tf (world_frame -> optical frame).
Every per-camera message carries the source image's stamp and optical frame.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from g2vlm_ros.geometry.pinhole import resize_nearest, scale_intrinsics
from g2vlm_ros.ros.camera_input import Frame
from g2vlm_ros.ros.conversions import numpy_to_image, pack_point_cloud
from g2vlm_ros.ros.tf_output import TfOutput, pose_from_matrix, transform_from_matrix
from g2vlm_ros.runtime.backend import GeometryResult


@dataclass(frozen=True)
class OutputSettings:
    world_frame: str
    metres_per_unit: Optional[float]  # None: no metric scale, outputs stay relative
    cloud_stride: int
    confidence_threshold: float


def stamp_key(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class CameraPublishers:
    def __init__(self, node: Node, camera: str, metric: bool, qos: QoSProfile):
        depth_topic = f"~/{camera}/depth" if metric else f"~/{camera}/depth_relative"
        self.depth = node.create_publisher(Image, depth_topic, qos)
        self.confidence = node.create_publisher(Image, f"~/{camera}/confidence", qos)
        self.camera_info = node.create_publisher(CameraInfo, f"~/{camera}/camera_info", qos)
        self.pose = node.create_publisher(PoseStamped, f"~/{camera}/pose", qos)


def estimated_camera_info(header: Header, intrinsics: np.ndarray, width: int, height: int) -> CameraInfo:
    """CameraInfo for an undistorted pinhole camera with intrinsics K (from the model)."""
    k = intrinsics.astype(np.float64)
    info = CameraInfo(header=header, width=width, height=height, distortion_model="plumb_bob")
    info.d = [0.0] * 5
    info.k = k.reshape(-1).tolist()
    info.r = np.eye(3).reshape(-1).tolist()
    info.p = np.hstack([k, np.zeros((3, 1))]).reshape(-1).tolist()
    return info


class GeometryPublisher:
    """Owns the output publishers and converts results to messages."""

    def __init__(self, node: Node, cameras: list[str], metric: bool, qos: QoSProfile, tf_output: TfOutput):
        self.cameras = {name: CameraPublishers(node, name, metric, qos) for name in cameras}
        self.points = node.create_publisher(PointCloud2, "~/points", qos)
        self.tf_output = tf_output

    def publish(self, frames: list[Frame], result: GeometryResult, settings: OutputSettings) -> None:
        """Publishes the newest frame of each camera in the window (older keyframes were published before)."""
        newest: dict[str, int] = {}
        for index, frame in enumerate(frames):
            previous = newest.get(frame.camera)
            if previous is None or stamp_key(frame.header.stamp) >= stamp_key(frames[previous].header.stamp):
                newest[frame.camera] = index
        scale = settings.metres_per_unit or 1.0
        poses = result.camera_to_world.detach().double().cpu().numpy()
        transforms, cloud_parts = [], []
        for index in newest.values():
            frame = frames[index]
            camera_to_world = poses[index].copy()
            camera_to_world[:3, 3] *= scale
            self._publish_camera(frame, result, index, scale, camera_to_world, settings)
            world_header = Header(stamp=frame.header.stamp, frame_id=settings.world_frame)
            transforms.append(transform_from_matrix(camera_to_world, world_header, frame.header.frame_id))
            cloud_parts.append(self._cloud_part(result, index, scale, settings))
        self.tf_output.send(transforms)
        newest_stamp = max((frames[i].header.stamp for i in newest.values()), key=stamp_key)
        points, colors, confidence = (
            torch.cat(part).cpu().numpy() if part[0] is not None else None for part in zip(*cloud_parts, strict=True)
        )
        self.points.publish(pack_point_cloud(
            points, colors, confidence, Header(stamp=newest_stamp, frame_id=settings.world_frame)))

    def _publish_camera(self, frame: Frame, result: GeometryResult, index: int, scale: float,
                        camera_to_world: np.ndarray, settings: OutputSettings) -> None:
        publishers = self.cameras[frame.camera]
        height, width = frame.rgb.shape[:2]
        # resampled on the result's device (the GPU for GPU backends); only the final image moves
        depth = result.depth[index].float() * scale
        depth = torch.where(torch.isfinite(depth) & (depth > 0), depth, torch.nan)  # REP 118: invalid is NaN
        depth = resize_nearest(depth, width, height).cpu().numpy()
        publishers.depth.publish(numpy_to_image(depth, "32FC1", frame.header))
        if result.confidence is not None:
            confidence = resize_nearest(result.confidence[index].float(), width, height).cpu().numpy()
            publishers.confidence.publish(numpy_to_image(confidence, "32FC1", frame.header))
        if frame.camera_info is not None:
            info = copy.deepcopy(frame.camera_info)
            info.header = frame.header
        else:
            k = scale_intrinsics(result.intrinsics[index].double().cpu().numpy(), result.size, (width, height))
            info = estimated_camera_info(frame.header, k, width, height)
        publishers.camera_info.publish(info)
        publishers.pose.publish(PoseStamped(
            header=Header(stamp=frame.header.stamp, frame_id=settings.world_frame),
            pose=pose_from_matrix(camera_to_world)))

    @staticmethod
    def _cloud_part(result: GeometryResult, index: int, scale: float, settings: OutputSettings):
        """One view's cloud points, colours and confidence, selected on the result's device."""
        stride = settings.cloud_stride
        points = result.world_points[index, ::stride, ::stride].reshape(-1, 3).float() * scale
        colors = result.colors[index, ::stride, ::stride].reshape(-1, 3)
        keep = torch.isfinite(points).all(dim=1)
        confidence = None
        if result.confidence is not None:
            confidence = result.confidence[index, ::stride, ::stride].reshape(-1).float()
            keep &= confidence >= settings.confidence_threshold
            confidence = confidence[keep]
        return points[keep], colors[keep], confidence
