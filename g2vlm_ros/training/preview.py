"""A PNG contact sheet of a SceneBatch, so a person can check at a glance what the generator produces.

Rows are batch items, columns are views. Each cell shows the rendered image and, below it, the depth map through a
small built-in colormap (near = bright yellow, far = dark blue-violet). The depth range is shared by all views of an
item, so the same colour means the same depth across a row.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from g2vlm_ros.training.scenes import SceneBatch

# Anchors of a dark-to-bright perceptual ramp (violet -> magenta -> orange -> yellow), interpolated linearly.
_COLORMAP_ANCHORS = np.array([
    [0.05, 0.03, 0.25],
    [0.35, 0.05, 0.50],
    [0.70, 0.15, 0.45],
    [0.95, 0.45, 0.20],
    [0.99, 0.85, 0.30],
    [0.99, 1.00, 0.70],
])
_GAP = 4  # pixels of white between cells


def colorize_depth(depth: np.ndarray, near: float, far: float) -> np.ndarray:
    """depth [...] -> RGB uint8 [..., 3]; near maps to the bright end, far to the dark end."""
    scale = np.clip((far - depth) / max(far - near, 1e-9), 0.0, 1.0) * (len(_COLORMAP_ANCHORS) - 1)
    low = np.minimum(np.floor(scale).astype(np.int64), len(_COLORMAP_ANCHORS) - 2)
    frac = (scale - low)[..., None]
    rgb = _COLORMAP_ANCHORS[low] * (1.0 - frac) + _COLORMAP_ANCHORS[low + 1] * frac
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def save_preview(batch: SceneBatch, path: str | Path) -> Path:
    """Writes the image / depth grid of `batch` as a PNG to `path` and returns the path."""
    images = (batch.images.detach().float().cpu().clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    depth = batch.depth.detach().float().cpu().numpy()
    items, views, _, height, width = images.shape
    cell_h, cell_w = 2 * height + _GAP // 2, width
    sheet = np.full((items * (cell_h + _GAP) + _GAP, views * (cell_w + _GAP) + _GAP, 3), 255, dtype=np.uint8)
    for b in range(items):
        finite = depth[b][np.isfinite(depth[b])]
        near, far = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        for v in range(views):
            top = _GAP + b * (cell_h + _GAP)
            left = _GAP + v * (cell_w + _GAP)
            sheet[top:top + height, left:left + width] = images[b, v].transpose(1, 2, 0)
            below = top + height + _GAP // 2
            sheet[below:below + height, left:left + width] = colorize_depth(depth[b, v], near, far)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)
    return path
