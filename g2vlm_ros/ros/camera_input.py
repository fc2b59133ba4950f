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
    clock_reset: bool = False  # the camera's clock restarted (stamp far behind its last one): windows start over


MIN_IMAGE_SIDE = 32  # pixels; smaller images carry no usable geometry once scaled to the model's 518 px
# a stamp this much older than the camera's last one is a restarted clock (a looping bag, a driver restart,
# a simulator reset), not a late frame: the windows start over instead of refusing every frame until the
# new clock catches up with the old one
CLOCK_RESET_S = 1.0
RECENT_ERROR_S = 10.0  # diagnostics warn while the camera's last rejection is this recent


class CameraInput:
    """Converts and validates incoming messages of one camera and keeps its newest frames."""

    RATE_WINDOW_S = 5.0

    def __init__(self, config: CameraConfig):
        self.config = config
        self.camera_info: Optional[CameraInfo] = None
        self.received = 0
        self.rejected = 0
        self.clock_resets = 0
        self.last_error = ""
        self.last_error_time: Optional[float] = None  # monotonic
        self.last_stamp_ns: Optional[int] = None  # of the newest accepted frame
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
            frame_id = self.config.frame_id or msg.header.frame_id
            if not frame_id:
                raise ImageConversionError(
                    f"header.frame_id is empty; set parameter '{self.config.name}.frame_id' to name the optical frame"
                )
            stamp, clock_reset = self._check_stamp(stamp_ns(msg.header.stamp))
            rgb = compressed_to_rgb(msg) if isinstance(msg, CompressedImage) else image_to_rgb(msg)
            if min(rgb.shape[:2]) < MIN_IMAGE_SIDE:
                raise ImageConversionError(f"image {rgb.shape[1]}x{rgb.shape[0]} is smaller than "
                                           f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels")
        except ImageConversionError as error:
            self.note_error(str(error))
            raise
        with self._lock:
            self.last_stamp_ns = stamp
            self.clock_resets += int(clock_reset)
        header = Header(stamp=msg.header.stamp, frame_id=frame_id)
        return Frame(self.config.name, header, rgb, self.camera_info, stamp,
                     thumbnail(rgb) if with_thumbnail else None, clock_reset)

    def _check_stamp(self, stamp: int) -> tuple[int, bool]:
        """(stamp, whether the camera's clock restarted) or ImageConversionError for an unusable stamp."""
        if stamp == 0:
            raise ImageConversionError("header.stamp is zero: the driver does not stamp its images")
        last = self.last_stamp_ns
        if last is None or stamp > last:
            return stamp, False
        if last - stamp >= CLOCK_RESET_S * 1e9:
            return stamp, True
        raise ImageConversionError(f"stamp {stamp / 1e9:.6f} s is not newer than the previous frame's "
                                   f"{last / 1e9:.6f} s (out of order or repeated)")

    def note_error(self, reason: str, frame: bool = True) -> None:
        """Records why input was refused; `frame`: an image was dropped (counted), not a camera_info."""
        with self._lock:
            self.rejected += int(frame)
            self.last_error = reason
            self.last_error_time = time.monotonic()

    def recent_error(self) -> Optional[str]:
        """The last rejection's reason while it is recent (diagnostics warn about it), else None."""
        with self._lock:
            if self.last_error_time is None or time.monotonic() - self.last_error_time > RECENT_ERROR_S:
                return None
            return self.last_error

    def set_camera_info(self, msg: CameraInfo) -> Optional[str]:
        """Stores `msg`, or returns why it is unusable (then the model's intrinsics are used)."""
        k = np.asarray(msg.k, dtype=np.float64)
        if not (np.all(np.isfinite(k)) and k[0] > 0 and k[4] > 0):
            fallback = "the model's intrinsics" if self.camera_info is None else "the last valid camera_info"
            reason = f"camera_info has an invalid focal length (fx={k[0]}, fy={k[4]}); using {fallback}"
            self.note_error(reason, frame=False)
            return reason
        with self._lock:
            self.camera_info = msg
        return None

    def rate_hz(self) -> float:
        with self._lock:
            arrivals = list(self._arrivals)
        if len(arrivals) < 2 or arrivals[-1] == arrivals[0]:
            return 0.0
        return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
