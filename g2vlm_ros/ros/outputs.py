"""Turns a GeometryResult for one window into ROS messages and publishes them.

Per camera (under the node's namespace, e.g. /g2vlm/<camera>/...), for its newest frame:
  depth_relative  32FC1, model units, when the window has no metric scale
  depth           32FC1, metres (REP 118, NaN invalid), only when the window has a metric scale
  confidence      32FC1 in [0,1]: the confidence head's, or for checkpoints without one the
                  agreement of the two point heads (diagnostics: confidence_source)
  camera_info     the camera's own CameraInfo, or intrinsics estimated from the model's point map
  pose            PoseStamped camera-to-world in world_frame
world_frame is the window's first view's optical frame (geometry.window_frame).
Per window: points (PointCloud2 of every view in world_frame), poses (PoseArray of every view),
path (nav_msgs/Path of the first camera's frames in time order) and /tf: world_frame ->
<frame_prefix><camera>_optical for each camera's newest frame, plus odom_frame -> world_frame with TF scale.
Per-camera messages carry the source image's stamp and optical frame; window messages the newest stamp.
When a metric scale source has no scale for a window, only depth_relative and camera_info go out:
points, poses and TF are withheld rather than published in unknown units.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from geometry_msgs.msg import PoseArray, PoseStamped
from nav_msgs.msg import Path
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from g2vlm_ros.backends.backend import GeometryResult
from g2vlm_ros.geometry.cloud import voxel_downsample
from g2vlm_ros.geometry.pinhole import resize_nearest, scale_intrinsics
from g2vlm_ros.ros.camera_input import Frame
from g2vlm_ros.ros.conversions import numpy_to_image, pack_point_cloud
from g2vlm_ros.ros.tf_output import TfOutput, pose_from_matrix, transform_from_matrix


@dataclass(frozen=True)
class OutputSettings:
    world_frame: str
    metres_per_unit: Optional[float]  # None: no metric scale, outputs stay relative
    cloud_stride: int
    confidence_threshold: float
    voxel_size: float = 0.0
    withhold_geometry: bool = False  # a metric source without a scale for this window
    odom_frame: str = ""
    odom_from_world: Optional[np.ndarray] = None  # 4x4, with scale_source tf
    frame_prefix: str = "g2vlm/"


def output_settings(config, scale, odom_from_world: Optional[np.ndarray]) -> OutputSettings:
    """A window's output settings from the node's configuration and the window's scale estimate."""
    return OutputSettings(
        world_frame=config.world_frame,
        metres_per_unit=scale.metres_per_unit,
        cloud_stride=config.cloud_stride,
        confidence_threshold=config.confidence_threshold,
        voxel_size=config.voxel_size,
        withhold_geometry=scale.metric_expected and not scale.valid,
        odom_frame=config.odom_frame,
        odom_from_world=odom_from_world,
        frame_prefix=config.frame_prefix,
    )


def optical_frame(camera: str, prefix: str) -> str:
    """TF child frame of a camera's predicted pose: the node's prefix and the camera's name, never the driver's
    frame (which drivers already call <camera>_optical), so that it never gives a robot frame a second parent."""
    return f"{prefix}{camera}_optical"


class CameraPublishers:
    def __init__(self, node: Node, camera: str, metric: bool, qos: QoSProfile):
        self.depth_relative = node.create_publisher(Image, f"~/{camera}/depth_relative", qos)
        # the metres topic exists only when a metric source is configured
        self.depth = node.create_publisher(Image, f"~/{camera}/depth", qos) if metric else None
        self.confidence = None  # created with the first confidence map: checkpoints without one never have it
        self.camera_info = node.create_publisher(CameraInfo, f"~/{camera}/camera_info", qos)
        self.pose = node.create_publisher(PoseStamped, f"~/{camera}/pose", qos)
        self.camera = camera

    def all(self) -> list:
        return [p for p in (self.depth_relative, self.depth, self.confidence, self.camera_info, self.pose) if p]


def pinhole_camera_info(header: Header, intrinsics: np.ndarray, width: int, height: int) -> CameraInfo:
    """CameraInfo for an undistorted pinhole camera with intrinsics K (the model's estimate, or exact ones)."""
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
        self.node, self.qos = node, qos
        self.cameras = {name: CameraPublishers(node, name, metric, qos) for name in cameras}
        self.first_camera = cameras[0]
        self.points = node.create_publisher(PointCloud2, "~/points", qos)
        self.poses = node.create_publisher(PoseArray, "~/poses", qos)
        self.path = node.create_publisher(Path, "~/path", qos)
        self.tf_output = tf_output

    def destroy(self) -> None:
        for publisher in [self.points, self.poses, self.path] + [
                p for camera in self.cameras.values() for p in camera.all()]:
            self.node.destroy_publisher(publisher)
        self.cameras.clear()

    def publish(self, frames: list[Frame], result: GeometryResult, settings: OutputSettings) -> None:
        newest: dict[str, int] = {}
        for index, frame in enumerate(frames):
            if frame.camera not in newest or frame.stamp_ns >= frames[newest[frame.camera]].stamp_ns:
                newest[frame.camera] = index
        scale = settings.metres_per_unit or 1.0
        poses = result.camera_to_world.detach().double().cpu().numpy()
        poses[:, :3, 3] *= scale
        for index in newest.values():
            self._publish_camera(frames[index], result, index, scale, poses[index], settings)
        if settings.withhold_geometry:
            return
        newest_stamp = frames[max(newest.values(), key=lambda i: frames[i].stamp_ns)].header.stamp
        world_header = Header(stamp=newest_stamp, frame_id=settings.world_frame)
        transforms = [
            transform_from_matrix(poses[index], Header(stamp=frames[index].header.stamp, frame_id=settings.world_frame),
                                  optical_frame(frames[index].camera, settings.frame_prefix))
            for index in newest.values()
        ]
        if settings.odom_from_world is not None:
            transforms.append(transform_from_matrix(
                settings.odom_from_world, Header(stamp=newest_stamp, frame_id=settings.odom_frame),
                settings.world_frame))
        self.tf_output.send(transforms)
        self.poses.publish(PoseArray(header=world_header, poses=[pose_from_matrix(pose) for pose in poses]))
        path = sorted((i for i, frame in enumerate(frames) if frame.camera == self.first_camera),
                      key=lambda i: frames[i].stamp_ns)
        self.path.publish(Path(header=world_header, poses=[
            PoseStamped(header=Header(stamp=frames[i].header.stamp, frame_id=settings.world_frame),
                        pose=pose_from_matrix(poses[i])) for i in path]))
        self.points.publish(self._cloud(result, scale, settings, world_header))

    def _publish_camera(self, frame: Frame, result: GeometryResult, index: int, scale: float,
                        camera_to_world: np.ndarray, settings: OutputSettings) -> None:
        publishers = self.cameras[frame.camera]
        height, width = frame.rgb.shape[:2]
        # resampled on the result's device (the GPU for GPU backends); only the final image moves
        depth = result.depth[index].float() * scale
        depth = torch.where(torch.isfinite(depth) & (depth > 0), depth, torch.nan)  # REP 118: invalid is NaN
        depth = resize_nearest(depth, width, height).cpu().numpy()
        metric = settings.metres_per_unit is not None
        (publishers.depth if metric else publishers.depth_relative).publish(
            numpy_to_image(depth, "32FC1", frame.header))
        if result.confidence is not None:
            if publishers.confidence is None:
                publishers.confidence = self.node.create_publisher(Image, f"~/{frame.camera}/confidence", self.qos)
            confidence = resize_nearest(result.confidence[index].float(), width, height).cpu().numpy()
            publishers.confidence.publish(numpy_to_image(confidence, "32FC1", frame.header))
        if frame.camera_info is not None:
            info = copy.deepcopy(frame.camera_info)
            info.header = frame.header
        else:
            k = scale_intrinsics(result.intrinsics[index].double().cpu().numpy(), result.size, (width, height))
            info = pinhole_camera_info(frame.header, k, width, height)
        publishers.camera_info.publish(info)
        if not settings.withhold_geometry:
            publishers.pose.publish(PoseStamped(
                header=Header(stamp=frame.header.stamp, frame_id=settings.world_frame),
                pose=pose_from_matrix(camera_to_world)))

    @staticmethod
    def _cloud(result: GeometryResult, scale: float, settings: OutputSettings, header: Header) -> PointCloud2:
        """Every view's points, selected and downsampled on the result's device; only the cloud moves."""
        stride = settings.cloud_stride
        points = result.world_points[:, ::stride, ::stride].reshape(-1, 3).float() * scale
        colors = result.colors[:, ::stride, ::stride].reshape(-1, 3)
        keep = torch.isfinite(points).all(dim=1)
        confidence = None
        if result.confidence is not None:
            confidence = result.confidence[:, ::stride, ::stride].reshape(-1).float()
            keep &= confidence >= settings.confidence_threshold
            confidence = confidence[keep]
        points, colors = points[keep], colors[keep]
        if settings.voxel_size > 0:
            points, colors, confidence = voxel_downsample(points, colors, confidence, settings.voxel_size)
        return pack_point_cloud(points.cpu().numpy(), colors.cpu().numpy(),
                                None if confidence is None else confidence.cpu().numpy(), header)
