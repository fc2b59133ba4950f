"""A 2-D occupancy grid from the map cloud, as nav_msgs/OccupancyGrid carries it (int8: -1 unknown, 0 free,
100 occupied), for planners such as Nav2.

The map frame is a camera's optical frame (y down), so the caller says which way is up (a unit vector in the
map frame, e.g. from gravity or from the first camera's mounting); the grid lies in the plane perpendicular to
it, its x axis along the map's x axis projected onto that plane.

Policy:
- Floor: the `floor_percentile`-th percentile of the points' heights along up (default 2 %): the floor is the
  lowest large surface a walking camera sees, and a low percentile rather than the minimum ignores the few
  points that a depth error puts below it. Pass `floor_height` when it is known.
- Occupied: cells holding at least `min_points` map points whose height above the floor lies in `band`
  (default 0.1 to 1.5 map units: above the floor's noise, up to what a robot can hit).
- Free: cells crossed by a straight 2-D ray from a viewpoint (the keyframe cameras' positions) to a cell where
  a point was seen, an obstacle in the band or the floor, up to the first occupied cell on the way (a wall
  hides what is behind it); a floor cell at the end of a ray is free too. Rays are sampled at half a cell
  (a digital differential analyser, like Bresenham's line without gaps at diagonals).
- Occupied wins over free; everything else (never seen, or only seen above the band) is unknown.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

UNKNOWN, FREE, OCCUPIED = -1, 0, 100
_CHUNK_SAMPLES = 1 << 20  # ray samples per batch


@dataclass(frozen=True)
class OccupancyGrid:
    resolution: float  # cell edge, map units
    width: int  # cells along the grid's x axis
    height: int  # cells along its y axis
    origin_xy: tuple[float, float]  # corner of cell (0, 0) in grid-plane coordinates (map units)
    data: np.ndarray  # int8 [height, width], row-major from cell (0, 0) as nav_msgs/OccupancyGrid
    floor_height: float  # along up, map units
    axes: np.ndarray  # [3,3] rows: the grid's x axis, y axis and up, unit vectors in the map frame

    def origin_pose(self) -> np.ndarray:
        """The grid's origin (cell (0, 0)'s corner, on the floor) as a 4x4 pose in the map frame: what
        OccupancyGrid.info.origin holds when the grid is published in the map frame."""
        pose = np.eye(4)
        pose[:3, :3] = self.axes.T
        corner = self.origin_xy[0] * self.axes[0] + self.origin_xy[1] * self.axes[1]
        pose[:3, 3] = corner + self.floor_height * self.axes[2]
        return pose

    def cells(self, points_map: np.ndarray) -> np.ndarray:
        """(column, row) int cell indices [M,2] of map points (outside the grid: out of range values)."""
        planar = np.asarray(points_map, np.float64) @ self.axes[:2].T
        return np.floor((planar - np.asarray(self.origin_xy)) / self.resolution).astype(np.int64)


def grid_axes(up: np.ndarray) -> np.ndarray:
    """Rows x, y, up: x is the map's x axis projected perpendicular to up (z when x is parallel to up)."""
    up = np.asarray(up, np.float64)
    norm = np.linalg.norm(up)
    if up.shape != (3,) or not np.isfinite(norm) or norm == 0:
        raise ValueError(f"up must be a non-zero 3-vector, got {up}")
    up = up / norm
    x_axis = np.array([1.0, 0.0, 0.0]) - up[0] * up
    if np.linalg.norm(x_axis) < 1e-3:
        x_axis = np.array([0.0, 0.0, 1.0]) - up[2] * up
    x_axis /= np.linalg.norm(x_axis)
    return np.stack([x_axis, np.cross(up, x_axis), up])


def occupancy_grid(points_map: np.ndarray, up: np.ndarray, floor_height: Optional[float] = None,
                   band: tuple[float, float] = (0.1, 1.5), resolution: float = 0.05,
                   viewpoints: Optional[np.ndarray] = None, floor_percentile: float = 2.0, min_points: int = 1,
                   max_cells: int = 16_000_000, max_ray_samples: int = 50_000_000) -> OccupancyGrid:
    """The grid of the module docstring from map points [M,3] and optional viewpoints [V,3] (map frame).

    Without viewpoints nothing is marked free. Viewpoints are thinned evenly when the rays would take more
    than `max_ray_samples` samples, which bounds the cost on a large map.
    """
    if not (np.isfinite(resolution) and resolution > 0):
        raise ValueError(f"resolution must be positive, got {resolution}")
    if not (band[0] < band[1]):
        raise ValueError(f"band must be (low, high) with low < high, got {band}")
    axes = grid_axes(up)
    points = np.asarray(points_map, np.float64).reshape(-1, 3)
    points = points[np.isfinite(points).all(1)]
    if len(points) == 0:
        raise ValueError("an occupancy grid needs map points; the map is empty")
    heights = points @ axes[2]
    floor = float(np.percentile(heights, floor_percentile)) if floor_height is None else float(floor_height)
    planar = points @ axes[:2].T
    above = heights - floor
    obstacle = (above >= band[0]) & (above <= band[1])
    floor_seen = np.abs(above) < band[0]
    views = np.zeros((0, 2)) if viewpoints is None else np.asarray(viewpoints, np.float64).reshape(-1, 3) @ axes[:2].T
    views = views[np.isfinite(views).all(1)]
    extent = np.concatenate([planar[obstacle | floor_seen], views])
    if len(extent) == 0:
        extent = planar
    low = np.floor(extent.min(0) / resolution) * resolution - resolution
    size = np.floor((extent.max(0) - low) / resolution).astype(np.int64) + 2
    width, height = int(size[0]), int(size[1])
    if width * height > max_cells:
        raise ValueError(f"a {width}x{height} grid at resolution {resolution} exceeds {max_cells} cells; "
                         "use a coarser resolution")
    data = np.full((height, width), UNKNOWN, np.int8)

    def cells_of(xy: np.ndarray) -> np.ndarray:
        return np.clip(np.floor((xy - low) / resolution).astype(np.int64), 0, [width - 1, height - 1])

    occupied_cells = cells_of(planar[obstacle])
    counts = np.bincount(occupied_cells[:, 1] * width + occupied_cells[:, 0], minlength=width * height)
    occupied = (counts >= max(min_points, 1)).reshape(height, width)
    if len(views):
        free = _cast_rays(occupied, cells_of(views), cells_of(planar[obstacle]), cells_of(planar[floor_seen]),
                          max_ray_samples)
        data[free] = FREE
    data[occupied] = OCCUPIED
    return OccupancyGrid(float(resolution), width, height, (float(low[0]), float(low[1])), data, floor, axes)


def _cast_rays(occupied: np.ndarray, view_cells: np.ndarray, obstacle_cells: np.ndarray, floor_cells: np.ndarray,
               max_samples: int) -> np.ndarray:
    """[H,W] bool: cells seen free from any viewpoint (see the module docstring)."""
    height, width = occupied.shape
    free = np.zeros_like(occupied)
    targets = np.unique(np.concatenate([obstacle_cells, floor_cells]), axis=0)
    view_cells = np.unique(view_cells, axis=0)
    if len(targets) == 0:
        return free
    span = max(width, height)
    estimated = len(view_cells) * len(targets) * span  # an upper bound: every ray as long as the grid
    if estimated > max_samples:
        keep = np.linspace(0, len(view_cells) - 1, max(1, max_samples // (len(targets) * span))).astype(np.int64)
        view_cells = view_cells[np.unique(keep)]
    target_centres = targets + 0.5
    for view in view_cells:
        start = view + 0.5
        delta = target_centres - start
        steps = np.ceil(2.0 * np.abs(delta).max(1)).astype(np.int64) + 1  # half-cell samples, both ends included
        chunk = max(1, _CHUNK_SAMPLES // int(steps.max() + 1))  # bounds the memory of one batch of rays
        for begin in range(0, len(targets), chunk):
            _mark_free(free, occupied, start, delta[begin:begin + chunk], steps[begin:begin + chunk])
    return free


def _mark_free(free: np.ndarray, occupied: np.ndarray, start: np.ndarray, delta: np.ndarray,
               steps: np.ndarray) -> None:
    height, width = occupied.shape
    fractions = np.minimum(np.arange(steps.max())[None, :] / np.maximum(steps[:, None] - 1, 1), 1.0)
    samples = np.floor(start + fractions[..., None] * delta[:, None, :]).astype(np.int64)
    columns = np.clip(samples[..., 0], 0, width - 1)
    rows = np.clip(samples[..., 1], 0, height - 1)
    blocked = occupied[rows, columns]
    first_hit = np.where(blocked.any(1), blocked.argmax(1), blocked.shape[1])
    seen = np.arange(blocked.shape[1])[None, :] < first_hit[:, None]
    free[rows[seen], columns[seen]] = True
