"""How a new window is tied to the map: dense correspondences on shared views, the alignment, the graph edges.

The correspondences of a view seen both by the map and by the new window are its pixels: the same pixel gives
camera_to_window @ local point (window frame, window unit) and camera_to_map @ stored local point (map frame,
map units, the stored point scaled when the view entered the map). Only pixels valid in both (finite, positive
depth, confidence > 0) count. The alignment starts from a guess built from the shared cameras' poses and the
median depth ratio, which is already close, so the robust loop converges in a few passes even with many wrong
pixels.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

from g2vlm_ros.mapping.alignment import Alignment, ScaleEvidence, Sim3, align_points, depth_ratio_scale, rotation_mean


@dataclass
class Anchor:
    """A view already placed in the map that a later window may share: its pose and its stored pixels."""

    camera_to_map: np.ndarray  # [4,4] optimized (keyframes) or placed (the previous window's newest view)
    points: np.ndarray  # [h,w,3] float32 local points, camera frame, the view's stored unit
    confidence: Optional[np.ndarray]  # [h,w] float32 or None
    scale: float = 1.0  # map units per stored unit (a keyframe's node scale; 1 for a view placed in map units)


@dataclass(frozen=True)
class WindowFit:
    alignment: Alignment
    scale: ScaleEvidence
    shared_views: int
    shared_points: int
    view_scales: dict  # key -> map units per window unit from that shared view's depths alone (weighted median)


def valid_pixels(points: np.ndarray, confidence: Optional[np.ndarray]) -> np.ndarray:
    """[h,w] bool: finite points in front of the camera, with a positive confidence when there is one."""
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(points).all(-1) & (points[..., 2] > 0)
        if confidence is not None:
            valid &= np.isfinite(confidence) & (confidence > 0)
    return valid


def fit_window(views: Sequence, anchors: dict, metric: bool, min_points: int, max_points: int) -> Optional[WindowFit]:
    """The window -> map similarity from every view the window shares with `anchors` (by key), or None when the
    shared views have fewer than `min_points` valid pixels in common or do not determine a transform."""
    pairs = []
    for view in views:
        anchor = anchors.get(view.key)
        if anchor is None or anchor.points.shape != view.points.shape:
            continue  # a different stride gives different pixels: no dense correspondence
        valid = valid_pixels(view.points, view.confidence) & valid_pixels(anchor.points, anchor.confidence)
        if valid.any():
            pairs.append((view, anchor, valid))
    count = sum(int(valid.sum()) for _, _, valid in pairs)
    if count < max(min_points, 3):
        return None
    stride = max(1, int(np.ceil(count / max_points)))  # even thinning bounds the cost per window
    sources, targets, weights, map_depths, window_depths, depth_weights, keys = [], [], [], [], [], [], []
    for view, anchor, valid in pairs:
        window_local = view.points[valid].astype(np.float64)[::stride]
        map_local = anchor.points[valid].astype(np.float64)[::stride] * anchor.scale
        weight = np.ones(len(window_local))
        if view.confidence is not None:
            weight = weight * view.confidence[valid][::stride]
        if anchor.confidence is not None:
            weight = weight * anchor.confidence[valid][::stride]
        if len(weight) == 0:
            continue
        sources.append(window_local @ view.camera_to_window[:3, :3].T + view.camera_to_window[:3, 3])
        targets.append(map_local @ anchor.camera_to_map[:3, :3].T + anchor.camera_to_map[:3, 3])
        weights.append(weight)
        map_depths.append(map_local[:, 2])
        window_depths.append(window_local[:, 2])
        depth_weights.append(weight)
        keys.append(view.key)
    scale = depth_ratio_scale(map_depths, window_depths, depth_weights)
    initial = _initial_guess([view for view, _, _ in pairs], [anchor for _, anchor, _ in pairs],
                             1.0 if metric else scale.scale)
    try:
        alignment = align_points(np.concatenate(sources), np.concatenate(targets), np.concatenate(weights),
                                 fix_scale=metric, initial=initial)
    except ValueError:
        return None  # degenerate shared geometry (all points on a line, zero weights): not chainable
    view_scales = dict(zip(keys, scale.per_keyframe, strict=True))
    return WindowFit(alignment, scale, len(pairs), count, view_scales)


def _initial_guess(views: list, anchors: list[Anchor], scale: float) -> Sim3:
    """Rotation: the mean of the shared cameras' map-from-window rotations; translation: their camera centres."""
    rotations = np.stack([anchor.camera_to_map[:3, :3] @ view.camera_to_window[:3, :3].T
                          for view, anchor in zip(views, anchors, strict=True)])
    rotation = rotation_mean(rotations)
    translations = [anchor.camera_to_map[:3, 3] - scale * rotation @ view.camera_to_window[:3, 3]
                    for view, anchor in zip(views, anchors, strict=True)]
    return Sim3(scale, rotation, np.mean(translations, axis=0))


def continue_from(last_pose: np.ndarray, first_view_pose: np.ndarray, scale: float) -> Sim3:
    """The similarity that puts a window's first view exactly at `last_pose` (identity motion since then)."""
    rotation = last_pose[:3, :3] @ first_view_pose[:3, :3].T
    return Sim3(scale, rotation, last_pose[:3, 3] - scale * rotation @ first_view_pose[:3, 3])


def relative_pose(camera_to_frame_a: np.ndarray, camera_to_frame_b: np.ndarray, scale: float) -> np.ndarray:
    """inverse(T_a) @ T_b with its translation scaled into map units."""
    relative = np.linalg.solve(camera_to_frame_a, camera_to_frame_b)
    relative[:3, :3] = project_rotation(relative[:3, :3])
    relative[:3, 3] *= scale
    relative[3] = (0.0, 0.0, 0.0, 1.0)
    return relative


def relative_similarity(camera_to_frame_a: np.ndarray, camera_to_frame_b: np.ndarray, unit_a: float,
                        unit_b: float) -> tuple[np.ndarray, float]:
    """The similarity from b's stored unit to a's: (rigid inverse(T_a) @ T_b with its translation in a's stored
    unit, b's stored unit in a's). unit_a, unit_b: stored units per frame unit of each view (their points in the
    frame's unit times this are their stored points)."""
    return relative_pose(camera_to_frame_a, camera_to_frame_b, unit_a), unit_a / unit_b


def project_rotation(matrix: np.ndarray) -> np.ndarray:
    """The nearest rotation (SVD), so slightly non-orthonormal model poses become valid gtsam rotations."""
    u, _, vt = np.linalg.svd(matrix)
    rotation = u @ vt
    if np.linalg.det(rotation) < 0:
        rotation = u @ np.diag([1.0, 1.0, -1.0]) @ vt
    return rotation


def window_edges(views: Sequence) -> list[tuple[int, int]]:
    """Index pairs of keyframe views to link: consecutive in time per camera, and across cameras within a set.

    Views come camera-major (all of camera 0 in time order, then camera 1, ...); the i-th view of each camera
    belongs to the i-th synchronized set. Sets are paired across cameras only when every camera has the same
    number of keyframe views (otherwise set membership is ambiguous and the time edges alone connect them).
    """
    by_camera: dict[str, list[int]] = {}
    for index, view in enumerate(views):
        if view.keyframe:
            by_camera.setdefault(view.key[0], []).append(index)
    for indices in by_camera.values():
        indices.sort(key=lambda index: views[index].key[1])
    edges = [(a, b) for indices in by_camera.values() for a, b in zip(indices[:-1], indices[1:], strict=True)]
    cameras = list(by_camera.values())
    if len(cameras) > 1 and len({len(indices) for indices in cameras}) == 1:
        edges += [(cameras[0][position], other[position]) for other in cameras[1:]
                  for position in range(len(cameras[0]))]
    return edges


def median_depth(views: Sequence, scale: float) -> float:
    """Median valid depth of the window in map units: the length that makes edge noise scale-free."""
    # every 4th row and column: a median does not need every pixel, and this runs for every window
    depths = [view.points[::4, ::4, 2][valid_pixels(view.points[::4, ::4], None if view.confidence is None
                                                    else view.confidence[::4, ::4])] for view in views]
    depths = np.concatenate(depths) if depths else np.zeros(0)
    return float(np.median(depths)) * scale if depths.size else scale


def checked_views(views: Sequence) -> list:
    """Clear errors for malformed input; rotations projected onto SO(3) (model poses are not exactly orthonormal)."""
    views = list(views)
    if not views:
        raise ValueError("a window needs at least one view")
    keys = set()
    checked = []
    for view in views:
        key = view.key
        if (not isinstance(key, tuple) or len(key) != 2 or not isinstance(key[0], str)
                or isinstance(key[1], bool) or not isinstance(key[1], (int, np.integer))):
            raise ValueError(f"a view key must be (camera name, stamp_ns), got {key!r}")
        if key in keys:
            raise ValueError(f"view {key} appears twice in one window")
        keys.add(key)
        pose = np.asarray(view.camera_to_window, np.float64)
        if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
            raise ValueError(f"view {key}: camera_to_window must be a finite [4,4] matrix")
        if np.abs(pose[:3, :3].T @ pose[:3, :3] - np.eye(3)).max() > 1e-2 or np.linalg.det(pose[:3, :3]) <= 0:
            raise ValueError(f"view {key}: camera_to_window has no rotation in its upper-left block (scale inside?)")
        pose = pose.copy()
        pose[:3, :3] = project_rotation(pose[:3, :3])
        pose[3] = (0.0, 0.0, 0.0, 1.0)
        points = np.asarray(view.points)
        if points.ndim != 3 or points.shape[2] != 3 or points.shape[0] * points.shape[1] == 0:
            raise ValueError(f"view {key}: points must be [h,w,3] with h,w >= 1, got {points.shape}")
        shape = points.shape[:2]
        if view.confidence is not None and np.shape(view.confidence) != shape:
            raise ValueError(f"view {key}: confidence must be {shape}, got {np.shape(view.confidence)}")
        if view.colors is not None and (np.shape(view.colors) != (*shape, 3) or view.colors.dtype != np.uint8):
            raise ValueError(f"view {key}: colors must be uint8 {(*shape, 3)}, got {np.shape(view.colors)}")
        checked.append(dataclasses.replace(view, key=(key[0], int(key[1])), keyframe=bool(view.keyframe),
                                           camera_to_window=pose, points=points))
    return checked
