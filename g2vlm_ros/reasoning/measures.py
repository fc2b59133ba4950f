"""Geometry that needs no object names: the object in a box, and the corridor ahead (model units, no ROS).

Box: the valid points inside the box, minus floor points (when the floor is known), split by range from the camera
at the first gap wider than FOREGROUND_GAP of the range: the nearest group holding at least FOREGROUND_MIN_FRACTION
of the box's points is the object. Its width is the extent across the view (horizontal, perpendicular to up and to
the viewing direction), its height the extent along up, each between the EXTENT_QUANTILE and 1 - EXTENT_QUANTILE
quantiles (drops a few stray points, keeps the silhouette). The box's depth spread (foreground and all points) is
reported beside them.

Corridor: from the camera along its heading levelled by gravity, `width` wide; obstacle points are those between
CLEARANCE (of the camera's height) above the floor and HEADROOM x the camera's height, so the floor and the ceiling
are not obstacles. Free distance = the OBSTACLE_RANK-th smallest distance along the heading (a few stray points do
not make an obstacle); the nearest obstacle is ranked the same way by horizontal distance.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from g2vlm_ros.reasoning.gravity import Gravity, levelled
from g2vlm_ros.reasoning.question import QuestionError

FOREGROUND_GAP = 0.04
FOREGROUND_MIN_FRACTION = 0.1
EXTENT_QUANTILE = 0.002
FLOOR_BAND = 0.01  # of the camera's height above the floor: points this low belong to the floor
CLEARANCE = 0.05
HEADROOM = 1.2
OBSTACLE_RANK = 5


@dataclass(frozen=True)
class BoxExtent:
    width: float
    height: float
    foreground_points: int
    box_points: int
    foreground_depth: tuple[float, float]  # nearest, farthest range of the object's points from the camera
    box_depth: tuple[float, float]  # the same over all valid points of the box
    axes: str  # how width/height were oriented
    corners: np.ndarray  # [4,3] extreme points: left, right, bottom, top


def extent_axes(up: Optional[np.ndarray], camera_centre: np.ndarray, centroid: np.ndarray,
                camera_rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """(across, vertical, description): across the viewing direction and along up; camera image axes without up."""
    if up is not None:
        view = levelled(centroid - camera_centre, up)
        if view is not None:
            across = np.cross(up, view)
            return across / np.linalg.norm(across), up, "width across the view, height along gravity"
    return (camera_rotation[:, 0], -camera_rotation[:, 1],
            "along the camera's image axes (no gravity known: height is not along gravity)")


def _extent(values: np.ndarray) -> tuple[float, int, int]:
    low, high = np.quantile(values, [EXTENT_QUANTILE, 1.0 - EXTENT_QUANTILE])
    return float(high - low), int(np.argmin(np.abs(values - low))), int(np.argmin(np.abs(values - high)))


def box_extent(points: np.ndarray, camera_centre: np.ndarray, camera_rotation: np.ndarray,
               gravity: Optional[Gravity]) -> BoxExtent:
    """`points`: valid world points [M,3] inside the box (model units)."""
    if points.shape[0] < 3:
        raise QuestionError("the box holds fewer than 3 pixels with valid geometry")
    total = points.shape[0]
    box_ranges = np.linalg.norm(points - camera_centre, axis=1)
    if gravity is not None and gravity.floor_offset is not None:
        camera_height = float(gravity.height(camera_centre[None])[0])
        keep = gravity.height(points) > FLOOR_BAND * camera_height
        if np.count_nonzero(keep) >= 3:
            points = points[keep]
    ranges = np.linalg.norm(points - camera_centre, axis=1)
    order = np.argsort(ranges)
    sorted_ranges = ranges[order]
    gaps = np.nonzero(np.diff(sorted_ranges) > FOREGROUND_GAP * sorted_ranges[1:])[0]
    end = sorted_ranges.size
    start = 0
    for gap in gaps:  # the nearest group large enough to be the object, not a few stray points
        if gap + 1 - start >= FOREGROUND_MIN_FRACTION * sorted_ranges.size:
            end = gap + 1
            break
        start = gap + 1
    foreground = points[order[start:end]]
    if foreground.shape[0] < 3:
        raise QuestionError("no object found in the box: its points do not form a foreground group")
    across, vertical, axes = extent_axes(gravity.up if gravity else None, camera_centre, foreground.mean(axis=0),
                                         camera_rotation)
    width, left, right = _extent(foreground @ across)
    height, bottom, top = _extent(foreground @ vertical)
    return BoxExtent(width, height, int(foreground.shape[0]), total,
                     (float(sorted_ranges[start]), float(sorted_ranges[end - 1])),
                     (float(box_ranges.min()), float(box_ranges.max())), axes,
                     foreground[[left, right, bottom, top]])


@dataclass(frozen=True)
class Corridor:
    free_distance: Optional[float]  # along the heading to the first obstacle; None: no obstacle seen
    nearest_distance: Optional[float]  # horizontal distance to the nearest obstacle point
    nearest_point: Optional[np.ndarray]
    first_point: Optional[np.ndarray]  # the obstacle point that limits the free distance
    reach: float  # farthest point seen in the corridor along the heading (what "free" can be vouched for up to)
    obstacle_points: int
    heading: np.ndarray
    note: str


def corridor(points: np.ndarray, camera_centre: np.ndarray, camera_forward: np.ndarray, gravity: Gravity,
             width: float) -> Corridor:
    """Obstacles in the corridor ahead of the camera (rules in the module docstring)."""
    heading = levelled(camera_forward, gravity.up)
    if heading is None:
        raise QuestionError("the camera looks nearly straight up or down: it has no heading along the floor")
    lateral = np.cross(gravity.up, heading)
    relative = points - camera_centre
    forward = relative @ heading
    inside = (forward > 0) & (np.abs(relative @ lateral) <= width / 2)
    if gravity.floor_offset is not None:
        camera_height = float(gravity.height(camera_centre[None])[0])
        heights = gravity.height(points)
        obstacle = inside & (heights > CLEARANCE * camera_height) & (heights < HEADROOM * camera_height)
        note = (f"floor removed (obstacles from {CLEARANCE * 100:g} % to {HEADROOM * 100:g} % of the camera's "
                "height above the floor)")
    else:
        obstacle = inside
        note = f"no floor found ({gravity.why_no_floor}): every point in the corridor counts as an obstacle"
    reach = float(forward[inside].max()) if np.any(inside) else 0.0
    if not np.any(obstacle):
        return Corridor(None, None, None, None, reach, 0, heading, note)
    candidates = np.nonzero(obstacle)[0]
    rank = min(OBSTACLE_RANK, candidates.size) - 1
    along = forward[candidates]
    first = candidates[np.argsort(along)[rank]]
    horizontal = np.linalg.norm(relative[candidates] - np.outer(relative[candidates] @ gravity.up, gravity.up), axis=1)
    nearest = candidates[np.argsort(horizontal)[rank]]
    return Corridor(float(forward[first]), float(np.sort(horizontal)[rank]), points[nearest], points[first], reach,
                    int(candidates.size), heading, note)
