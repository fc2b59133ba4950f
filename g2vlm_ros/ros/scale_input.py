"""Measures the metric scale of each inference window from the configured source.

  tf           predicted camera centres of the window vs TF positions of the same optical frames in
               odom_frame at the images' stamps (similarity fit; needs motion or several cameras)
  rig          predicted distance between the first two cameras vs their distance on TF (static
               extrapolation-free lookup at the latest time: rigs do not deform)
  depth_topic  predicted depth of one camera vs a metric depth image of the same pixels (nearest in time)

The geometry is in g2vlm_ros.geometry.scale, the hold/expiry policy in pipeline.scale_tracker; this
module gathers the measurements from ROS (TF, the depth topic) and hands the pipeline a ScaleFit.
"""
from __future__ import annotations

import math
import threading
from collections import deque
from typing import Optional

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from g2vlm_interfaces.msg import MetricScale
from g2vlm_ros.backends.backend import GeometryResult
from g2vlm_ros.geometry.pinhole import resize_nearest
from g2vlm_ros.geometry.scale import (
    ScaleFit,
    ScaleUnavailable,
    scale_from_baselines,
    scale_from_depth,
    scale_from_trajectories,
)
from g2vlm_ros.geometry.tf_buffer import TransformUnavailable
from g2vlm_ros.pipeline.frame import Frame, newest_index
from g2vlm_ros.pipeline.scale_tracker import ScaleEstimate
from g2vlm_ros.ros.camera_input import stamp_ns, time_from_ns
from g2vlm_ros.ros.conversions import ImageConversionError, depth_image_to_metres
from g2vlm_ros.ros.tf_input import TfInput

DEPTH_HISTORY = 30  # depth images kept for matching by stamp (1 s at 30 Hz)


def scale_message(frames: list[Frame], scale: ScaleEstimate, world_frame: str) -> MetricScale:
    """~/scale for a window: stamped with its newest frame; metres_per_unit NaN while no scale is valid."""
    newest = max(frames, key=lambda frame: frame.stamp_ns)
    return MetricScale(header=Header(stamp=time_from_ns(newest.stamp_ns), frame_id=world_frame),
                       source=scale.source, valid=scale.valid,
                       metres_per_unit=scale.metres_per_unit if scale.valid else math.nan,
                       residual_m=scale.residual_m, samples=scale.samples, age_s=scale.age_s,
                       fits_total=scale.fits_total, failures_total=scale.failures_total, status=scale.status)


class ScaleInput:
    """The pipeline's ScaleMeasurement from ROS data: TF poses, a rig's TF baseline or a metric depth topic."""

    def __init__(self, node: Node, config, cameras: list[str], tf_input: Optional[TfInput], qos,
                 callback_group=None):
        self.node = node
        self.config = config
        self.cameras = cameras
        self.tf_input = tf_input
        self._depth_images: deque[tuple[int, Image]] = deque(maxlen=DEPTH_HISTORY)
        self._depth_lock = threading.Lock()
        self.depth_received = 0
        self._subscription = None
        if config.scale_source == "depth_topic":
            self._subscription = node.create_subscription(Image, config.scale_depth_topic, self._on_depth, qos,
                                                          callback_group=callback_group)

    def destroy(self) -> None:
        if self._subscription is not None:
            self.node.destroy_subscription(self._subscription)
            self._subscription = None

    def _on_depth(self, msg: Image) -> None:
        with self._depth_lock:
            self.depth_received += 1
            self._depth_images.append((stamp_ns(msg.header.stamp), msg))

    def fit(self, frames: list[Frame], result: GeometryResult) -> ScaleFit:
        """This window's scale fit; ScaleUnavailable says why there is none (TF or depth missing or late)."""
        try:
            return self._fit(frames, result)
        except (TransformUnavailable, ImageConversionError) as error:
            raise ScaleUnavailable(str(error)) from error

    def _fit(self, frames: list[Frame], result: GeometryResult) -> ScaleFit:
        centres = result.camera_to_world[:, :3, 3].detach().double().cpu().numpy()
        source = self.config.scale_source
        if source == "tf":
            return self._fit_tf(frames, centres)
        if source == "rig":
            return self._fit_rig(frames, centres)
        return self._fit_depth(frames, result)

    def _lookup(self, target: str, source: str, stamp: int) -> np.ndarray:
        if self.tf_input is None:
            raise TransformUnavailable("no TF input")
        return self.tf_input.lookup(target, source, stamp)

    def _fit_tf(self, frames: list[Frame], centres: np.ndarray) -> ScaleFit:
        measured = np.full_like(centres, np.nan)
        missing = ""
        for index, frame in enumerate(frames):
            try:
                pose = self._lookup(self.config.odom_frame, frame.frame_id, frame.stamp_ns)
                measured[index] = pose[:3, 3]
            except TransformUnavailable as error:
                missing = str(error)
        if np.isfinite(measured).all(axis=1).sum() < 2:
            raise ScaleUnavailable(f"fewer than two views have a TF pose in '{self.config.odom_frame}'"
                                   + (f": {missing}" if missing else ""))
        return scale_from_trajectories(centres, measured)

    def _fit_rig(self, frames: list[Frame], centres: np.ndarray) -> ScaleFit:
        first, second = self.cameras[0], self.cameras[1]
        index_a = [i for i, frame in enumerate(frames) if frame.camera == first]
        index_b = [i for i, frame in enumerate(frames) if frame.camera == second]
        # windows are camera-major with one synchronized set per keyframe, so the k-th frames pair up
        frame_a, frame_b = frames[index_a[-1]], frames[index_b[-1]]
        baseline = self._lookup(frame_a.frame_id, frame_b.frame_id, 0)[:3, 3]
        return scale_from_baselines(centres[index_a], centres[index_b], float(np.linalg.norm(baseline)))

    def _fit_depth(self, frames: list[Frame], result: GeometryResult) -> ScaleFit:
        camera = self.config.scale_depth_camera
        index = newest_index(frames, camera)
        target = frames[index].stamp_ns
        with self._depth_lock:
            candidates = list(self._depth_images)
        if not candidates:
            raise ScaleUnavailable(f"no depth image received on '{self.config.scale_depth_topic}'")
        stamp, msg = min(candidates, key=lambda item: abs(item[0] - target))
        offset_s = abs(stamp - target) * 1e-9
        if offset_s > max(self.config.sync_slop_s, 1e-3):
            raise ScaleUnavailable(f"no depth image within sync_slop_s of the '{camera}' image "
                                   f"(nearest is {offset_s:.3f} s away)")
        metric = depth_image_to_metres(msg)
        predicted = resize_nearest(result.depth[index].float(), metric.shape[1], metric.shape[0]).cpu().numpy()
        return scale_from_depth(metric, predicted)
