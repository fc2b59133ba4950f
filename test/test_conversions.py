"""Image and point cloud conversions against hand-computed values and real message round trips."""
import io
import struct

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

from g2vlm_ros.ros.conversions import (
    ImageConversionError,
    compressed_to_rgb,
    image_to_numpy_float,
    image_to_rgb,
    numpy_to_image,
    pack_point_cloud,
    pack_rgb_float,
    unpack_point_cloud,
    unpack_rgb_float,
)


def make_image(encoding: str, width: int, height: int, step: int, data: bytes) -> Image:
    return Image(encoding=encoding, width=width, height=height, step=step, data=data)


def round_trip(msg):
    return deserialize_message(serialize_message(msg), type(msg))


# A 2x2 image with four distinct colours, row-major: red, green / blue, white-ish.
RGB_2X2 = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]], dtype=np.uint8)


@pytest.mark.parametrize("encoding, pixel_bytes", [
    ("rgb8", lambda r, g, b: [r, g, b]),
    ("bgr8", lambda r, g, b: [b, g, r]),
    ("rgba8", lambda r, g, b: [r, g, b, 77]),
    ("bgra8", lambda r, g, b: [b, g, r, 77]),
])
def test_colour_encodings_to_rgb(encoding, pixel_bytes):
    data = bytes(value for row in RGB_2X2 for pixel in row for value in pixel_bytes(*pixel))
    channels = len(pixel_bytes(0, 0, 0))
    msg = round_trip(make_image(encoding, 2, 2, 2 * channels, data))
    np.testing.assert_array_equal(image_to_rgb(msg), RGB_2X2)


def test_mono8_replicates_grey_into_three_channels():
    msg = make_image("mono8", 3, 1, 3, bytes([0, 100, 255]))
    np.testing.assert_array_equal(image_to_rgb(msg), [[[0, 0, 0], [100, 100, 100], [255, 255, 255]]])


@pytest.mark.parametrize("bigendian", [False, True])
def test_mono16_is_stretched_to_eight_bits_in_its_byte_order(bigendian):
    # a 12-bit camera: values 0..4095 in 16-bit words, one row of padding bytes (step 10 for width 4)
    values = np.array([[0, 1000, 2000, 4095], [4095, 3000, 1000, 0]], dtype=">u2" if bigendian else "<u2")
    data = b"".join(row.tobytes() + b"\xff\xff" for row in values)
    msg = Image(encoding="mono16", width=4, height=2, step=10, is_bigendian=int(bigendian), data=data)
    rgb = image_to_rgb(round_trip(msg))
    assert rgb.shape == (2, 4, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    grey = rgb[..., 0].astype(int)
    expected = values.astype(float) * 255 / 4095  # the 0.5-99.5 percentile stretch of 0..4095
    assert np.abs(grey - expected).max() <= 12  # percentiles of 8 samples sit a little inside the range
    assert grey[0, 0] == 0 and grey[0, 3] == 255  # full contrast, not the dark image of a fixed 16-bit shift


def test_row_padding_in_step_is_skipped():
    # width 1, rgb8, step 5: each row is 3 pixel bytes + 2 padding bytes
    msg = make_image("rgb8", 1, 2, 5, bytes([1, 2, 3, 99, 99, 4, 5, 6, 99, 99]))
    np.testing.assert_array_equal(image_to_rgb(msg), [[[1, 2, 3]], [[4, 5, 6]]])


@pytest.mark.parametrize("msg, reason", [
    (make_image("yuv422", 2, 2, 4, bytes(8)), "unsupported encoding 'yuv422'; supported: rgb8"),
    (make_image("32FC1", 2, 2, 8, bytes(16)), "encoding '32FC1' is a float image (depth or disparity?)"),
    (make_image("mono16", 2, 2, 3, bytes(6)), "step 3 is smaller than width*channels = 4"),
    (make_image("mono16", 2, 2, 4, bytes(7)), "data has 7 bytes, expected step*height = 8"),
    (make_image("rgb8", 2, 2, 5, bytes(10)), "step 5 is smaller than width*channels = 6"),
    (make_image("rgb8", 2, 2, 6, bytes(11)), "data has 11 bytes, expected step*height = 12"),
    (make_image("rgb8", 0, 0, 0, b""), "empty image (0x0)"),
    (make_image("rgb8", 100000, 100000, 300000, b""), "exceeds"),
])
def test_inconsistent_images_are_refused_with_the_reason(msg, reason):
    with pytest.raises(ImageConversionError, match=None) as caught:
        image_to_rgb(msg)
    assert reason in str(caught.value)


def test_compressed_png_decodes_to_the_same_pixels():
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.fromarray(RGB_2X2).save(buffer, format="PNG")
    msg = round_trip(CompressedImage(format="png", data=buffer.getvalue()))
    np.testing.assert_array_equal(compressed_to_rgb(msg), RGB_2X2)


@pytest.mark.parametrize("data", [b"", b"not an image at all"])
def test_compressed_garbage_is_refused(data):
    with pytest.raises(ImageConversionError):
        compressed_to_rgb(CompressedImage(format="jpeg", data=data))


def test_float_depth_image_round_trip_keeps_values_header_and_nan():
    depth = np.array([[1.5, np.nan, 3.25], [0.0, 2.0, 1e-3]], dtype=np.float32)
    header = Header(frame_id="cam_optical")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = round_trip(numpy_to_image(depth, "32FC1", header))
    assert (msg.encoding, msg.width, msg.height, msg.step, msg.is_bigendian) == ("32FC1", 3, 2, 12, 0)
    assert (msg.header.frame_id, msg.header.stamp.sec, msg.header.stamp.nanosec) == ("cam_optical", 12, 345)
    # hand check of the first value's bytes: 1.5f little-endian
    assert bytes(msg.data[:4]) == struct.pack("<f", 1.5)
    np.testing.assert_array_equal(image_to_numpy_float(msg), depth)


def test_rgb8_image_round_trip():
    msg = round_trip(numpy_to_image(RGB_2X2, "rgb8", Header()))
    np.testing.assert_array_equal(image_to_rgb(msg), RGB_2X2)


def test_numpy_to_image_refuses_mismatched_arrays():
    with pytest.raises(ValueError):
        numpy_to_image(np.zeros((2, 2, 3), np.float32), "32FC1", Header())
    with pytest.raises(ValueError):
        numpy_to_image(np.zeros((2, 2)), "bgr8", Header())


def test_rgb_packing_matches_hand_computed_bits():
    packed = pack_rgb_float(np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [1, 2, 3]], np.uint8))
    assert packed.view(np.uint32).tolist() == [0xFF0000, 0x00FF00, 0x0000FF, 0x010203]
    np.testing.assert_array_equal(unpack_rgb_float(packed), [[255, 0, 0], [0, 255, 0], [0, 0, 255], [1, 2, 3]])


def test_point_cloud_layout_and_round_trip():
    points = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, np.nan]], np.float32)
    colors = np.array([[255, 128, 0], [0, 0, 0]], np.uint8)
    confidence = np.array([0.9, 0.1], np.float32)
    msg = round_trip(pack_point_cloud(points, colors, confidence, Header(frame_id="g2vlm_world")))
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, PointField.FLOAT32, 1), ("y", 4, PointField.FLOAT32, 1), ("z", 8, PointField.FLOAT32, 1),
        ("rgb", 12, PointField.FLOAT32, 1), ("confidence", 16, PointField.FLOAT32, 1)]
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 2, 20, 40)
    assert msg.is_dense is False and msg.is_bigendian is False
    # hand check of the first point's bytes
    assert bytes(msg.data[:20]) == struct.pack("<fffIf", 1.0, 2.0, 3.0, 0xFF8000, 0.9)
    cloud = unpack_point_cloud(msg)
    np.testing.assert_array_equal(np.stack([cloud["x"], cloud["y"], cloud["z"]], -1), points)
    np.testing.assert_array_equal(unpack_rgb_float(cloud["rgb"]), colors)
    np.testing.assert_array_equal(cloud["confidence"], confidence)


def test_point_cloud_without_confidence_omits_the_field():
    msg = pack_point_cloud(np.zeros((3, 3), np.float32), np.zeros((3, 3), np.uint8), None, Header())
    assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb"] and msg.point_step == 16
    assert len(unpack_point_cloud(round_trip(msg))) == 3


def test_empty_point_cloud_is_valid():
    msg = round_trip(pack_point_cloud(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), None, Header()))
    assert msg.width == 0 and len(msg.data) == 0 and isinstance(msg, PointCloud2)
