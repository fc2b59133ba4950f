"""Per-camera input state: message conversion, the latest CameraInfo, counters and the input rate.

Accepted frames go to the node's WindowAssembler (runtime.windowing), which aligns cameras in time
and keeps the keyframes."""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Optional

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from g2vlm_ros.ros.conversions import ImageConversionError, compressed_to_rgb, image_to_rgb
from g2vlm_ros.ros.params import CameraConfig
from g2vlm_ros.runtime.windowing import thumbnail


def stamp_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


@dataclass
class Frame:
    """One accepted camera image, ready for inference."""

    camera: str
    header: Header  # source header; frame_id already resolved (parameter or message)
    rgb: np.ndarray  # [H,W,3] uint8
    camera_info: Optional[CameraInfo]  # latest CameraInfo of this camera when the image arrived
    stamp_ns: int  # header stamp in nanoseconds, for time alignment
    thumbnail: Optional[np.ndarray]  # small grey image, only when the keyframe policy tests image change


class CameraInput:
    """Converts and validates incoming messages of one camera and keeps its newest frames."""

    RATE_WINDOW_S = 5.0

    def __init__(self, config: CameraConfig):
        self.config = config
        self.camera_info: Optional[CameraInfo] = None
        self.received = 0
        self.rejected = 0
        self.last_error = ""
        self._arrivals: deque[float] = deque()
        self._lock = threading.Lock()

    def accept(self, msg: Image | CompressedImage, with_thumbnail: bool = False) -> Frame:
        """Converts `msg`; raises ImageConversionError (and counts it) when it is unusable."""
        now = time.monotonic()
        with self._lock:
            self.received += 1
            self._arrivals.append(now)
            while self._arrivals and now - self._arrivals[0] > self.RATE_WINDOW_S:
                self._arrivals.popleft()
        try:
            rgb = compressed_to_rgb(msg) if isinstance(msg, CompressedImage) else image_to_rgb(msg)
            frame_id = self.config.frame_id or msg.header.frame_id
            if not frame_id:
                raise ImageConversionError(
                    f"header.frame_id is empty; set parameter '{self.config.name}.frame_id' to name the optical frame"
                )
        except ImageConversionError as error:
            with self._lock:
                self.rejected += 1
                self.last_error = str(error)
            raise
        header = Header(stamp=msg.header.stamp, frame_id=frame_id)
        return Frame(self.config.name, header, rgb, self.camera_info, stamp_ns(header.stamp),
                     thumbnail(rgb) if with_thumbnail else None)

    def set_camera_info(self, msg: CameraInfo) -> Optional[str]:
        """Stores `msg`, or returns why it is unusable (then the model's intrinsics are used)."""
        k = np.asarray(msg.k, dtype=np.float64)
        if not (np.all(np.isfinite(k)) and k[0] > 0 and k[4] > 0):
            with self._lock:
                self.last_error = f"camera_info has an invalid focal length (fx={k[0]}, fy={k[4]})"
            return self.last_error
        with self._lock:
            self.camera_info = msg
        return None

    def rate_hz(self) -> float:
        with self._lock:
            arrivals = list(self._arrivals)
        if len(arrivals) < 2 or arrivals[-1] == arrivals[0]:
            return 0.0
        return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
