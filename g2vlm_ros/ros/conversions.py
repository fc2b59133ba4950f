"""numpy <-> sensor_msgs conversions, vectorised, with no cv_bridge dependency.

cv_bridge is not available everywhere (no ROS 2 build on PyPI), and these few encodings are
simple enough that owning them is cheaper than a fallback chain.
"""
from __future__ import annotations

import io
from typing import Optional

import numpy as np
from sensor_msgs.msg import CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header


class ImageConversionError(ValueError):
    """The message cannot be turned into an RGB image; the text says why."""


# encoding -> (channels, order of R,G,B within the pixel; None for grey)
COLOR_ENCODINGS: dict[str, tuple[int, Optional[tuple[int, int, int]]]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, None),
}
MAX_IMAGE_PIXELS = 7680 * 4320  # 8K: anything larger is refused before touching the data
GREY16_ENCODINGS = ("mono16",)  # 16-bit grey: thermal, IR and machine-vision cameras
# float images are depth or disparity maps, not camera images: a misconnected topic, said plainly
FLOAT_ENCODING_PREFIXES = ("32FC", "64FC", "16FC")
SUPPORTED_ENCODINGS = tuple(COLOR_ENCODINGS) + GREY16_ENCODINGS


def image_to_rgb(msg: Image) -> np.ndarray:
    """Converts an 8-bit colour or grey, or a 16-bit grey sensor_msgs/Image to an RGB uint8 array [H,W,3].

    Honours `step` (row padding) and refuses inconsistent messages instead of guessing.
    """
    encoding = msg.encoding.lower()
    if msg.encoding.upper().startswith(FLOAT_ENCODING_PREFIXES):
        raise ImageConversionError(
            f"encoding '{msg.encoding}' is a float image (depth or disparity?), not a camera image; "
            f"supported: {', '.join(SUPPORTED_ENCODINGS)}")
    if encoding in GREY16_ENCODINGS:
        return _grey16_to_rgb(msg)
    if encoding not in COLOR_ENCODINGS:
        raise ImageConversionError(
            f"unsupported encoding '{msg.encoding}'; supported: {', '.join(SUPPORTED_ENCODINGS)}"
        )
    channels, rgb_order = COLOR_ENCODINGS[encoding]
    row_bytes = int(msg.width) * channels
    pixels = _pixel_rows(msg, row_bytes).reshape(int(msg.height), int(msg.width), channels)
    if rgb_order is None:
        return np.repeat(pixels, 3, axis=2)
    if rgb_order == (0, 1, 2) and channels == 3:
        return np.ascontiguousarray(pixels)
    return np.ascontiguousarray(pixels[:, :, list(rgb_order)])


def _pixel_rows(msg: Image, row_bytes: int) -> np.ndarray:
    """The image's pixel bytes [H, row_bytes] without row padding, after checking that the size, step
    and data length agree (a message that contradicts itself is refused, never guessed at)."""
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ImageConversionError(f"empty image ({width}x{height})")
    if height * width > MAX_IMAGE_PIXELS:
        raise ImageConversionError(f"image {width}x{height} exceeds the {MAX_IMAGE_PIXELS}-pixel limit")
    if step < row_bytes:
        raise ImageConversionError(f"step {step} is smaller than width*channels = {row_bytes} for {msg.encoding}")
    if len(msg.data) != step * height:
        raise ImageConversionError(f"data has {len(msg.data)} bytes, expected step*height = {step * height}")
    # msg.data is an array('B') (or bytes): frombuffer wraps it without a copy
    return np.frombuffer(msg.data, dtype=np.uint8).reshape(height, step)[:, :row_bytes]


def _grey16_to_rgb(msg: Image) -> np.ndarray:
    return stretch_grey16(_values(msg, _pixel_rows(msg, int(msg.width) * 2), np.uint16))


def stretch_grey16(grey: np.ndarray) -> np.ndarray:
    """16-bit grey [H,W] -> RGB uint8, stretched per frame from the 0.5th to the 99.5th percentile, as image
    viewers show it: 16-bit cameras fill anywhere from 10 to 16 bits, so a fixed shift would leave many black.
    mono16 images and 16-bit PNGs share it, so a camera looks the same over either transport."""
    grey = grey.astype(np.float32)
    low, high = np.percentile(grey, [0.5, 99.5])
    scaled = np.clip((grey - low) * (255.0 / max(float(high - low), 1.0)), 0, 255).astype(np.uint8)
    return np.repeat(scaled[:, :, None], 3, axis=2)


# Only these two codecs are decoded: they are what image_transport's compressed plugin sends, and opening
# topic data with every Pillow plug-in would expose TIFF, EPS (Ghostscript) and other parsers to any publisher.
COMPRESSED_MAGIC = {"jpeg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n"}
CODEC_ALIASES = {"jpeg": "jpeg", "jpg": "jpeg", "png": "png"}
# codecs a `format` may name that are not decoded here; other words (or none) leave the choice to the data
OTHER_CODECS = ("tiff", "tif", "bmp", "gif", "webp", "eps", "avif", "qoi", "rvl", "zstd", "h264", "h265", "hevc")
GREY16_PIL_MODES = ("I;16", "I;16L", "I;16B", "I")  # a 16-bit grey PNG ("I" in older Pillow)


def compressed_to_rgb(msg: CompressedImage) -> np.ndarray:
    """Decodes a JPEG or PNG sensor_msgs/CompressedImage to RGB uint8 [H,W,3]; 16-bit grey PNGs are stretched
    like mono16.

    `format` is "jpeg", "png" or image_transport's "<encoding>; <codec> compressed <encoding>". Refused with
    the reason: compressedDepth (a depth map, and not plain PNG data), a float original encoding, a codec
    other than JPEG or PNG, and data that is neither. The data's signature decides between JPEG and PNG, so a
    stream labelled "jpeg" that carries PNG still decodes.
    """
    from PIL import Image as PILImage  # imported lazily: only compressed input needs Pillow

    codec = _check_compressed_format(msg.format)
    data = bytes(msg.data)
    if not data:
        raise ImageConversionError("compressed image has no data")
    detected = next((name for name, magic in COMPRESSED_MAGIC.items() if data.startswith(magic)), None)
    if detected is None:
        named = f"format '{msg.format}' says {codec.upper()}, but " if codec else f"format '{msg.format}': "
        raise ImageConversionError(f"{named}the data is neither JPEG nor PNG; only those two are decoded")
    try:
        with PILImage.open(io.BytesIO(data), formats=["JPEG", "PNG"]) as decoded:
            if decoded.width * decoded.height > MAX_IMAGE_PIXELS:
                raise ImageConversionError(f"image {decoded.width}x{decoded.height} exceeds the pixel limit")
            if decoded.mode in GREY16_PIL_MODES:
                return stretch_grey16(np.asarray(decoded))
            return np.asarray(decoded.convert("RGB"), dtype=np.uint8)
    except ImageConversionError:
        raise
    except PILImage.UnidentifiedImageError as error:  # its text names a BytesIO object: useless in a log
        raise ImageConversionError(f"cannot decode compressed image (format '{msg.format}'): "
                                   f"the data is not a readable {detected.upper()} image") from error
    except Exception as error:  # PIL raises many types for corrupt data
        raise ImageConversionError(f"cannot decode compressed image (format '{msg.format}'): {error}") from error


def _check_compressed_format(text: str) -> str:
    """The codec `format` names ("jpeg", "png", or "" when it names none), after refusing what is no camera
    image: compressedDepth, float encodings and codecs other than JPEG and PNG."""
    if "compresseddepth" in text.lower():
        raise ImageConversionError(
            f"format '{text}' is compressedDepth, a depth map, not a camera image; "
            "subscribe the camera to a colour or grey image topic")
    parts = [part.strip() for part in text.split(";")]
    encoding = parts[0].split()[0] if parts[0] else ""  # "32FC1; ..." or a bare "32FC1"
    if encoding.upper().startswith(FLOAT_ENCODING_PREFIXES):
        raise ImageConversionError(
            f"format '{text}' carries the float encoding {encoding} (depth or disparity?), not a camera image")
    words = parts[-1].lower().split()
    codec = words[0] if words else ""
    if codec in OTHER_CODECS:
        raise ImageConversionError(f"format '{text}' names {codec.upper()}; only JPEG and PNG are decoded")
    return CODEC_ALIASES.get(codec, "")


def numpy_to_image(array: np.ndarray, encoding: str, header: Header) -> Image:
    """Builds a sensor_msgs/Image from a contiguous array: 32FC1 [H,W] float32, rgb8 [H,W,3], mono8 [H,W]."""
    expected = {"32FC1": (np.float32, 2), "rgb8": (np.uint8, 3), "mono8": (np.uint8, 2)}
    if encoding not in expected:
        raise ValueError(f"numpy_to_image does not write encoding '{encoding}'")
    dtype, ndim = expected[encoding]
    if array.ndim != ndim or (ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"array of shape {array.shape} does not fit encoding {encoding}")
    array = np.ascontiguousarray(array, dtype=dtype)
    msg = Image()
    msg.header = header
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(np.little_endian is False)
    msg.step = int(array.strides[0])
    msg.data = array.tobytes()  # bytes, not ndarray: assigning an ndarray to uint8[] is ~300x slower
    return msg


def image_to_numpy_float(msg: Image) -> np.ndarray:
    """Reads a 32FC1 image into a float32 [H,W] array."""
    if msg.encoding != "32FC1":
        raise ImageConversionError(f"expected 32FC1, got '{msg.encoding}'")
    return _values(msg, _data_rows(msg, 4, "32FC1 image"), np.float32).astype(np.float32)


def _data_rows(msg: Image, bytes_per_pixel: int, what: str) -> np.ndarray:
    """The pixel bytes [H, W*bytes_per_pixel] of an output-side image (depth, confidence), checking only
    that step and data length hold them: unlike camera input (`_pixel_rows`), empty images pass."""
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if step < width * bytes_per_pixel or len(msg.data) != step * height:
        raise ImageConversionError(f"{what} {width}x{height} with step {step} does not hold its {len(msg.data)} bytes")
    return np.frombuffer(msg.data, dtype=np.uint8).reshape(height, step)[:, : width * bytes_per_pixel]


def _values(msg: Image, rows: np.ndarray, dtype) -> np.ndarray:
    """Unpadded pixel bytes [H, W*itemsize] as [H,W] values of `dtype` in the message's byte order."""
    typed = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
    return np.ascontiguousarray(rows).view(typed).reshape(int(msg.height), int(msg.width))


def depth_image_to_metres(msg: Image) -> np.ndarray:
    """A metric depth image as float64 metres [H,W], NaN where invalid (REP 118: 32FC1 metres with
    NaN/inf/0 invalid, or 16UC1 millimetres with 0 invalid, as RGB-D drivers publish)."""
    if msg.encoding == "32FC1":
        depth = image_to_numpy_float(msg).astype(np.float64)
    elif msg.encoding in ("16UC1", "mono16"):
        depth = _values(msg, _data_rows(msg, 2, "depth image"), np.uint16).astype(np.float64) * 1e-3
    else:
        raise ImageConversionError(f"depth image encoding '{msg.encoding}' is not 32FC1 (m) or 16UC1 (mm)")
    depth[~np.isfinite(depth) | (depth <= 0)] = np.nan
    return depth


def pack_rgb_float(colors: np.ndarray) -> np.ndarray:
    """Packs uint8 RGB [...,3] into float32 whose bits are 0x00RRGGBB (the PCL/RViz 'rgb' field)."""
    colors = colors.astype(np.uint32)
    packed = (colors[..., 0] << 16) | (colors[..., 1] << 8) | colors[..., 2]
    return packed.view(np.float32)


def unpack_rgb_float(rgb: np.ndarray) -> np.ndarray:
    """Inverse of pack_rgb_float: float32 [...] -> uint8 RGB [...,3]."""
    bits = np.ascontiguousarray(rgb, dtype=np.float32).view(np.uint32)
    return np.stack(((bits >> 16) & 0xFF, (bits >> 8) & 0xFF, bits & 0xFF), axis=-1).astype(np.uint8)


def pack_point_cloud(
    points: np.ndarray,
    colors: np.ndarray,
    confidence: Optional[np.ndarray],
    header: Header,
) -> PointCloud2:
    """Builds an unorganised PointCloud2 with fields x, y, z, rgb[, confidence] (all float32).

    points [M,3] float, colors [M,3] uint8, confidence [M] float or None (then the field is
    omitted rather than faked). Points are written as given; is_dense is False because callers
    may pass non-finite values.
    """
    count = int(points.shape[0])
    names = ["x", "y", "z", "rgb"] + (["confidence"] if confidence is not None else [])
    layout = np.dtype({"names": names, "formats": [np.float32] * len(names)})
    packed = np.empty(count, dtype=layout)
    packed["x"], packed["y"], packed["z"] = points[:, 0], points[:, 1], points[:, 2]
    packed["rgb"] = pack_rgb_float(colors)
    if confidence is not None:
        packed["confidence"] = confidence
    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = 1, count
    msg.fields = [
        PointField(name=name, offset=4 * index, datatype=PointField.FLOAT32, count=1)
        for index, name in enumerate(names)
    ]
    msg.is_bigendian = False
    msg.point_step = layout.itemsize
    msg.row_step = layout.itemsize * count
    msg.is_dense = False
    msg.data = packed.tobytes()
    return msg


_POINTFIELD_DTYPES = {
    PointField.INT8: np.int8, PointField.UINT8: np.uint8, PointField.INT16: np.int16,
    PointField.UINT16: np.uint16, PointField.INT32: np.int32, PointField.UINT32: np.uint32,
    PointField.FLOAT32: np.float32, PointField.FLOAT64: np.float64,
}


def unpack_point_cloud(msg: PointCloud2) -> np.ndarray:
    """Reads any PointCloud2 into a structured array keyed by field name (one scalar per field)."""
    endian = ">" if msg.is_bigendian else "<"
    layout = np.dtype({
        "names": [field.name for field in msg.fields],
        "formats": [np.dtype(_POINTFIELD_DTYPES[field.datatype]).newbyteorder(endian) for field in msg.fields],
        "offsets": [field.offset for field in msg.fields],
        "itemsize": msg.point_step,
    })
    return np.frombuffer(msg.data, dtype=layout, count=msg.width * msg.height)
