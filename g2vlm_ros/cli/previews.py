"""Files a person can look at: colour-mapped depth PNGs and PLY point clouds (numpy + Pillow)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# Control points of a perceptually ordered dark-blue -> yellow map (close to viridis).
_COLORMAP = np.array([
    [68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32)


def colorize(values: np.ndarray, invalid_rgb=(0, 0, 0)) -> np.ndarray:
    """Maps [H,W] floats to RGB uint8 using the 2nd-98th percentile range; non-finite -> invalid_rgb."""
    finite = np.isfinite(values)
    rgb = np.empty(values.shape + (3,), np.uint8)
    rgb[:] = invalid_rgb
    if not finite.any():
        return rgb
    low, high = np.percentile(values[finite], [2, 98])
    scaled = np.clip((values[finite] - low) / max(high - low, 1e-12), 0, 1) * (len(_COLORMAP) - 1)
    index = np.minimum(scaled.astype(np.int64), len(_COLORMAP) - 2)
    fraction = (scaled - index)[:, None]
    rgb[finite] = (_COLORMAP[index] * (1 - fraction) + _COLORMAP[index + 1] * fraction).astype(np.uint8)
    return rgb


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
