"""The bad-input matrix, across processes: every kind of unusable camera input gets one throttled log
line and a diagnostics entry naming the camera and the reason, nothing derived from it is published,
and the good frames around it are processed as before.

One node (placeholder backend, so a window takes milliseconds) per transport serves the whole matrix.
"""
from __future__ import annotations

import io
import math
import uuid
from collections.abc import Callable

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from PIL import Image as PILImage
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from conftest import READY_LINE, NodeProcess, wait_until
from g2vlm_ros.ros.conversions import image_to_numpy_float
from test_node_process import expected_depth, rgb_image, stamp_of

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
WARN = b"\x01"
COLOUR = (120, 60, 30)


class CameraUnderTest:
    """A node process with one camera, and the test's publishers and collectors for it."""

    def __init__(self, ros_client, tmp_path_factory, transport: str):
        self.ros = ros_client
        self.name = f"bad_{transport}_{uuid.uuid4().hex[:6]}"
        topic = f"/{self.name}/image_raw" + ("/compressed" if transport == "compressed" else "")
        self.node = NodeProcess(tmp_path_factory.mktemp(self.name) / "node.log", {
            "backend": "placeholder", "cameras": [self.name], f"{self.name}.image_topic": topic,
            f"{self.name}.transport": transport, "input_qos": "reliable"})
        self.node.wait_for_log(READY_LINE)
        node = ros_client.node
        self.images = node.create_publisher(CompressedImage if transport == "compressed" else Image, topic, RELIABLE)
        self.infos = node.create_publisher(CameraInfo, f"/{self.name}/camera_info", RELIABLE)
        self.depth = ros_client.collect(Image, f"/g2vlm/{self.name}/depth_relative", RELIABLE)
        self.info_out = ros_client.collect(CameraInfo, f"/g2vlm/{self.name}/camera_info", RELIABLE)
        self.diagnostics = ros_client.collect(DiagnosticArray, "/diagnostics", RELIABLE)
        self.last_good: Header | None = None

    def header(self, offset_s: float = 0.0, frame_id: str = "") -> Header:
        now = self.ros.node.get_clock().now().nanoseconds + round(offset_s * 1e9)
        header = Header(frame_id=frame_id or f"{self.name}_optical")
        header.stamp.sec, header.stamp.nanosec = now // 1_000_000_000, now % 1_000_000_000
        return header

    def good_frame_is_processed(self, offset_s: float = 0.0, timeout_s: float = 15.0) -> Image:
        """Publishes a good frame stamped now + offset_s every 0.3 s until the depth of one arrives."""
        sent: set[tuple[int, int]] = set()

        def publish() -> None:
            stamp_header = self.header(offset_s)
            sent.add((stamp_header.stamp.sec, stamp_header.stamp.nanosec))
            self.last_good = stamp_header
            if isinstance(self.images.msg_type(), CompressedImage):
                self.images.publish(jpeg(COLOUR, stamp_header))
            else:
                self.images.publish(rgb_image(COLOUR, stamp_header))

        wait_until(lambda: any(stamp_of(m) in sent for m in self.depth), timeout_s,
                   f"camera {self.name}: no depth for a good frame", action=publish, period_s=0.3)
        return next(m for m in self.depth if stamp_of(m) in sent)

    def before_last_good(self, seconds: float) -> Header:
        """A header stamped `seconds` before the last good frame sent: out of order for the node."""
        stamp_ns = self.last_good.stamp.sec * 1_000_000_000 + self.last_good.stamp.nanosec - round(seconds * 1e9)
        header = Header(frame_id=self.last_good.frame_id)
        header.stamp.sec, header.stamp.nanosec = stamp_ns // 1_000_000_000, stamp_ns % 1_000_000_000
        return header

    def camera_warning(self, reason: str) -> bool:
        return any(status.name == f"g2vlm: camera {self.name}" and status.level == WARN and reason in status.message
                   and any(kv.key == "last_error" and reason in kv.value for kv in status.values)
                   for array in list(self.diagnostics) for status in array.status)

    def log_lines(self, text: str) -> list[str]:
        return [line for line in self.node.log().splitlines() if text in line]


def jpeg(rgb, header: Header, width: int = 640, height: int = 480) -> CompressedImage:
    buffer = io.BytesIO()
    PILImage.fromarray(np.full((height, width, 3), rgb, np.uint8)).save(buffer, format="JPEG")
    return CompressedImage(header=header, format="jpeg", data=buffer.getvalue())


def raw(header: Header, encoding: str, width: int, height: int, step: int, data: bytes) -> Image:
    return Image(header=header, encoding=encoding, width=width, height=height, step=step, data=data)


def float_image(header: Header) -> Image:
    values = np.full((48, 64), 1.5, np.float32)
    values[0, :8] = [np.nan, np.inf, -np.inf, 0, -1, np.nan, np.inf, 2]
    return raw(header, "32FC1", 64, 48, 64 * 4, values.tobytes())


def camera_info(header: Header, fx: float, fy: float) -> CameraInfo:
    info = CameraInfo(header=header, width=640, height=480, distortion_model="plumb_bob")
    info.k = [fx, 0.0, 320.0, 0.0, fy, 240.0, 0.0, 0.0, 1.0]
    return info


OVER_8K = (7696, 4320)  # 16 columns more than 8K UHD: the node refuses it before reading the pixels
# label -> (transport, make(camera, header) -> message, the reason the node gives)
MATRIX: dict[str, tuple[str, Callable, str]] = {
    "unknown encoding": ("raw", lambda c, h: raw(h, "yuv422", 64, 48, 128, bytes(128 * 48)),
                         "unsupported encoding 'yuv422'"),
    "float image with NaN and Inf": ("raw", lambda c, h: float_image(h), "encoding '32FC1' is a float image"),
    "step smaller than a row": ("raw", lambda c, h: raw(h, "rgb8", 64, 48, 100, bytes(100 * 48)),
                                "step 100 is smaller than width*channels = 192"),
    "truncated data": ("raw", lambda c, h: raw(h, "rgb8", 64, 48, 192, bytes(192 * 47)),
                       "data has 9024 bytes, expected step*height = 9216"),
    "0x0 image": ("raw", lambda c, h: raw(h, "rgb8", 0, 0, 0, b""), "empty image (0x0)"),
    "1x1 image": ("raw", lambda c, h: raw(h, "rgb8", 1, 1, 3, bytes(3)), "image 1x1 is smaller than 32x32 pixels"),
    "image over 8K": ("raw", lambda c, h: raw(h, "mono8", *OVER_8K, OVER_8K[0], bytes(OVER_8K[0] * OVER_8K[1])),
                      "image 7696x4320 exceeds the 33177600-pixel limit"),
    "empty frame_id": ("raw", lambda c, h: rgb_image(COLOUR, Header(stamp=h.stamp)), "header.frame_id is empty"),
    "zero stamp": ("raw", lambda c, h: rgb_image(COLOUR, Header(frame_id=h.frame_id)), "header.stamp is zero"),
    "stamp going backwards": ("raw", lambda c, h: rgb_image(COLOUR, c.before_last_good(0.2)),
                              "is not newer than the previous frame's"),
    "compressed data that is not an image": (
        "compressed", lambda c, h: CompressedImage(header=h, format="jpeg", data=b"\xff\xd8 not really a jpeg"),
        "format 'jpeg' says JPEG, but the data is neither JPEG nor PNG"),
    "compressed image of 1x1 pixels": ("compressed", lambda c, h: jpeg(COLOUR, h, 1, 1),
                                       "image 1x1 is smaller than 32x32 pixels"),
}


@pytest.fixture(scope="module")
def cameras(ros_client, tmp_path_factory):
    started: dict[str, CameraUnderTest] = {}

    def camera_for(transport: str) -> CameraUnderTest:
        if transport not in started:
            started[transport] = CameraUnderTest(ros_client, tmp_path_factory, transport)
        return started[transport]

    yield camera_for
    for camera in started.values():
        alive = camera.node.alive()
        code = camera.node.stop()
        assert alive and code == 0, f"node of {camera.name} exited with {code}:\n{camera.node.log()}"


@pytest.mark.parametrize("label", list(MATRIX))
def test_bad_input_is_reported_once_per_burst_and_good_frames_keep_flowing(cameras, label):
    transport, make, reason = MATRIX[label]
    camera = cameras(transport)
    camera.good_frame_is_processed()
    before = len(camera.log_lines(reason))
    bad_stamps = set()
    for _ in range(3):  # a burst within the 2 s log throttle
        message = make(camera, camera.header())
        bad_stamps.add(stamp_of(message))
        camera.images.publish(message)
    wait_until(lambda: len(camera.log_lines(reason)) > before, 10, f"no log line saying '{reason}'")
    wait_until(lambda: camera.camera_warning(reason), 10, f"no diagnostics WARN for camera {camera.name}: {reason}")
    good = camera.good_frame_is_processed()
    lines = camera.log_lines(reason)[before:]
    assert len(lines) == 1, lines  # throttled: one line for the burst
    assert f"camera '{camera.name}': dropped frame: " in lines[0]
    assert not any(stamp_of(m) in bad_stamps for m in camera.depth), "output derived from a rejected frame"
    np.testing.assert_allclose(image_to_numpy_float(good), expected_depth(COLOUR), rtol=0.05)
    assert camera.node.alive()


@pytest.mark.parametrize("fx, fy", [(0.0, 500.0), (math.nan, 500.0), (500.0, math.inf)])
def test_camera_info_with_an_unusable_focal_length_is_reported_and_never_republished(cameras, fx, fy):
    camera = cameras("raw")
    camera.good_frame_is_processed()
    reason = "camera_info has an invalid focal length"
    before = len(camera.log_lines(reason))
    camera.infos.publish(camera_info(camera.header(), fx, fy))
    wait_until(lambda: len(camera.log_lines(reason)) > before, 10, "invalid camera_info not logged")
    wait_until(lambda: camera.camera_warning(reason), 10, "invalid camera_info not in diagnostics")
    good = camera.good_frame_is_processed()
    info = next(m for m in camera.info_out if stamp_of(m) == stamp_of(good))
    k = np.array(info.k)
    assert np.isfinite(k).all() and k[0] > 0 and k[4] > 0  # estimated from the model, never the bad one


def test_a_restarted_clock_restarts_the_windows_instead_of_stalling(cameras):
    """A looping bag or a restarted driver: stamps jump back by minutes and then advance again."""
    camera = cameras("raw")
    camera.good_frame_is_processed()
    depth = camera.good_frame_is_processed(-120.0)  # two minutes back: accepted, not 'out of order'
    assert depth.header.stamp.sec < camera.header().stamp.sec - 100
    wait_until(lambda: camera.log_lines("stamps jumped back"), 5, "the clock reset was not logged")
    later = camera.good_frame_is_processed(-120.0)  # and the new clock goes on
    assert stamp_of(later) > stamp_of(depth)


def test_mono16_cameras_are_processed(cameras):
    camera = cameras("raw")
    values = np.tile(np.linspace(0, 4095, 640, dtype=np.uint16), (480, 1))  # a 12-bit ramp
    sent = set()

    def publish() -> None:
        message = raw(camera.header(), "mono16", 640, 480, 1280, values.astype("<u2").tobytes())
        sent.add(stamp_of(message))
        camera.images.publish(message)

    wait_until(lambda: any(stamp_of(m) in sent for m in camera.depth), 15, "no depth from a mono16 camera",
               action=publish, period_s=0.3)
    depth = image_to_numpy_float(next(m for m in camera.depth if stamp_of(m) in sent))
    # the placeholder's depth is 1 + luminance: the stretched ramp runs from black to white across the image
    assert depth[:, :20].mean() < 1.1 and depth[:, -20:].mean() > 1.9


def test_cameras_with_different_resolutions_form_one_window(start_node, ros_client):
    names = [f"res_{uuid.uuid4().hex[:6]}", f"res_{uuid.uuid4().hex[:6]}"]
    sizes = {names[0]: (640, 480), names[1]: (320, 180)}
    node = start_node(backend="placeholder", cameras=names, input_qos="reliable", sync_slop_s=0.05)
    depth = {name: ros_client.collect(Image, f"/g2vlm/{name}/depth_relative", RELIABLE) for name in names}
    publishers = {name: ros_client.node.create_publisher(Image, f"/{name}/image_raw", RELIABLE) for name in names}

    def publish_pair() -> None:
        header = Header()
        header.stamp = ros_client.node.get_clock().now().to_msg()
        for name in names:
            width, height = sizes[name]
            publishers[name].publish(rgb_image(COLOUR, Header(stamp=header.stamp, frame_id=f"{name}_optical"),
                                               width=width, height=height))

    wait_until(lambda: all(depth.values()), 15, "no depth for both cameras", action=publish_pair, period_s=0.3)
    for name in names:
        message = depth[name][-1]
        assert (message.width, message.height) == sizes[name]  # each camera's depth at its own resolution
        np.testing.assert_allclose(image_to_numpy_float(message), expected_depth(COLOUR), rtol=0.05)
    assert node.alive()


def test_an_empty_frame_id_is_accepted_when_the_camera_parameter_names_the_frame(start_node, ros_client):
    name = f"named_{uuid.uuid4().hex[:6]}"
    start_node(backend="placeholder", cameras=[name], input_qos="reliable", **{f"{name}.frame_id": "lens_optical"})
    depth = ros_client.collect(Image, f"/g2vlm/{name}/depth_relative", RELIABLE)
    publisher = ros_client.node.create_publisher(Image, f"/{name}/image_raw", RELIABLE)

    def publish() -> None:
        header = Header()
        header.stamp = ros_client.node.get_clock().now().to_msg()
        publisher.publish(rgb_image(COLOUR, header))  # frame_id ""

    wait_until(lambda: depth, 15, "no depth for a frame named by the parameter", action=publish, period_s=0.3)
    assert depth[-1].header.frame_id == "lens_optical"
