"""One camera image as the pipeline sees it: no ROS message types, so windows, backends, answers and the
map can be built and tested without ROS. The ROS layer converts `sensor_msgs` into these and back."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class CameraCalibration:
    """A camera's own calibration (what a driver publishes as CameraInfo), for the image size it describes."""

    width: int
    height: int
    k: np.ndarray  # [3,3] intrinsics
    distortion_model: str = "plumb_bob"
    d: tuple[float, ...] = ()
    r: np.ndarray = field(default_factory=lambda: np.eye(3))  # [3,3] rectification
    p: Optional[np.ndarray] = None  # [3,4] projection; None: [K | 0]
    binning: tuple[int, int] = (0, 0)
    # (x_offset, y_offset, height, width, do_rectify); all zero: the full image
    roi: tuple[int, int, int, int, bool] = (0, 0, 0, 0, False)

    def projection(self) -> np.ndarray:
        return self.p if self.p is not None else np.hstack([self.k, np.zeros((3, 1))])


@dataclass
class Frame:
    """One accepted camera image, ready for inference."""

    camera: str  # the configured camera name
    frame_id: str  # the image's optical frame (parameter or message)
    stamp_ns: int  # capture time, nanoseconds; orders frames and aligns cameras
    rgb: np.ndarray  # [H,W,3] uint8
    # the camera's calibration matched to this image's size when the camera publishes one; None: the model's
    # estimated intrinsics are used
    calibration: Optional[CameraCalibration] = None
    thumbnail: Optional[np.ndarray] = None  # small grey image, only when the keyframe policy tests image change
    clock_reset: bool = False  # the camera's clock restarted (stamp far behind its last one): windows start over

    @property
    def intrinsics(self) -> Optional[np.ndarray]:
        """[3,3] K of the camera's calibration, or None."""
        return None if self.calibration is None else self.calibration.k

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the image."""
        return int(self.rgb.shape[1]), int(self.rgb.shape[0])


def newest_index(frames: list[Frame], camera: str) -> int:
    """Index of `camera`'s newest frame in a window's frame list."""
    return max((i for i, frame in enumerate(frames) if frame.camera == camera), key=lambda i: frames[i].stamp_ns)


def newest_per_camera(frames: list[Frame]) -> dict[str, int]:
    """Camera name -> index of its newest frame, in the order the cameras first appear."""
    newest: dict[str, int] = {}
    for index, frame in enumerate(frames):
        if frame.camera not in newest or frame.stamp_ns >= frames[newest[frame.camera]].stamp_ns:
            newest[frame.camera] = index
    return newest
