"""Pinhole camera math in the OpenCV / ROS optical convention (x right, y down, z forward).

All functions are vectorised numpy. Pixel centres sit at integer coordinates (u, v), which is the
convention of sensor_msgs/CameraInfo's K matrix.
"""
from __future__ import annotations

import functools

import numpy as np


def intrinsics_from_fov(width: int, height: int, horizontal_fov_rad: float) -> np.ndarray:
    """Returns a 3x3 K with square pixels and the principal point at the image centre."""
    focal = 0.5 * width / np.tan(0.5 * horizontal_fov_rad)
    return np.array(
        [[focal, 0.0, (width - 1) / 2.0], [0.0, focal, (height - 1) / 2.0], [0.0, 0.0, 1.0]],
        dtype=np.float64,
    )


def backproject_depth(depth: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """Lifts a depth map [H,W] (z along the optical axis) to camera-frame points [H,W,3]."""
    height, width = depth.shape
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    z = depth.astype(np.float64)
    points = np.stack(((u - cx) / fx * z, (v - cy) / fy * z, z), axis=-1)
    return points.astype(np.float32)


def transform_points(camera_to_world: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Applies a 4x4 rigid transform to points [...,3]."""
    rotation, translation = camera_to_world[:3, :3], camera_to_world[:3, 3]
    return (points @ rotation.T + translation).astype(points.dtype)


def scale_intrinsics(intrinsics: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Rescales K from an image of (width, height) `from_size` to `to_size`.

    Pixel centres map as u' = (u + 0.5) * sx - 0.5, which keeps the principal point consistent
    when an image is resized (the same rule the resampling below uses).
    """
    sx = to_size[0] / from_size[0]
    sy = to_size[1] / from_size[1]
    scaled = intrinsics.astype(np.float64).copy()
    scaled[0, 0] *= sx
    scaled[1, 1] *= sy
    scaled[0, 2] = (intrinsics[0, 2] + 0.5) * sx - 0.5
    scaled[1, 2] = (intrinsics[1, 2] + 0.5) * sy - 0.5
    return scaled


def resize_nearest(image, width: int, height: int):
    """Nearest-neighbour resize of [H,W,...] to [height,width,...]; numpy array or torch tensor
    (a tensor stays on its device).

    Nearest (not bilinear) because depth must never be interpolated across object edges:
    blending a foreground and a background depth invents a surface that does not exist.
    """
    src_h, src_w = image.shape[:2]
    if isinstance(image, np.ndarray):
        rows = np.minimum(((np.arange(height) + 0.5) * src_h / height).astype(np.int64), src_h - 1)
        cols = np.minimum(((np.arange(width) + 0.5) * src_w / width).astype(np.int64), src_w - 1)
        return image[rows[:, None], cols[None, :]]
    return (image.index_select(0, _nearest_indices(height, src_h, image.device))
            .index_select(1, _nearest_indices(width, src_w, image.device)))


@functools.lru_cache(maxsize=32)
def _nearest_indices(count: int, source: int, device):
    """resize_nearest's source index per target index, as a tensor on `device`: made once per size (each
    window's depth is resized to its camera's size; making them costs four launches per axis)."""
    import torch  # only tensor callers pay for the import

    # the same float64 arithmetic as the numpy branch, made on the tensor's device (no upload)
    scaled = (torch.arange(count, dtype=torch.float64, device=device) + 0.5) * source / count
    return scaled.long().clamp_(max=source - 1)
