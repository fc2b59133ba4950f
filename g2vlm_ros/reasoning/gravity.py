"""Where "up" is and where the floor is, in a window's world frame (model units), or why neither is known.

Sources, in order: the up vector the node supplies (RobotFrame.up_in_window, from TF or an IMU); else a floor
plane fitted to the window's points. The fit is RANSAC over planes through three points, keeping only planes
that can be a floor: normal within FLOOR_MAX_TILT_DEG of the newest camera's image-up axis (-y; cameras of
a ground robot are mounted within that of level) and the camera at least two tolerances above it; the plane
with the most inliers among those with at most MAX_BELOW_FLOOR of the points below them (the floor is the lowest
surface) wins and is refined by least squares (SVD) on its inliers. With a known up vector the
floor is the lowest height level, along up, holding at least FLOOR_MIN_FRACTION of the window's points.
Tolerances are relative to the scene (FLOOR_TOLERANCE x the median distance of the points from the camera), so
the same rule works in metres and in the model's relative units.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from g2vlm_ros.reasoning.question import QuestionError

FLOOR_MAX_TILT_DEG = 40.0
FLOOR_TOLERANCE = 0.01
FLOOR_MIN_FRACTION = 0.03
RANSAC_ITERATIONS = 1000
RANSAC_SAMPLE = 20000
MAX_BELOW_FLOOR = 0.01  # fraction of the points that may lie below a floor candidate (noise, stray points)


@dataclass(frozen=True)
class Gravity:
    up: np.ndarray  # [3] unit vector opposite to gravity, window frame
    source: str  # "tf" | "imu" | "floor_plane"
    floor_offset: Optional[float]  # floor plane: up . p = floor_offset (model units); None: no floor found
    tolerance: float  # model units
    floor_points: int = 0
    why_no_floor: str = ""

    def height(self, points: np.ndarray) -> np.ndarray:
        """Height above the floor (model units) of [..., 3] points; needs a floor."""
        if self.floor_offset is None:
            raise QuestionError(f"no floor found in the window ({self.why_no_floor}): heights above the floor "
                                "cannot be measured")
        return points @ self.up - self.floor_offset

    def describe(self) -> str:
        sources = {"tf": "TF (odom/base_link z)", "imu": "the IMU's gravity",
                   "floor_plane": "a floor plane fitted to the window's points"}
        text = f"up from {sources.get(self.source, self.source)}"
        if self.floor_offset is not None and self.source != "floor_plane":
            text += f"; floor: the lowest level along up holding {self.floor_points} points"
        return text


def scene_tolerance(points: np.ndarray, camera_centre: np.ndarray) -> float:
    distances = np.linalg.norm(points - camera_centre, axis=1)
    return FLOOR_TOLERANCE * float(np.median(distances)) if distances.size else 0.0


def resolve_gravity(points: np.ndarray, camera_centre: np.ndarray, camera_up_hint: np.ndarray,
                    given_up: Optional[np.ndarray], given_source: str) -> Gravity:
    """`points`: the window's valid world points [M,3]; raises QuestionError when up cannot be known."""
    tolerance = scene_tolerance(points, camera_centre)
    if given_up is not None:
        up = np.asarray(given_up, dtype=np.float64)
        up = up / np.linalg.norm(up)
        offset, count, why = _lowest_level(points @ up, float(camera_centre @ up), tolerance)
        return Gravity(up, given_source if given_source in ("tf", "imu") else "tf", offset, tolerance, count, why)
    if points.shape[0] < 3:
        raise QuestionError("no up direction: the node has no TF/IMU gravity and the window has too few points "
                            "to fit a floor")
    plane = fit_floor_plane(points, camera_centre, camera_up_hint, tolerance)
    if plane is None:
        raise QuestionError("no up direction: the node has no TF/IMU gravity for this window and no floor plane "
                            f"(normal within {FLOOR_MAX_TILT_DEG:g} degrees of the camera's image up, below the "
                            "camera) was found in the window's points")
    normal, offset, inliers = plane
    return Gravity(normal, "floor_plane", offset, tolerance, inliers)


def _lowest_level(heights: np.ndarray, camera_height: float, tolerance: float) -> tuple[Optional[float], int, str]:
    below = heights[heights < camera_height - 2 * tolerance]
    needed = max(30, int(FLOOR_MIN_FRACTION * heights.size))
    if below.size < needed or tolerance <= 0:
        return None, 0, "too few points below the camera"
    edges = np.arange(below.min(), below.max() + 2 * tolerance, 2 * tolerance)
    counts, edges = np.histogram(below, bins=edges)
    dense = np.nonzero(counts >= needed)[0]
    if dense.size == 0:
        return None, 0, "no height level below the camera holds enough points"
    centre = 0.5 * (edges[dense[0]] + edges[dense[0] + 1])
    level = below[np.abs(below - centre) <= 2 * tolerance]
    return float(np.median(level)), int(level.size), ""


def fit_floor_plane(points: np.ndarray, camera_centre: np.ndarray, camera_up_hint: np.ndarray,
                    tolerance: float) -> Optional[tuple[np.ndarray, float, int]]:
    """(unit normal pointing up, offset, inlier count) of the best floor candidate, or None (rules: module doc)."""
    rng = np.random.default_rng(0)  # deterministic: the same window gives the same answer
    sample = points if points.shape[0] <= RANSAC_SAMPLE else points[rng.choice(points.shape[0], RANSAC_SAMPLE,
                                                                                replace=False)]
    hint = np.asarray(camera_up_hint, dtype=np.float64)
    hint = hint / np.linalg.norm(hint)
    min_cos = np.cos(np.radians(FLOOR_MAX_TILT_DEG))
    needed = max(30, int(FLOOR_MIN_FRACTION * sample.shape[0]))
    best: Optional[tuple[int, np.ndarray, float]] = None
    # planes through three points below the camera (along its image up): the floor is there, so a floor that fills
    # little of the view is still drawn often enough
    below = sample[(sample - camera_centre) @ hint < 0]
    if below.shape[0] < 3:
        return None
    triples = rng.integers(0, below.shape[0], size=(RANSAC_ITERATIONS, 3))
    for a, b, c in triples:
        normal = np.cross(below[b] - below[a], below[c] - below[a])
        norm = np.linalg.norm(normal)
        if norm < 1e-12:
            continue
        normal = normal / norm
        if normal @ hint < 0:
            normal = -normal
        if normal @ hint < min_cos:
            continue
        offset = float(normal @ below[a])
        if normal @ camera_centre - offset < 2 * tolerance:
            continue  # the camera must be above a floor
        signed = sample @ normal - offset
        count = int(np.count_nonzero(np.abs(signed) <= tolerance))
        # a floor has (almost) nothing below it; a table top or a box's top has the floor below
        grounded = np.count_nonzero(signed < -3 * tolerance) <= MAX_BELOW_FLOOR * sample.shape[0]
        if count >= needed and grounded and (best is None or count > best[0]):
            best = (count, normal, offset)
    if best is None:
        return None
    _, normal, offset = best
    for _ in range(2):  # least-squares refinement on the inliers of the whole window
        inliers = points[np.abs(points @ normal - offset) <= tolerance]
        centroid = inliers.mean(axis=0)
        refined = np.linalg.svd(inliers - centroid, full_matrices=False)[2][-1]
        normal = refined if refined @ hint > 0 else -refined
        offset = float(normal @ centroid)
    count = int(np.count_nonzero(np.abs(points @ normal - offset) <= tolerance))
    return normal, offset, count


def levelled(direction: np.ndarray, up: np.ndarray) -> Optional[np.ndarray]:
    """`direction` projected onto the plane perpendicular to `up`, unit length; None when nearly vertical."""
    flat = direction - (direction @ up) * up
    norm = np.linalg.norm(flat)
    return None if norm < 0.2 * np.linalg.norm(direction) else flat / norm
