"""A top-down picture of a point cloud and the cameras that saw it, like a floor plan.

"Up" is the cameras' mean -y axis (the optical frames' y points down), so a roughly level camera
gives a true bird's-eye view whatever the world frame. Points far above the highest camera
(ceilings) are left out, because from above they would hide the whole room; the others are
drawn lowest first, so what is higher covers what is below, as seen from above.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from g2vlm_ros.cli.previews import CAPTION_HEIGHT, font

CANVAS = 760  # pixels on the longer side of the plot
MIN_WIDTH = 760  # room for the caption below a narrow plot
MARGIN = 30
CEILING_CUT = 0.3  # drop points this much (times the median camera distance) above the highest camera
PATH_RGB = (230, 30, 30)
TRUE_RGB = (20, 150, 60)


def view_axes(camera_to_world: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors (right, forward, up) of the top-down view from camera poses [V,4,4]."""
    up = -camera_to_world[:, :3, 1].mean(axis=0)
    up /= np.linalg.norm(up)
    forward = camera_to_world[0, :3, 2] - up * (camera_to_world[0, :3, 2] @ up)
    if np.linalg.norm(forward) < 1e-6:  # the first camera looks straight down: use its image's up
        forward = -camera_to_world[0, :3, 1] - up * (-camera_to_world[0, :3, 1] @ up)
    forward /= np.linalg.norm(forward)
    return np.cross(forward, up), forward, up


def nice_length(span: float) -> float:
    """A round length (1, 2 or 5 times a power of ten) near a fifth of `span`, for the scale bar."""
    target = max(span / 5.0, 1e-9)
    power = 10.0 ** math.floor(math.log10(target))
    return min((step * power for step in (1.0, 2.0, 5.0, 10.0)), key=lambda length: abs(length - target))


def render_topdown(points: np.ndarray, colors: np.ndarray, camera_to_world: np.ndarray, unit: str,
                   caption: str, true_camera_to_world: Optional[np.ndarray] = None) -> np.ndarray:
    """points [M,3], colors [M,3] uint8, camera_to_world [V,4,4] in path order -> RGB uint8 image; a true path
    [T,4,4] in the same frame, when given, is drawn as a thin green line over the estimated one."""
    from PIL import Image, ImageDraw

    finite = np.isfinite(points).all(axis=1)
    points, colors = points[finite], colors[finite]
    right, forward, up = view_axes(camera_to_world)
    centres = camera_to_world[:, :3, 3]
    plane = np.stack([points @ right, points @ forward], axis=1)
    height = points @ up
    cameras = np.stack([centres @ right, centres @ forward], axis=1)
    reach = float(np.median(np.linalg.norm(points - centres[:1], axis=1))) if len(points) else 1.0
    keep = height <= (centres @ up).max() + CEILING_CUT * reach
    plane, height, colors = plane[keep], height[keep], colors[keep]

    # extent: the bulk of the points (a few stray far points would shrink everything else) and every camera
    corners = [cameras]
    truth = None
    if true_camera_to_world is not None and len(true_camera_to_world):
        true_centres = true_camera_to_world[:, :3, 3]
        truth = np.stack([true_centres @ right, true_centres @ forward], axis=1)
        corners.append(truth)
    if len(plane):
        corners.append(np.percentile(plane, [1, 99], axis=0))
    low, high = np.min(np.concatenate(corners), axis=0), np.max(np.concatenate(corners), axis=0)
    span = np.maximum(high - low, 1e-6) * 1.08
    centre = (low + high) / 2
    pixels_per_unit = (CANVAS - 2 * MARGIN) / span.max()
    size = np.ceil(span * pixels_per_unit).astype(int) + 2 * MARGIN
    size[0] = max(size[0], MIN_WIDTH)  # the plot stays centred

    def to_pixel(xy: np.ndarray) -> np.ndarray:  # forward is up in the picture
        return np.stack([(xy[:, 0] - centre[0]) * pixels_per_unit + size[0] / 2,
                         size[1] / 2 - (xy[:, 1] - centre[1]) * pixels_per_unit], axis=1)

    canvas = np.full((size[1], size[0], 3), 255, np.uint8)
    order = np.argsort(height)  # lowest first: higher points are drawn over them
    pixel = np.round(to_pixel(plane[order])).astype(int)
    inside = (pixel[:, 0] >= 0) & (pixel[:, 0] < size[0] - 1) & (pixel[:, 1] >= 0) & (pixel[:, 1] < size[1] - 1)
    pixel, point_colors = pixel[inside], colors[order][inside]
    for dy in (0, 1):  # 2x2 dots: a sparse cloud still reads as surfaces
        for dx in (0, 1):
            canvas[pixel[:, 1] + dy, pixel[:, 0] + dx] = point_colors

    image = Image.new("RGB", (size[0], size[1] + CAPTION_HEIGHT), "white")
    image.paste(Image.fromarray(canvas), (0, 0))
    draw = ImageDraw.Draw(image)
    camera_pixels = to_pixel(cameras)
    if len(camera_pixels) > 1:
        draw.line([tuple(p) for p in camera_pixels], fill=PATH_RGB, width=3)
    if truth is not None and len(truth) > 1:  # thinner and on top: where the two agree, both stay visible
        draw.line([tuple(p) for p in to_pixel(truth)], fill=TRUE_RGB, width=2)
    headings = np.stack([camera_to_world[:, :3, 2] @ right, camera_to_world[:, :3, 2] @ forward], axis=1)
    for index, (point, heading) in enumerate(zip(camera_pixels, headings, strict=True)):
        _draw_camera(draw, point, heading, filled=index == len(camera_pixels) - 1)
    _draw_scale_bar(draw, size, pixels_per_unit, span.max(), unit)
    draw.multiline_text((6, size[1] + 4), caption, fill="black", font=font(14), spacing=3)
    return np.asarray(image)


def _draw_camera(draw, point: np.ndarray, heading: np.ndarray, filled: bool) -> None:
    """A triangle pointing where the camera looks (picture up = forward); the newest one filled."""
    direction = np.array([heading[0], -heading[1]])
    norm = np.linalg.norm(direction)
    direction = direction / norm if norm > 1e-6 else np.array([0.0, -1.0])
    side = np.array([-direction[1], direction[0]])
    tip = point + 16 * direction
    corners = [tuple(tip), tuple(point + 7 * side - 4 * direction), tuple(point - 7 * side - 4 * direction)]
    draw.polygon(corners, fill=PATH_RGB if filled else None, outline=PATH_RGB, width=2)


def _draw_scale_bar(draw, size: np.ndarray, pixels_per_unit: float, span: float, unit: str) -> None:
    length = nice_length(span)
    x0, y = 12, size[1] - 14
    x1 = x0 + length * pixels_per_unit
    draw.line([(x0, y), (x1, y)], fill="black", width=3)
    draw.text((x0, y - 18), f"{length:g} {unit}", fill="black", font=font(13))
