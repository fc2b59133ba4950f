"""The persistent map as ROS messages: odometry, the keyframe path, the map cloud, the occupancy grid and the
map -> odom transform of the SLAM convention (REP 105). Builds messages only; the map is g2vlm_ros.mapping's.

  ~/odom      nav_msgs/Odometry of every mapped window: the pose in map_frame of the robot's base_frame when TF
              gives odom_frame -> base_frame and the camera's mount (none before, see odometry_child), without
              robot odometry of the first camera's predicted optical frame (<frame_prefix><camera>_optical).
              Covariance: see odometry_covariance.
  ~/path      nav_msgs/Path: the whole optimized keyframe trajectory of the first camera
  ~/map       sensor_msgs/PointCloud2: the accumulated, voxel-downsampled map cloud (transient local)
  ~/map_grid  nav_msgs/OccupancyGrid of the map's height band (transient local)
Path, map and grid go out at most every map_publish_period_s: each is a message of the whole map.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
from geometry_msgs.msg import Pose, PoseStamped
from nav_msgs.msg import OccupancyGrid, Odometry, Path
from rclpy.lifecycle import LifecycleNode
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header

from g2vlm_ros.geometry.tf_buffer import TransformUnavailable
from g2vlm_ros.pipeline.frame import Frame
from g2vlm_ros.pipeline.mapping_stage import MapStage
from g2vlm_ros.pipeline.postprocess import WindowOutputs
from g2vlm_ros.ros.camera_input import time_from_ns
from g2vlm_ros.ros.conversions import pack_point_cloud
from g2vlm_ros.ros.tf_input import TfInput
from g2vlm_ros.ros.tf_output import pose_from_matrix

POSITION_SIGMA_FLOOR = 1e-3  # map units: the alignment residual of a perfect window is 0, a variance of 0 is a lie
UNKNOWN_VARIANCE = 1e6  # twist is not estimated: a variance this large says so to fusion filters
DEPTH_SAMPLE_STRIDE = 8  # pixels of the depth image sampled for the median scene depth of the rotation sigma
# the map's "up" when the robot's odometry is not known: -y of the map frame, the first camera's optical frame
# (y down), i.e. the camera is assumed held level when the map starts
OPTICAL_UP = np.array([0.0, -1.0, 0.0])


@dataclass(frozen=True)
class RobotPose:
    """The robot's base in the map, from a camera's pose and the robot's TF."""

    map_from_base: np.ndarray  # [4,4]
    map_from_odom: np.ndarray  # [4,4] = map_T_base @ inverse(odom_T_base): the SLAM convention


def robot_pose(tf_input: Optional[TfInput], odom_frame: str, base_frame: str, frame: Frame,
               camera_to_map: np.ndarray, previous: Optional[RobotPose] = None) -> Optional[RobotPose]:
    """The base's pose and map -> odom for `frame` placed at `camera_to_map` (metric map), from TF at the frame's
    stamp (odom_T_base, and base_T_camera of the driver's optical frame); None when TF cannot say.

    Odometry can reach TF after the image it goes with. Once the robot's TF was known (`previous`), a window
    without odom_T_base at its stamp keeps the previous map -> odom (as a SLAM node republishes its last
    correction), so that ~/odom and TF never switch to the camera frames in the middle of a run; the camera's
    mount is then taken at the latest time when not at the stamp (mounts are static on most robots)."""
    if tf_input is None or not odom_frame or not base_frame:
        return None
    try:
        base_from_camera = tf_input.lookup(base_frame, frame.frame_id, frame.stamp_ns)
    except TransformUnavailable:
        if previous is None:
            return None
        try:
            base_from_camera = tf_input.lookup(base_frame, frame.frame_id)
        except TransformUnavailable:
            return None
    map_from_base = camera_to_map @ np.linalg.inv(base_from_camera)
    try:
        odom_from_base = tf_input.lookup(odom_frame, base_frame, frame.stamp_ns)
    except TransformUnavailable:
        return None if previous is None else RobotPose(map_from_base, previous.map_from_odom)
    return RobotPose(map_from_base, map_from_base @ np.linalg.inv(odom_from_base))


def odometry_child(robot: Optional[RobotPose], previous: Optional[RobotPose], robot_odometry: bool,
                   frames: MapFrames) -> tuple[Optional[str], str]:
    """The child frame of a window's ~/odom (None: withheld) and what diagnostics say of it.

    robot: this window's robot_pose; previous: the last one known; robot_odometry: the node is configured to place
    the robot (a metric map, odom_frame and base_frame). Then ~/odom is of base_frame or is not published at all: an
    EKF or Nav2 fed by it must never see its child frame change, so it waits for TF's odom -> base and the camera's
    mount. Without robot odometry it is of the first camera's optical frame."""
    if robot is not None:
        return frames.base_frame, frames.base_frame
    if previous is not None:
        return None, f"withheld: TF had no {frames.base_frame} -> camera mount for the last window"
    if robot_odometry:
        return None, (f"withheld: waiting for TF {frames.odom_frame} -> {frames.base_frame} and the camera's mount "
                      f"(~/odom is of {frames.base_frame} once TF has them)")
    return frames.camera_frame, frames.camera_frame


def odometry_covariance(residual: float, scale_spread: float, distance_in_window: float,
                        median_depth: float) -> list[float]:
    """6x6 row-major pose covariance (x, y, z, rotation about x, y, z), diagonal.

    Position sigma: the window's alignment residual (map units) plus its relative scale spread times the
    camera's distance from the window's origin (a scale error displaces the camera in proportion), at least
    POSITION_SIGMA_FLOOR. Rotation sigma: the angle under which that position sigma appears at the view's
    median depth (a rotation error moves the scene's points by about depth * angle)."""
    residual = residual if math.isfinite(residual) else 0.0
    spread = scale_spread if math.isfinite(scale_spread) else 0.0
    position = max(residual + spread * distance_in_window, POSITION_SIGMA_FLOOR)
    depth = median_depth if math.isfinite(median_depth) and median_depth > 0 else 1.0
    rotation = math.atan2(position, depth)
    covariance = np.zeros((6, 6))
    covariance[[0, 1, 2], [0, 1, 2]] = position ** 2
    covariance[[3, 4, 5], [3, 4, 5]] = rotation ** 2
    return covariance.reshape(-1).tolist()


def _pose(matrix: np.ndarray) -> Pose:
    return pose_from_matrix(matrix)


def grid_message(grid, header: Header) -> OccupancyGrid:
    """nav_msgs/OccupancyGrid of a mapping.occupancy.OccupancyGrid (its cells lie in the plane normal to up)."""
    message = OccupancyGrid(header=header)
    message.info.map_load_time = header.stamp
    message.info.resolution = float(grid.resolution)
    message.info.width, message.info.height = int(grid.width), int(grid.height)
    message.info.origin = _pose(grid.origin_pose())
    message.data = np.asarray(grid.data, np.int8).reshape(-1).tolist()
    return message


@dataclass(frozen=True)
class MapFrames:
    map_frame: str
    camera_frame: str  # <frame_prefix><first camera>_optical: the odometry child without the robot's TF
    odom_frame: str
    base_frame: str


class MapPublisher:
    """Owns the map's lifecycle publishers (enabled by set_active, like GeometryPublisher's)."""

    def __init__(self, node: LifecycleNode, qos: QoSProfile, publish_period_s: float):
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)  # late subscribers (RViz, Nav2) get it
        self.node = node
        self.odom = node.create_lifecycle_publisher(Odometry, "~/odom", qos)
        self.path = node.create_lifecycle_publisher(Path, "~/path", qos)
        self.map = node.create_lifecycle_publisher(PointCloud2, "~/map", latched)
        self.grid = node.create_lifecycle_publisher(OccupancyGrid, "~/map_grid", latched)
        self.publish_period_s = publish_period_s
        self.grid_settings = (0.05, (0.1, 1.5))  # resolution, height band above the floor (map units)
        self._last_map_s = -math.inf
        self._lock = threading.Lock()
        self._active = False

    def _publishers(self) -> list:
        return [self.odom, self.path, self.map, self.grid]

    def set_active(self, active: bool) -> None:
        with self._lock:
            self._active = active
            for publisher in self._publishers():
                (publisher.on_activate if active else publisher.on_deactivate)(None)
            self._last_map_s = -math.inf  # the first window after activation publishes the map at once

    def destroy(self) -> None:
        with self._lock:
            self._active = False
            for publisher in self._publishers():
                self.node.destroy_lifecycle_publisher(publisher)

    def publish_odometry(self, outputs: WindowOutputs, first_camera: str, frames: MapFrames,
                         robot: Optional[RobotPose]) -> None:
        placement = outputs.placement
        if not self._active or placement is None:
            return
        camera = next(c for c in outputs.cameras if c.frame.camera == first_camera)
        child, pose = (frames.base_frame, robot.map_from_base) if robot is not None else (
            frames.camera_frame, camera.camera_to_world)
        window_origin = placement.window_to_map.translation
        depth = camera.depth[::DEPTH_SAMPLE_STRIDE, ::DEPTH_SAMPLE_STRIDE]
        median_depth = float(np.nanmedian(depth)) if np.isfinite(depth).any() else math.nan
        message = Odometry(header=Header(stamp=time_from_ns(camera.frame.stamp_ns), frame_id=frames.map_frame),
                           child_frame_id=child)
        message.pose.pose = _pose(pose)
        message.pose.covariance = odometry_covariance(
            placement.residual, placement.scale_spread,
            float(np.linalg.norm(camera.camera_to_world[:3, 3] - window_origin)), median_depth)
        twist = np.zeros((6, 6))
        np.fill_diagonal(twist, UNKNOWN_VARIANCE)
        message.twist.covariance = twist.reshape(-1).tolist()
        self.odom.publish(message)

    def publish_map(self, world_map: MapStage, first_camera: str, frames: MapFrames, stamp_ns: int,
                    up: np.ndarray, force: bool = False) -> bool:
        """Path, cloud and grid of the whole map, when map_publish_period_s has passed (or `force`)."""
        now = time.monotonic()
        with self._lock:
            if not self._active or (not force and now - self._last_map_s < self.publish_period_s):
                return False
            self._last_map_s = now
        header = Header(stamp=time_from_ns(stamp_ns), frame_id=frames.map_frame)
        trajectory = world_map.trajectory(first_camera)
        self.path.publish(Path(header=header, poses=[
            PoseStamped(header=Header(stamp=time_from_ns(key[1]), frame_id=frames.map_frame), pose=_pose(pose))
            for key, pose in trajectory]))
        points, colors = world_map.cloud()
        self.map.publish(pack_point_cloud(points, colors, None, header))
        if len(points):
            from g2vlm_ros.mapping.occupancy import occupancy_grid

            resolution, band = self.grid_settings
            viewpoints = np.array([pose[:3, 3] for _, pose in trajectory]).reshape(-1, 3)  # free space: rays to them
            try:
                grid = occupancy_grid(points, up, band=band, resolution=resolution, viewpoints=viewpoints)
            except ValueError as error:  # e.g. a grid too large for the resolution: the cloud still went out
                self.node.get_logger().warning(f"no map_grid: {error}", throttle_duration_sec=10.0)
            else:
                self.grid.publish(grid_message(grid, header))
        return True


def map_up(robot: Optional[RobotPose]) -> np.ndarray:
    """The map's up: z of odom when the robot's odometry is known, else -y of the map frame (OPTICAL_UP)."""
    if robot is None:
        return OPTICAL_UP
    return robot.map_from_odom[:3, :3] @ np.array([0.0, 0.0, 1.0])

