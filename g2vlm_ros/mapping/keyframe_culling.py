"""Which new keyframes the map keeps, so that its memory grows with the ground covered, not with time.

The node's windows take a new keyframe at every synchronized set unless its keyframe criteria say otherwise, so a
robot standing still (or driving over the same ground again) would add graph nodes, stored points and loop data at
the model's rate for as long as it runs. A new keyframe whose camera is, in the map, within `min_translation` (a
fraction of the scene's median depth: a scale-free "the view hardly changed") and `min_rotation_deg` of a keyframe
the map already keeps for the same camera adds no view of the scene. It is demoted to an ordinary view: placed like
the window's other views (and aligned to by the next window, which holds it too), but without a graph node, stored
points or loop data. Decisions are per synchronized set, so a camera rig keeps or drops a set's views together
(the cross-camera edges need every camera's keyframes of a window in the graph); a key once demoted stays demoted
while windows still hold it.

Cost: one vectorized distance and angle test per new set against the kept keyframes of its first camera.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

FORGET_AFTER_WINDOWS = 64  # a demoted key no window has held for this long is forgotten (windows hold a key briefly)


class KeyframeCulling:
    def __init__(self, min_translation: float, min_rotation_deg: float):
        """`min_translation`: fraction of the window's median depth; 0 and 0: every new keyframe is kept."""
        self.min_translation, self.min_rotation_deg = min_translation, min_rotation_deg
        self.reset()

    def reset(self) -> None:
        self._positions: dict[str, list[np.ndarray]] = {}  # per camera: kept keyframes' camera centres in the map
        self._rotations: dict[str, list[np.ndarray]] = {}
        self._demoted: dict[tuple[str, int], int] = {}  # key -> the last window that held it
        self.demoted_total = 0

    def kept(self, camera: str, camera_to_map: np.ndarray) -> None:
        """Records a keyframe the map added (its pose as placed; later optimization does not matter here)."""
        self._positions.setdefault(camera, []).append(np.asarray(camera_to_map[:3, 3], np.float64))
        self._rotations.setdefault(camera, []).append(np.asarray(camera_to_map[:3, :3], np.float64))

    def select(self, views: Sequence, known: set, window_to_map, depth: float, window: int) -> list:
        """`views` with new keyframes that add nothing demoted to plain views (keyframe=False). `known`: keys the
        map keeps; `window_to_map`: the window's alignment (Sim3); `depth`: the window's median depth, map units."""
        views = list(views)
        for index, view in enumerate(views):
            if view.key in self._demoted:
                self._demoted[view.key] = window
                views[index] = replace(view, keyframe=False)
        for stale in [key for key, last in self._demoted.items() if window - last > FORGET_AFTER_WINDOWS]:
            del self._demoted[stale]
        if self.min_translation <= 0 and self.min_rotation_deg <= 0:
            return views
        for members in _new_sets(views, known):
            first = views[members[0]]
            pose = window_to_map.apply_pose(first.camera_to_window)
            if self._redundant(first.key[0], pose, depth):
                for index in members:
                    self._demoted[views[index].key] = window
                    views[index] = replace(views[index], keyframe=False)
                self.demoted_total += 1
            else:
                self.kept(first.key[0], pose)  # so that a later set of this window is tested against it
        return views

    def _redundant(self, camera: str, pose: np.ndarray, depth: float) -> bool:
        positions = self._positions.get(camera)
        if not positions:
            return False
        near = np.linalg.norm(np.asarray(positions) - pose[:3, 3], axis=1) < self.min_translation * depth
        if not near.any():
            return False
        rotations = np.asarray(self._rotations[camera])[near]
        # rotation angle between two orientations: cos = (trace(Ra^T Rb) - 1) / 2, over all near keyframes at once
        cosines = (np.einsum("nij,ij->n", rotations, pose[:3, :3]) - 1.0) / 2.0
        angles = np.degrees(np.arccos(np.clip(cosines, -1.0, 1.0)))
        return bool((angles < self.min_rotation_deg).any())


def _new_sets(views: Sequence, known: set) -> list[list[int]]:
    """Index lists of the window's new keyframe sets (the i-th new keyframe view of every camera), in time order;
    none when the cameras disagree on how many new keyframes the window has (set membership is then unclear)."""
    by_camera: dict[str, list[int]] = {}
    for index, view in enumerate(views):
        if view.keyframe and view.key not in known:
            by_camera.setdefault(view.key[0], []).append(index)
    if not by_camera or len({len(indices) for indices in by_camera.values()}) != 1:
        return []
    for indices in by_camera.values():
        indices.sort(key=lambda index: views[index].key[1])
    return [list(members) for members in zip(*by_camera.values(), strict=True)]


def validate(min_translation: float, min_rotation_deg: float) -> None:
    for name, value in (("min_keyframe_translation", min_translation), ("min_keyframe_rotation_deg", min_rotation_deg)):
        if isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise ValueError(f"MapSettings.{name} must be a finite number >= 0, got {value!r}")
