"""Publishes a window's outputs (pipeline.postprocess.WindowOutputs) as ROS messages; builds messages only.

Per camera (under the node's namespace, e.g. /g2vlm/<camera>/...), for its newest frame:
  depth_relative  32FC1, model units, when the window has no metric scale
  depth           32FC1, metres (REP 118, NaN invalid), only when the window has a metric scale
  confidence      32FC1 in [0,1]: the confidence head's, or for checkpoints without one the
                  agreement of the two point heads (diagnostics: confidence_source)
  camera_info     the camera's own CameraInfo, or intrinsics estimated from the model's point map
  pose            PoseStamped camera-to-map in map_frame
map_frame is the persistent map's frame (pipeline.mapping_stage); depth is in map units (metres when metric).
Per window: points (PointCloud2 of every view in map_frame), poses (PoseArray of every view) and /tf:
map_frame -> odom_frame when the robot's odometry is known (the SLAM convention, map_outputs.RobotPose), else
map_frame -> <frame_prefix><camera>_optical for each camera's newest frame. The map itself (odometry, path,
cloud, grid) goes out through map_outputs.MapPublisher.
Per-camera messages carry the source image's stamp and optical frame; window messages the newest stamp.
When a window has no known units (a metric scale source without a scale, or the map could not place it),
only depth_relative and camera_info go out: points, poses and TF are withheld rather than published in
unknown units.
All publishers are lifecycle publishers, enabled only while the node is active: an inactive node publishes
nothing, whatever a window in flight still delivers.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional

import numpy as np
from geometry_msgs.msg import PoseArray, PoseStamped
from rclpy.lifecycle import LifecycleNode
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from g2vlm_ros.pipeline.postprocess import CameraOutput, WindowOutputs
from g2vlm_ros.ros.camera_input import camera_info_from_calibration, frame_header, time_from_ns
from g2vlm_ros.ros.conversions import numpy_to_image, pack_point_cloud
from g2vlm_ros.ros.spin import EntityGate
from g2vlm_ros.ros.tf_output import TfOutput, pose_from_matrix, transform_from_matrix


@dataclass(frozen=True)
class FrameSettings:
    """Where a window's outputs live in TF."""

    map_frame: str
    frame_prefix: str = "g2vlm/"
    odom_frame: str = ""
    map_from_odom: Optional[np.ndarray] = None  # 4x4: the robot's odometry is known, map -> odom replaces the cameras


def optical_frame(camera: str, prefix: str) -> str:
    """TF child frame of a camera's predicted pose: the node's prefix and the camera's name, never the driver's
    frame (which drivers already call <camera>_optical), so that it never gives a robot frame a second parent."""
    return f"{prefix}{camera}_optical"


class CameraPublishers:
    def __init__(self, node: LifecycleNode, camera: str, metric: bool, qos: QoSProfile):
        self.depth_relative = node.create_lifecycle_publisher(Image, f"~/{camera}/depth_relative", qos)
        # the metres topic exists only when a metric source is configured
        self.depth = node.create_lifecycle_publisher(Image, f"~/{camera}/depth", qos) if metric else None
        self.confidence = None  # created with the first confidence map: checkpoints without one never have it
        self.camera_info = node.create_lifecycle_publisher(CameraInfo, f"~/{camera}/camera_info", qos)
        self.pose = node.create_lifecycle_publisher(PoseStamped, f"~/{camera}/pose", qos)
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
    """Owns the output publishers (lifecycle publishers: enabled by set_active) and converts outputs to messages.

    The node's transitions enable and disable them here, not through rclpy's managed-entity walk, because the
    confidence publisher is created on the inference thread when the first confidence map arrives."""

    def __init__(self, node: LifecycleNode, cameras: list[str], metric: bool, qos: QoSProfile, tf_output: TfOutput,
                 gate: Optional[EntityGate] = None):
        self.node, self.qos = node, qos
        self._gate = gate or EntityGate()  # the node's: a publisher created while the executor spins
        self._lock = threading.Lock()  # publisher set and enabled state
        self._active = False
        self.cameras = {name: CameraPublishers(node, name, metric, qos) for name in cameras}
        self.points = node.create_lifecycle_publisher(PointCloud2, "~/points", qos)
        self.poses = node.create_lifecycle_publisher(PoseArray, "~/poses", qos)
        self.tf_output = tf_output

    def _publishers(self) -> list:
        return [self.points, self.poses] + [p for camera in self.cameras.values() for p in camera.all()]

    def set_active(self, active: bool) -> None:
        with self._lock:
            self._active = active
            for publisher in self._publishers():
                (publisher.on_activate if active else publisher.on_deactivate)(None)

    def destroy(self) -> None:
        with self._lock:
            self._active = False
            for publisher in self._publishers():
                self.node.destroy_lifecycle_publisher(publisher)
            self.cameras.clear()

    def publish(self, outputs: WindowOutputs, settings: FrameSettings) -> None:
        if not self._active:
            return  # TF is not a lifecycle publisher: an inactive node sends none either
        for camera in outputs.cameras:
            self._publish_camera(camera, outputs, settings)
        if outputs.withhold_geometry:
            return
        newest_stamp = time_from_ns(outputs.newest_stamp_ns)
        map_header = Header(stamp=newest_stamp, frame_id=settings.map_frame)
        if settings.map_from_odom is not None:  # REP 105: the map node parents odom, the robot the rest
            transforms = [transform_from_matrix(settings.map_from_odom, map_header, settings.odom_frame)]
        else:
            transforms = [
                transform_from_matrix(camera.camera_to_world,
                                      Header(stamp=time_from_ns(camera.frame.stamp_ns), frame_id=settings.map_frame),
                                      optical_frame(camera.frame.camera, settings.frame_prefix))
                for camera in outputs.cameras
            ]
        self.tf_output.send(transforms)
        self.poses.publish(PoseArray(header=map_header,
                                     poses=[pose_from_matrix(pose) for pose in outputs.camera_to_world]))
        cloud = outputs.cloud
        self.points.publish(pack_point_cloud(cloud.points, cloud.colors, cloud.confidence, map_header))

    def _publish_camera(self, camera: CameraOutput, outputs: WindowOutputs, settings: FrameSettings) -> None:
        publishers = self.cameras[camera.frame.camera]
        header = frame_header(camera.frame)
        (publishers.depth if outputs.metric else publishers.depth_relative).publish(
            numpy_to_image(camera.depth, "32FC1", header))
        if camera.confidence is not None:
            self._confidence_publisher(publishers).publish(numpy_to_image(camera.confidence, "32FC1", header))
        calibration = camera.frame.calibration
        width, height = camera.frame.size
        publishers.camera_info.publish(camera_info_from_calibration(calibration, header) if calibration is not None
                                       else pinhole_camera_info(header, camera.model_intrinsics, width, height))
        if not outputs.withhold_geometry:
            publishers.pose.publish(PoseStamped(
                header=Header(stamp=header.stamp, frame_id=settings.map_frame),
                pose=pose_from_matrix(camera.camera_to_world)))

    def _confidence_publisher(self, publishers: CameraPublishers):
        if publishers.confidence is not None:
            return publishers.confidence
        with self._gate.changing_entities(), self._lock:  # always gate, then lock: the order transitions take
            if publishers.confidence is None:
                publishers.confidence = self.node.create_lifecycle_publisher(
                    Image, f"~/{publishers.camera}/confidence", self.qos)
                if self._active:
                    publishers.confidence.on_activate(None)
            return publishers.confidence
