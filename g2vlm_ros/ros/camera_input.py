"""Per-camera input state: message conversion, the latest CameraInfo, counters and the input rate.

Accepted images become pipeline Frames (no ROS types: the header becomes frame_id and stamp_ns, the
CameraInfo a CameraCalibration) and go to the pipeline, which aligns cameras in time and keeps keyframes."""
from __future__ import annotations

import copy
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Optional

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from g2vlm_ros.pipeline.frame import CameraCalibration, Frame
from g2vlm_ros.pipeline.windowing import thumbnail
from g2vlm_ros.ros.conversions import ImageConversionError, compressed_to_rgb, image_to_rgb
from g2vlm_ros.ros.params import CameraConfig


def stamp_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def time_from_ns(nanoseconds: int) -> Time:
    return Time(sec=int(nanoseconds // 1_000_000_000), nanosec=int(nanoseconds % 1_000_000_000))


def frame_header(frame: Frame) -> Header:
    """The header of the image a frame came from (its stamp and optical frame)."""
    return Header(stamp=time_from_ns(frame.stamp_ns), frame_id=frame.frame_id)


def calibration_from_camera_info(info: CameraInfo) -> CameraCalibration:
    roi = info.roi
    return CameraCalibration(
        width=int(info.width), height=int(info.height), k=np.asarray(info.k, dtype=np.float64).reshape(3, 3),
        distortion_model=info.distortion_model, d=tuple(float(v) for v in info.d),
        r=np.asarray(info.r, dtype=np.float64).reshape(3, 3), p=np.asarray(info.p, dtype=np.float64).reshape(3, 4),
        binning=(int(info.binning_x), int(info.binning_y)),
        roi=(int(roi.x_offset), int(roi.y_offset), int(roi.height), int(roi.width), bool(roi.do_rectify)))


def camera_info_from_calibration(calibration: CameraCalibration, header: Header) -> CameraInfo:
    info = CameraInfo(header=header, width=calibration.width, height=calibration.height,
                      distortion_model=calibration.distortion_model)
    info.d = list(calibration.d)
    info.k = calibration.k.astype(np.float64).reshape(-1).tolist()
    info.r = np.asarray(calibration.r, dtype=np.float64).reshape(-1).tolist()
    info.p = calibration.projection().astype(np.float64).reshape(-1).tolist()
    info.binning_x, info.binning_y = calibration.binning
    x_offset, y_offset, height, width, do_rectify = calibration.roi
    info.roi.x_offset, info.roi.y_offset, info.roi.height, info.roi.width = x_offset, y_offset, height, width
    info.roi.do_rectify = do_rectify
    return info


MIN_IMAGE_SIDE = 32  # pixels; smaller images carry no usable geometry once scaled to the model's 518 px
# a stamp this much older than the camera's last one is a restarted clock (a looping bag, a driver restart,
# a simulator reset), not a late frame: the windows start over instead of refusing every frame until the
# new clock catches up with the old one
CLOCK_RESET_S = 1.0
RECENT_ERROR_S = 10.0  # diagnostics warn while the camera's last rejection is this recent


class CameraInput:
    """Converts and validates incoming messages of one camera and keeps its newest frames."""

    RATE_WINDOW_S = 5.0

    def __init__(self, config: CameraConfig, warn: Callable[[str], None] = lambda text: None):
        self.config = config
        self._warn = warn  # for what is said once, not per frame
        self.camera_info: Optional[CameraInfo] = None
        self.received = 0
        self.rejected = 0
        self.clock_resets = 0
        self.last_error = ""
        self.last_error_time: Optional[float] = None  # monotonic
        self.last_stamp_ns: Optional[int] = None  # of the newest accepted frame
        self._arrivals: deque[float] = deque()
        self._last_arrival: Optional[float] = None
        self._info_notes: set[tuple[int, int, int, int]] = set()  # (info w, h, image w, h) already said
        self._calibration_cache: tuple = (None, (0, 0), None)  # (camera_info, image size, its calibration)
        self._lock = threading.Lock()

    def accept(self, msg: Image | CompressedImage, with_thumbnail: bool = False) -> Frame:
        """Converts `msg`; raises ImageConversionError (and counts it) when it is unusable."""
        now = time.monotonic()
        with self._lock:
            self.received += 1
            self._arrivals.append(now)
            while self._arrivals and now - self._arrivals[0] > self.RATE_WINDOW_S:
                self._arrivals.popleft()
            self._last_arrival = now
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
        return Frame(self.config.name, frame_id, stamp, rgb, self._calibration_for(rgb.shape[1], rgb.shape[0]),
                     thumbnail(rgb) if with_thumbnail else None, clock_reset)

    def _calibration_for(self, width: int, height: int) -> Optional[CameraCalibration]:
        """_camera_info_for as a CameraCalibration, converted once per camera_info message and image size."""
        source = self.camera_info
        cached_source, cached_size, calibration = self._calibration_cache
        if source is not None and source is cached_source and cached_size == (width, height):
            return calibration
        info = self._camera_info_for(width, height)
        calibration = None if info is None else calibration_from_camera_info(info)
        self._calibration_cache = (source, (width, height), calibration)
        return calibration

    def _camera_info_for(self, width: int, height: int) -> Optional[CameraInfo]:
        """The latest CameraInfo made to describe a width x height image, or None (the model's intrinsics).

        A driver that changes resolution or bins pixels may publish images of another size than its info: with
        the same aspect ratio the intrinsics are rescaled (said once per size pair); otherwise they describe
        another image and are not used. Either way no info that contradicts the image is ever republished."""
        info = self.camera_info
        if info is None or (info.width == width and info.height == height):
            return info
        note = (int(info.width), int(info.height), width, height)
        if info.width == 0 or info.height == 0:
            problem = (f"camera_info has no image size ({info.width}x{info.height}); it cannot be matched to the "
                       f"{width}x{height} images, so the model's intrinsics are used")
            self._note_info_once(note, problem)
            return None
        rescaled = rescaled_camera_info(info, width, height)
        if rescaled is None:
            self._note_info_once(note, f"camera_info is {info.width}x{info.height} but the images are "
                                       f"{width}x{height} (another aspect ratio): it is ignored and the model's "
                                       "intrinsics are used")
            return None
        self._note_info_once(note, f"camera_info is {info.width}x{info.height} but the images are {width}x{height} "
                                   "(same aspect ratio): its intrinsics are rescaled to the images", error=False)
        return rescaled

    def _note_info_once(self, key: tuple[int, int, int, int], reason: str, error: bool = True) -> None:
        with self._lock:
            if key in self._info_notes:
                return
            self._info_notes.add(key)
        self._warn(f"camera '{self.config.name}': {reason}")
        if error:
            self.note_error(reason, frame=False)

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
        problem = camera_info_problem(msg)
        if problem:
            fallback = "the model's intrinsics" if self.camera_info is None else "the last valid camera_info"
            reason = f"{problem}; using {fallback}"
            self.note_error(reason, frame=False)
            return reason
        with self._lock:
            self.camera_info = msg
        return None

    def rate_hz(self) -> float:
        """Images per second over the last RATE_WINDOW_S, measured up to now: a camera that stops decays to 0."""
        now = time.monotonic()
        with self._lock:
            arrivals = [arrival for arrival in self._arrivals if now - arrival <= self.RATE_WINDOW_S]
        if len(arrivals) < 2:
            return 0.0
        # over the span the arrivals cover, stretched to now: a gap since the last image lowers the rate at once
        return (len(arrivals) - 1) / max(now - arrivals[0], arrivals[-1] - arrivals[0], 1e-9)

    def age_s(self) -> Optional[float]:
        """Seconds since the last image arrived (accepted or not); None before the first."""
        last = self._last_arrival
        return None if last is None else time.monotonic() - last


def camera_info_problem(msg: CameraInfo) -> str:
    """Why a CameraInfo cannot describe a camera, or ''."""
    k = np.asarray(msg.k, dtype=np.float64)
    if not (np.all(np.isfinite(k)) and k[0] > 0 and k[4] > 0):
        return f"camera_info has an invalid focal length (fx={k[0]}, fy={k[4]})"
    for name in ("p", "d", "r"):
        values = np.asarray(getattr(msg, name), dtype=np.float64)
        if not np.all(np.isfinite(values)):
            return f"camera_info field {name.upper()} has non-finite values"
    return ""


ASPECT_TOLERANCE = 0.01  # relative; binning and ROI-free resolution modes keep the aspect ratio exactly


def rescaled_camera_info(info: CameraInfo, width: int, height: int) -> Optional[CameraInfo]:
    """`info` for the same camera at width x height (K and P scaled per axis), or None for another aspect ratio."""
    sx, sy = width / info.width, height / info.height
    if abs(sx - sy) > ASPECT_TOLERANCE * max(sx, sy):
        return None
    rescaled = copy.deepcopy(info)
    rescaled.width, rescaled.height = width, height
    axis_scale = np.array([[sx], [sy], [1.0]])
    rescaled.k = (np.asarray(info.k, dtype=np.float64).reshape(3, 3) * axis_scale).reshape(-1).tolist()
    # P's rows scale whole: its Tx/Ty column is in pixels (focal length times baseline) too
    rescaled.p = (np.asarray(info.p, dtype=np.float64).reshape(3, 4) * axis_scale).reshape(-1).tolist()
    rescaled.binning_x = rescaled.binning_y = 0
    rescaled.roi = type(info.roi)()
    return rescaled
