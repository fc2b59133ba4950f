"""How /g2vlm/ask reaches the planner's frames: a target frame and the up direction, from TF and an IMU.

A window's geometry is in its world frame: the optical frame of its first view (the first camera's
oldest keyframe), scaled to metres when the window has a metric scale. For one question this module
builds the answerer's RobotFrame:
- `window_to_target`: target_T_camera of that first view, looked up in TF at the view's stamp. When
  the window spans several stamps and odom_frame is set, the target is taken at the window's newest
  stamp (through odom_frame, tf2's "time travel"), so that a moving base_link answers for now.
  Positions in another frame are only meaningful in metres: without a metric scale it is refused.
- `up_in_window`: +z of odom_frame (gravity-aligned, REP 105), else of base_frame, expressed in the
  window frame via TF; else the mean linear acceleration of the IMU messages around the first
  view's stamp (an accelerometer at rest measures the reaction to gravity, which points up), used
  only while its magnitude is within IMU_GRAVITY_TOLERANCE of g; else none, and the answerer fits a
  floor plane or refuses.
"""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Optional

import numpy as np

from g2vlm_ros.geometry.tf_buffer import TransformUnavailable
from g2vlm_ros.reasoning.question import QuestionError
from g2vlm_ros.reasoning.robot_frame import RobotFrame

STANDARD_GRAVITY = 9.80665
IMU_GRAVITY_TOLERANCE = 1.0  # m/s^2: a larger deviation from g means the robot accelerates, and "up" would tilt
IMU_HISTORY = 400  # messages kept: several seconds of a 100 Hz IMU, enough to reach a window's first view


@dataclass(frozen=True)
class ImuSample:
    stamp_ns: int
    frame_id: str
    acceleration: np.ndarray  # [3] m/s^2 in frame_id


def up_from_acceleration(acceleration: np.ndarray) -> tuple[Optional[np.ndarray], str]:
    """Unit up vector (in the IMU's frame) from a mean linear acceleration, or None and why not."""
    acceleration = np.asarray(acceleration, dtype=np.float64).reshape(3)
    if not np.all(np.isfinite(acceleration)):
        return None, "the IMU's linear acceleration is not finite"
    magnitude = float(np.linalg.norm(acceleration))
    if abs(magnitude - STANDARD_GRAVITY) > IMU_GRAVITY_TOLERANCE:
        return None, (f"the IMU measures {magnitude:.2f} m/s^2, not g ({STANDARD_GRAVITY:.2f} ± "
                      f"{IMU_GRAVITY_TOLERANCE:g}): the robot accelerates or the IMU does not report gravity")
    return acceleration / magnitude, ""


class ImuHistory:
    """The recent IMU messages (thread-safe): filled by the subscription, read by questions."""

    def __init__(self, size: int = IMU_HISTORY):
        self._samples: collections.deque[ImuSample] = collections.deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, sample: ImuSample) -> None:
        with self._lock:
            self._samples.append(sample)

    def around(self, stamp_ns: int, max_age_s: float) -> list[ImuSample]:
        """The samples stamped within max_age_s of stamp_ns."""
        limit = int(max_age_s * 1e9)
        with self._lock:
            return [sample for sample in self._samples if abs(sample.stamp_ns - stamp_ns) <= limit]

    def __len__(self) -> int:
        with self._lock:
            return len(self._samples)


class RobotFrames:
    """Builds the RobotFrame of a question from TF (`lookup(target, source, stamp_ns) -> 4x4`, raising
    TransformUnavailable) and an optional IMU history."""

    def __init__(self, lookup, map_frame: str, odom_frame: str, base_frame: str,
                 imu: Optional[ImuHistory] = None, imu_max_age_s: float = 0.5):
        self.lookup = lookup
        self.map_frame, self.odom_frame, self.base_frame = map_frame, odom_frame, base_frame
        self.imu, self.imu_max_age_s = imu, imu_max_age_s

    def frame_for(self, snapshot, target_frame: str) -> tuple[RobotFrame, str]:
        """The RobotFrame for `snapshot` answered in `target_frame` ('' or map_frame: the window's own frame, which
        the caller places in the map), and a note saying where "up" came from or why there is none. Raises
        QuestionError when the target frame cannot be reached."""
        frames = snapshot.window.frames
        first = frames[0]
        newest_ns = max(frame.stamp_ns for frame in frames)
        window_to_target = None
        name = target_frame or self.map_frame
        if target_frame and target_frame != self.map_frame:
            window_to_target = self._window_to_target(snapshot, target_frame, first, newest_ns)
        up, up_source, note = self._up(first)
        return RobotFrame(name=name, window_to_target=window_to_target, up_in_window=up, up_source=up_source), note

    def _window_to_target(self, snapshot, target: str, first, newest_ns: int) -> np.ndarray:
        if not snapshot.scale.valid:
            raise QuestionError(f"answers in target_frame '{target}' need a metric scale, and this window has none "
                                f"({snapshot.scale.status or 'scale_source none'}): TF positions are in metres, the "
                                "window's geometry only up to scale. Ask without target_frame for relative answers "
                                f"in {self.map_frame}, or configure scale_source")
        if not first.frame_id:
            raise QuestionError(f"camera '{first.camera}' has no frame_id (image header or {first.camera}.frame_id), "
                                f"so its place in TF, and target_frame '{target}', cannot be found")
        try:
            if newest_ns != first.stamp_ns and self.odom_frame and target != self.odom_frame:
                # the target as it is at the window's newest stamp, through the fixed odom frame
                odom_T_camera = self.lookup(self.odom_frame, first.frame_id, first.stamp_ns)
                target_T_odom = self.lookup(target, self.odom_frame, newest_ns)
                return target_T_odom @ odom_T_camera
            return self.lookup(target, first.frame_id, first.stamp_ns)
        except TransformUnavailable as error:
            raise QuestionError(f"target_frame '{target}' cannot be reached from camera frame '{first.frame_id}' "
                                f"in TF at the window's stamp: {error}") from None

    def _up(self, first) -> tuple[Optional[np.ndarray], str, str]:
        reasons = []
        if first.frame_id:
            for frame in dict.fromkeys(name for name in (self.odom_frame, self.base_frame) if name):
                try:
                    camera_T_frame = self.lookup(first.frame_id, frame, first.stamp_ns)
                except TransformUnavailable as error:
                    reasons.append(f"TF {frame} -> {first.frame_id}: {error}")
                    continue
                return camera_T_frame[:3, 2].copy(), "tf", f"up: +z of {frame} from TF"
        else:
            reasons.append(f"camera '{first.camera}' has no frame_id for TF")
        up, reason = self._imu_up(first)
        if up is not None:
            return up, "imu", reason
        reasons.append(reason)
        return None, "none", "no up direction: " + "; ".join(reasons)

    def _imu_up(self, first) -> tuple[Optional[np.ndarray], str]:
        if self.imu is None:
            return None, "no imu_topic"
        samples = self.imu.around(first.stamp_ns, self.imu_max_age_s)
        if not samples:
            return None, (f"no IMU message within imu_max_age_s = {self.imu_max_age_s:g} s of the window "
                          f"({len(self.imu)} kept)")
        frame = samples[-1].frame_id
        same_frame = [sample.acceleration for sample in samples if sample.frame_id == frame]
        up_in_imu, reason = up_from_acceleration(np.mean(same_frame, axis=0))
        if up_in_imu is None:
            return None, reason
        if not first.frame_id:
            return None, f"camera '{first.camera}' has no frame_id for TF"
        try:
            camera_T_imu = self.lookup(first.frame_id, frame, 0)  # an IMU's mount is static: the latest will do
        except TransformUnavailable as error:
            return None, f"IMU frame '{frame}' is not connected to '{first.frame_id}' in TF: {error}"
        return camera_T_imu[:3, :3] @ up_in_imu, f"up: gravity from {len(same_frame)} IMU messages in '{frame}'"
