"""Files a person can look at: colour-mapped depth and confidence beside the camera image, PLY
point clouds (numpy + Pillow). The top-down view of a cloud is in `topdown`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

# Control points of a perceptually ordered dark-blue -> yellow map (close to viridis).
_COLORMAP = np.array([
    [68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32)
CAPTION_HEIGHT = 44
BAR_WIDTH = 18


def font(size: int = 14):
    """Pillow's built-in font: scalable where Pillow has FreeType, else its small bitmap font."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no size argument
        return ImageFont.load_default()


def colorize(values: np.ndarray, invalid_rgb=(0, 0, 0), value_range: Optional[tuple[float, float]] = None
             ) -> np.ndarray:
    """Maps [H,W] floats to RGB uint8 over `value_range` (default: the 2nd-98th percentile range);
    non-finite values get `invalid_rgb`."""
    finite = np.isfinite(values)
    rgb = np.empty(values.shape + (3,), np.uint8)
    rgb[:] = invalid_rgb
    if not finite.any():
        return rgb
    low, high = value_range if value_range else display_range(values)
    scaled = np.clip((values[finite] - low) / max(high - low, 1e-12), 0, 1) * (len(_COLORMAP) - 1)
    index = np.minimum(scaled.astype(np.int64), len(_COLORMAP) - 2)
    fraction = (scaled - index)[:, None]
    rgb[finite] = (_COLORMAP[index] * (1 - fraction) + _COLORMAP[index + 1] * fraction).astype(np.uint8)
    return rgb


def display_range(values: np.ndarray) -> tuple[float, float]:
    """The 2nd-98th percentile of the finite values: a few outliers do not wash out the map."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(finite, [2, 98])
    return float(low), float(high)


def with_colorbar(rgb: np.ndarray, low: float, high: float, label: str) -> np.ndarray:
    """Appends a vertical colour bar with its end values and `label` to a colour-mapped image."""
    from PIL import Image, ImageDraw

    height = rgb.shape[0]
    ramp = np.linspace(high, low, height, dtype=np.float32)[:, None].repeat(BAR_WIDTH, axis=1)
    bar = colorize(ramp, value_range=(low, high))
    canvas = Image.new("RGB", (rgb.shape[1] + BAR_WIDTH + 80, height), "white")
    canvas.paste(Image.fromarray(rgb), (0, 0))
    canvas.paste(Image.fromarray(bar), (rgb.shape[1] + 6, 0))
    draw, text_x = ImageDraw.Draw(canvas), rgb.shape[1] + BAR_WIDTH + 10
    draw.text((text_x, 2), f"{high:.3g}", fill="black", font=font(13))
    draw.text((text_x, height - 18), f"{low:.3g}", fill="black", font=font(13))
    draw.text((text_x, height // 2 - 8), label, fill="black", font=font(13))
    return np.asarray(canvas)


def side_by_side(left: np.ndarray, right: np.ndarray, caption: str) -> np.ndarray:
    """Two images on one row (the left one scaled to the right one's height), a caption below."""
    from PIL import Image, ImageDraw

    height = right.shape[0]
    left_image = Image.fromarray(left)
    if left_image.height != height:
        left_image = left_image.resize((round(left_image.width * height / left_image.height), height))
    canvas = Image.new("RGB", (left_image.width + 8 + right.shape[1], height + CAPTION_HEIGHT), "white")
    canvas.paste(left_image, (0, 0))
    canvas.paste(Image.fromarray(right), (left_image.width + 8, 0))
    ImageDraw.Draw(canvas).multiline_text((6, height + 4), caption, fill="black", font=font(14), spacing=3)
    return np.asarray(canvas)


def depth_preview(camera_rgb: np.ndarray, depth: np.ndarray, unit: str, caption: str) -> np.ndarray:
    """Camera image | colour-mapped depth (near = dark, far = yellow) with a colour bar in `unit`."""
    low, high = display_range(depth)
    mapped = with_colorbar(colorize(depth, value_range=(low, high)), low, high, unit)
    return side_by_side(camera_rgb, mapped, caption)


def confidence_preview(camera_rgb: np.ndarray, confidence: np.ndarray, caption: str) -> np.ndarray:
    """Camera image | confidence on a fixed 0..1 scale, so previews of different windows compare."""
    mapped = with_colorbar(colorize(confidence, value_range=(0.0, 1.0)), 0.0, 1.0, "conf.")
    return side_by_side(camera_rgb, mapped, caption)


def save_png(rgb: np.ndarray, path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def save_ply(points: np.ndarray, colors: np.ndarray, path: Path) -> Path:
    """Writes a binary little-endian PLY with float xyz and uchar rgb vertices."""
    layout = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vertices = np.empty(len(points), layout)
    vertices["x"], vertices["y"], vertices["z"] = points[:, 0], points[:, 1], points[:, 2]
    vertices["red"], vertices["green"], vertices["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(points)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        file.write(header.encode("ascii"))
        file.write(vertices.tobytes())
    return path
