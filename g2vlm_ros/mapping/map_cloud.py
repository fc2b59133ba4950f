"""The accumulated map cloud, kept per keyframe so that it follows the optimized poses.

Each keyframe's points are voxel-downsampled once, when the keyframe enters the map, and stored in that
keyframe's camera frame, in its stored unit (its node scale turns that into map units). The map cloud is never a
fused blob in the map frame: `build` scales and transforms every keyframe's points by its current optimized
node and voxel-downsamples the union, so a loop closure that moves or rescales keyframes moves their points
with them. Building costs one pass over the stored points (a few tens of
milliseconds per 100 000 points): meant for <= 1 Hz publishing and saving, not for every window.

Memory policy (`max_points`): the stored points of all keyframes together never exceed the budget. When a new
keyframe would exceed it, the points of the oldest keyframes are evicted first, whole keyframes at a time, until
it fits; the evicted keyframes keep their poses in the graph and the trajectory, only their points leave the
cloud. A single keyframe larger than the whole budget is thinned evenly to fit.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

_MAX_INDEX = 2.0 ** 20  # voxel indices per axis packed into one int64 key (21 bits each, signed offset)


def voxel_downsample(points: np.ndarray, colors: np.ndarray, voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """One point per occupied voxel (grid anchored at the origin): the mean position and the mean colour.

    points [M,3] finite float, colors [M,3] uint8 -> (points [V,3] float32, colors [V,3] uint8), sorted by
    voxel. voxel_size <= 0 returns the inputs as float32/uint8 copies.
    """
    points = np.asarray(points)
    colors = np.asarray(colors)
    if points.ndim != 2 or points.shape[1] != 3 or colors.shape != points.shape or colors.dtype != np.uint8:
        raise ValueError(f"points must be [M,3] and colors [M,3] uint8, got {points.shape} and "
                         f"{colors.dtype} {colors.shape}")
    if not np.isfinite(voxel_size):
        raise ValueError(f"voxel_size must be finite, got {voxel_size}")
    if voxel_size <= 0 or len(points) == 0:
        return points.astype(np.float32), colors.copy()
    index = np.floor(points.astype(np.float64) / voxel_size)
    low = index.min(0)
    offset = index - low
    if offset.max() >= _MAX_INDEX:
        raise ValueError(f"the cloud spans more than {int(_MAX_INDEX)} voxels of {voxel_size} along an axis")
    offset = offset.astype(np.int64)
    key = (offset[:, 0] << 42) | (offset[:, 1] << 21) | offset[:, 2]
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    sums = np.stack([np.bincount(inverse, points[:, axis], len(counts)) for axis in range(3)], 1)
    mean_points = sums / counts[:, None]
    color_sums = np.stack([np.bincount(inverse, colors[:, channel], len(counts)) for channel in range(3)], 1)
    mean_colors = np.floor(color_sums / counts[:, None] + 0.5).clip(0, 255).astype(np.uint8)
    return mean_points.astype(np.float32), mean_colors


class MapCloud:
    """Per-keyframe voxelized points in the keyframe's camera frame, under a total point budget."""

    def __init__(self, voxel_size: float, max_points: int):
        if not np.isfinite(voxel_size) or voxel_size < 0:
            raise ValueError(f"voxel_size must be finite and >= 0, got {voxel_size}")
        if max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {max_points}")
        self.voxel_size = float(voxel_size)
        self.max_points = int(max_points)
        self._keyframes: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()  # oldest first
        self._stored = 0
        self.evicted_keyframes = 0

    @property
    def stored_points(self) -> int:
        return self._stored

    @property
    def keyframes(self) -> int:
        return len(self._keyframes)

    def clear(self) -> None:
        self._keyframes.clear()
        self._stored = 0
        self.evicted_keyframes = 0

    def add(self, node: int, local_points: np.ndarray, colors: np.ndarray) -> int:
        """Stores one keyframe's valid points [M,3] (its camera frame, map units) with colours; returns how many."""
        points, colors = voxel_downsample(local_points, colors, self.voxel_size)
        if len(points) > self.max_points:
            keep = np.linspace(0, len(points) - 1, self.max_points).astype(np.int64)
            points, colors = points[keep], colors[keep]
        if node in self._keyframes:
            self._stored -= len(self._keyframes.pop(node)[0])
        while self._keyframes and self._stored + len(points) > self.max_points:
            _, (evicted, _) = self._keyframes.popitem(last=False)
            self._stored -= len(evicted)
            self.evicted_keyframes += 1
        self._keyframes[node] = (points, colors)
        self._stored += len(points)
        return len(points)

    def build(self, poses: dict) -> tuple[np.ndarray, np.ndarray]:
        """The merged map cloud, voxel-downsampled: every stored keyframe's points by its pose, given per node as
        camera_to_map [4,4] or as (camera_to_map, scale): rigid pose and map units per stored unit (the points
        are stored in their keyframe's stored unit, and scaled by it first)."""
        chunks, chunk_colors = [], []
        for node, (points, colors) in self._keyframes.items():
            pose = poses.get(node)
            if pose is None:
                continue
            pose, scale = pose if isinstance(pose, tuple) else (pose, 1.0)
            rotation = (scale * pose[:3, :3]).T.astype(np.float32)
            chunks.append(points @ rotation + pose[:3, 3].astype(np.float32))
            chunk_colors.append(colors)
        if not chunks:
            return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
        return voxel_downsample(np.concatenate(chunks), np.concatenate(chunk_colors), self.voxel_size)
