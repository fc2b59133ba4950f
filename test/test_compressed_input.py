"""CompressedImage camera input: `format` is honoured, only JPEG and PNG data is decoded, 16-bit PNGs look like
mono16, and depth or float payloads are refused with the reason. In-process: pure conversion logic."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image as PILImage
from sensor_msgs.msg import CompressedImage, Image

from g2vlm_ros.ros.conversions import ImageConversionError, compressed_to_rgb, image_to_rgb

# a 12-bit thermal-style frame: every value is above 255, so clipping to 8 bits would make it all white
GREY16 = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) % 3000 + 1000).astype(np.uint16)
RGB = np.stack([np.full((8, 8), 200), np.tile(np.arange(8) * 30, (8, 1)), np.full((8, 8), 40)], -1).astype(np.uint8)


def encoded(array: np.ndarray, codec: str) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format=codec)
    return buffer.getvalue()


def refusal(format_: str, data: bytes) -> str:
    with pytest.raises(ImageConversionError) as raised:
        compressed_to_rgb(CompressedImage(format=format_, data=data))
    return str(raised.value)


def test_a_16_bit_png_is_stretched_like_mono16():
    png = encoded(GREY16, "PNG")
    assert PILImage.open(io.BytesIO(png)).mode.startswith("I")  # really 16 bits on the wire
    mono16 = Image(encoding="mono16", width=64, height=48, step=128, data=GREY16.astype("<u2").tobytes())
    expected = image_to_rgb(mono16)
    for format_ in ("png", "mono16; png compressed mono16"):
        rgb = compressed_to_rgb(CompressedImage(format=format_, data=png))
        assert rgb.dtype == np.uint8 and rgb.shape == (48, 64, 3)
        np.testing.assert_array_equal(rgb, expected)
    assert rgb.min() == 0 and rgb.max() == 255 and len(np.unique(rgb)) > 200  # stretched, not clipped white


def test_depth_and_float_payloads_are_refused_with_the_reason():
    png16 = encoded(GREY16, "PNG")
    # compressed_depth_image_transport puts a 12-byte header before the PNG; either way it is a depth map
    for format_, data in (("16UC1; compressedDepth png", png16), ("16UC1; compressedDepth png", bytes(12) + png16),
                          ("32FC1; compressedDepth", bytes(12) + png16), ("16UC1; compressedDepth rvl", b"\0" * 40)):
        assert "compressedDepth, a depth map, not a camera image" in refusal(format_, data), format_
    for format_ in ("32FC1; png compressed 32FC1", "32FC1", "64FC1; jpeg compressed bgr8"):
        assert "float encoding" in refusal(format_, png16) and "not a camera image" in refusal(format_, png16)


def test_only_jpeg_and_png_data_is_decoded():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"
    for format_, data in (("jpeg", encoded(RGB, "TIFF")), ("", encoded(RGB, "GIF")), ("png", encoded(RGB, "BMP")),
                          ("jpeg", eps), ("", encoded(RGB, "WEBP"))):
        reason = refusal(format_, data)
        assert "the data is neither JPEG nor PNG; only those two are decoded" in reason, reason
    assert "format 'jpeg' says JPEG, but the data is neither" in refusal("jpeg", eps)
    assert "format 'tiff' names TIFF; only JPEG and PNG are decoded" in refusal("tiff", encoded(RGB, "TIFF"))
    assert refusal("png", b"\x89PNG\r\n\x1a\n" + bytes(40)).startswith("cannot decode compressed image")


def test_the_data_decides_between_jpeg_and_png_and_other_codecs_are_named():
    png, jpeg = encoded(RGB, "PNG"), encoded(RGB, "JPEG")
    for format_ in ("png", "jpeg", "", "rgb8; png compressed bgr8", "bgr8"):  # a mislabelled PNG is still a PNG
        np.testing.assert_array_equal(compressed_to_rgb(CompressedImage(format=format_, data=png)), RGB)
    for format_ in ("jpeg", "png", "rgb8; jpeg compressed bgr8", "JPG"):
        decoded = compressed_to_rgb(CompressedImage(format=format_, data=jpeg))
        assert np.abs(decoded.astype(int) - RGB).mean() < 8  # lossy (4.0 measured), but the same picture
    for format_, codec in (("bgr8; tiff compressed bgr8", "TIFF"), ("bmp", "BMP")):  # PNG data, wrong codec named
        assert f"names {codec}; only JPEG and PNG are decoded" in refusal(format_, png)
