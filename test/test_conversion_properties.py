"""Property-based tests (hypothesis) of the message conversions and the point cloud packer: round trips are
exact for every size, layout and value, and malformed messages raise ImageConversionError, never anything else.
"""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sensor_msgs.msg import CompressedImage, Image, PointCloud2
from std_msgs.msg import Header
from test_conversions import round_trip

from g2vlm_ros.ros.conversions import (
    ImageConversionError,
    compressed_to_rgb,
    depth_image_to_metres,
    image_to_numpy_float,
    image_to_rgb,
    numpy_to_image,
    pack_point_cloud,
    pack_rgb_float,
    unpack_point_cloud,
    unpack_rgb_float,
)

PROPERTIES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# encoding -> (bytes per pixel, how the pixel bytes are made from RGB)
LAYOUTS = {
    "rgb8": (3, lambda rgb: rgb),
    "bgr8": (3, lambda rgb: rgb[..., ::-1]),
    "rgba8": (4, lambda rgb: np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=-1)),
    "bgra8": (4, lambda rgb: np.concatenate([rgb[..., ::-1], np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=-1)),
}
sizes = st.tuples(st.integers(1, 24), st.integers(1, 24))


def with_padding(pixels: np.ndarray, padding: int) -> tuple[bytes, int]:
    """Row bytes followed by `padding` junk bytes per row (drivers align rows), and the resulting step."""
    rows = pixels.reshape(pixels.shape[0], -1)
    padded = np.concatenate([rows, np.full((rows.shape[0], padding), 0xAB, np.uint8)], axis=1)
    return padded.tobytes(), padded.shape[1]


@PROPERTIES
@given(size=sizes, encoding=st.sampled_from(sorted(LAYOUTS)), padding=st.integers(0, 9), data=st.data())
def test_colour_images_convert_exactly_for_any_size_layout_and_padding(size, encoding, padding, data):
    height, width = size
    rgb = data.draw(arrays(np.uint8, (height, width, 3)))
    channels, layout = LAYOUTS[encoding]
    payload, step = with_padding(np.ascontiguousarray(layout(rgb)), padding)
    msg = round_trip(Image(encoding=encoding, height=height, width=width, step=step, data=payload))
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


@PROPERTIES
@given(size=sizes, padding=st.integers(0, 9), data=st.data())
def test_mono8_becomes_equal_channels(size, padding, data):
    grey = data.draw(arrays(np.uint8, size))
    payload, step = with_padding(grey, padding)
    rgb = image_to_rgb(Image(encoding="mono8", height=size[0], width=size[1], step=step, data=payload))
    np.testing.assert_array_equal(rgb, np.repeat(grey[..., None], 3, axis=-1))


@PROPERTIES
@given(size=sizes, bigendian=st.booleans(), padding=st.sampled_from([0, 2, 6]), data=st.data())
def test_mono16_keeps_the_order_of_grey_levels_in_either_byte_order(size, bigendian, padding, data):
    grey = data.draw(arrays(np.uint16, size))
    words = grey.astype(">u2" if bigendian else "<u2")
    payload, step = with_padding(words.view(np.uint8).reshape(size[0], -1), padding)
    rgb = image_to_rgb(Image(encoding="mono16", height=size[0], width=size[1], step=step,
                             is_bigendian=int(bigendian), data=payload))
    out = rgb[..., 0].astype(int).ravel()
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    order = np.argsort(grey.ravel(), kind="stable")
    assert (np.diff(out[order]) >= 0).all()  # brighter stays at least as bright: a monotonic stretch


@PROPERTIES
@given(encoding=st.sampled_from(["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "32FC1", "yuv422", "", "RGB8"]),
       width=st.integers(0, 40), height=st.integers(0, 40), step=st.integers(0, 200), length=st.integers(0, 3000),
       bigendian=st.booleans())
def test_any_malformed_image_raises_a_conversion_error_and_nothing_else(encoding, width, height, step, length,
                                                                          bigendian):
    msg = Image(encoding=encoding, width=width, height=height, step=step, is_bigendian=int(bigendian),
                data=bytes(length))
    try:
        rgb = image_to_rgb(msg)
    except ImageConversionError:
        return
    assert rgb.shape == (height, width, 3) and rgb.dtype == np.uint8


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=512), fmt=st.sampled_from(["jpeg", "png", "rgb8; jpeg compressed bgr8", ""]))
def test_any_compressed_payload_decodes_or_raises_a_conversion_error(data, fmt):
    try:
        rgb = compressed_to_rgb(CompressedImage(format=fmt, data=data))
    except ImageConversionError:
        return
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8


@PROPERTIES
@given(size=sizes, data=st.data())
def test_numpy_images_round_trip_through_messages(size, data):
    rgb = data.draw(arrays(np.uint8, size + (3,)))
    depth = data.draw(arrays(np.float32, size, elements=st.floats(width=32, allow_nan=True, allow_infinity=True)))
    np.testing.assert_array_equal(image_to_rgb(round_trip(numpy_to_image(rgb, "rgb8", Header()))), rgb)
    back = image_to_numpy_float(round_trip(numpy_to_image(depth, "32FC1", Header())))
    np.testing.assert_array_equal(back, depth)  # NaN and +-inf included: equal positions, equal values


@PROPERTIES
@given(size=sizes, bigendian=st.booleans(), data=st.data())
def test_16_bit_depth_is_millimetres_and_zero_is_invalid(size, bigendian, data):
    millimetres = data.draw(arrays(np.uint16, size))
    msg = Image(encoding="16UC1", height=size[0], width=size[1], step=size[1] * 2, is_bigendian=int(bigendian),
                data=millimetres.astype(">u2" if bigendian else "<u2").tobytes())
    metres = depth_image_to_metres(msg)
    valid = millimetres > 0
    np.testing.assert_allclose(metres[valid], millimetres[valid] / 1000.0)
    assert np.isnan(metres[~valid]).all()


@settings(max_examples=100, deadline=None)
@given(colors=arrays(np.uint8, st.tuples(st.integers(0, 300), st.just(3))))
def test_rgb_packing_is_lossless(colors):
    np.testing.assert_array_equal(unpack_rgb_float(pack_rgb_float(colors)), colors)


@PROPERTIES
@given(count=st.integers(0, 400), with_confidence=st.booleans(), data=st.data())
def test_point_clouds_round_trip_exactly_with_a_consistent_layout(count, with_confidence, data):
    any_float = st.floats(width=32, allow_nan=True, allow_infinity=True)
    points = data.draw(arrays(np.float32, (count, 3), elements=any_float))
    colors = data.draw(arrays(np.uint8, (count, 3)))
    confidence = data.draw(arrays(np.float32, (count,), elements=st.floats(0, 1, width=32))) if with_confidence \
        else None
    msg = round_trip(pack_point_cloud(points, colors, confidence, Header(frame_id="world")))
    assert isinstance(msg, PointCloud2) and msg.height == 1 and msg.width == count
    assert msg.row_step == msg.point_step * msg.width and len(msg.data) == msg.row_step * msg.height
    assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb"] + (["confidence"] if with_confidence else [])
    cloud = unpack_point_cloud(msg)
    np.testing.assert_array_equal(np.stack([cloud["x"], cloud["y"], cloud["z"]], axis=-1), points)
    np.testing.assert_array_equal(unpack_rgb_float(cloud["rgb"]), colors)
    if with_confidence:
        np.testing.assert_array_equal(cloud["confidence"], confidence)
