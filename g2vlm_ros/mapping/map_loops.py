"""The map's side of loop closure: what it keeps per keyframe for loop_closure.py, and the candidate queue.

Per keyframe with a descriptor: the descriptor (in the LoopDetector), a small verification grid (its local
points in its stored unit, thinned to at most `VERIFICATION_GRID` cells: about 10 kB per keyframe, since old
keyframes drop their full alignment pixels) and the path length travelled when it was added. At most
`max_keyframes` keyframes keep these: beyond that the oldest loses its descriptor and grid (it can no longer be a
candidate; its pose stays in the map). After each window the newest
new keyframe is looked up; its candidates wait in a queue that `next_request` hands out one at a time (each one
costs the caller a model run on [candidate, current]). A new window replaces the queue: candidates of an older
keyframe are stale.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Optional

import numpy as np

from g2vlm_ros.mapping.loop_closure import LoopDetector, LoopSettings, LoopVerification, verify_loop

KeyframeKey = tuple[str, int]
VERIFICATION_GRID = (24, 32)  # rows, columns kept per keyframe for verification


@dataclass(frozen=True)
class LoopRequest:
    """Run the model on the 2-view window [candidate, current] and hand the result to WorldMap.verify_loop."""

    current: KeyframeKey  # the newest keyframe
    candidate: KeyframeKey  # an older keyframe that may show the same place
    similarity: float  # descriptor cosine similarity


def thinned_grid(points: np.ndarray, confidence: Optional[np.ndarray], min_confidence: float) -> np.ndarray:
    """[h,w,3] -> at most VERIFICATION_GRID cells, at the cell centres loop_closure samples (so the window's grid
    and the stored one see the same pixels); low-confidence pixels become NaN (invalid)."""
    points = np.array(points, np.float32)
    if confidence is not None:
        points[np.asarray(confidence) < min_confidence] = np.nan
    rows, columns = (np.clip(np.rint((np.arange(min(n, limit)) + 0.5) * n / min(n, limit) - 0.5).astype(np.int64),
                             0, n - 1) for n, limit in zip(points.shape[:2], VERIFICATION_GRID, strict=True))
    return points[rows][:, columns]


class MapLoops:
    def __init__(self, settings: LoopSettings, max_keyframes: int = 1000):
        if isinstance(max_keyframes, bool) or max_keyframes < 1:
            raise ValueError(f"max_keyframes must be >= 1, got {max_keyframes!r}")
        self.settings = settings
        self.max_keyframes = int(max_keyframes)
        self.reset()

    def reset(self) -> None:
        self.detector = LoopDetector(self.settings)
        self._grids: dict[KeyframeKey, np.ndarray] = {}
        self._path_at: dict[KeyframeKey, float] = {}
        self._path = 0.0
        self._last_position: Optional[np.ndarray] = None
        self._queue: deque[LoopRequest] = deque()
        self.requests = self.rejections = self.forgotten = 0
        self.last_verification: Optional[LoopVerification] = None

    def after_window(self, new_keyframes: list[tuple[KeyframeKey, Optional[np.ndarray], np.ndarray,
                                                     Optional[np.ndarray], np.ndarray]],
                     moved: dict[KeyframeKey, np.ndarray], newest_position: np.ndarray) -> None:
        """new_keyframes: (key, descriptor, local points in map units, confidence, camera_to_map) in time order;
        moved: the window's other keyframes' optimized poses (their positions in the detector follow)."""
        if self._last_position is not None:
            self._path += float(np.linalg.norm(newest_position - self._last_position))
        self._last_position = np.array(newest_position, np.float64)
        for key, pose in moved.items():
            if key in self._grids:
                self.detector.update_position(key, pose[:3, 3])
        self._queue.clear()
        with_descriptor = [entry for entry in new_keyframes if entry[1] is not None]
        if with_descriptor:
            key, descriptor, _, _, pose = with_descriptor[-1]
            try:
                found = self.detector.candidates(key, descriptor, pose[:3, 3],
                                                 lambda older: self._path - self._path_at.get(older, self._path))
            except ValueError:
                found = []  # a descriptor of another length (backend changed): no candidates, never a crash
            self._queue.extend(LoopRequest(key, candidate.key, candidate.similarity) for candidate in found)
        for key, descriptor, points, confidence, pose in with_descriptor:
            grid = thinned_grid(points, confidence, self.settings.min_confidence)
            valid = np.isfinite(grid).all(-1) & (grid[..., 2] > 0)
            try:
                self.detector.add(key, descriptor, pose[:3, 3], float(np.median(grid[..., 2][valid]))
                                  if valid.any() else None)
            except ValueError:
                continue
            self._grids[key] = grid
            self._path_at[key] = self._path
        while len(self._grids) > self.max_keyframes:
            oldest = next(iter(self._grids))  # dicts keep insertion order: keyframes arrive in time order
            self.detector.remove(oldest)
            del self._grids[oldest], self._path_at[oldest]
            self.forgotten += 1

    @property
    def keyframes(self) -> int:
        """Keyframes that keep loop data (descriptor and verification grid)."""
        return len(self._grids)

    def next_request(self) -> Optional[LoopRequest]:
        if not self._queue:
            return None
        self.requests += 1
        return self._queue.popleft()

    def verify(self, request: LoopRequest, views: list, candidate_to_map: np.ndarray,
               current_to_map: np.ndarray, candidate_scale: float = 1.0) -> LoopVerification:
        """loop_closure.verify_loop on the caller's [candidate, current] model output (views by key);
        candidate_scale: map units per stored unit of the candidate (its node scale), so that the verification
        measures in map units."""
        by_key = {view.key: view for view in views}
        if request.candidate not in by_key or request.current not in by_key:
            raise ValueError(f"the verification window must hold the views {request.candidate} and {request.current}")
        if request.candidate not in self._grids:
            raise ValueError(f"keyframe {request.candidate} is not in the loop database")
        pair = [by_key[request.candidate], by_key[request.current]]
        if pair[0].points.shape != pair[1].points.shape:
            raise ValueError("the two views of a verification window must have the same point grid")
        confidence = None
        if pair[0].confidence is not None and pair[1].confidence is not None:
            confidence = np.stack([view.confidence for view in pair])
        result = verify_loop(self._grids[request.candidate] * np.float32(candidate_scale), candidate_to_map,
                             current_to_map,
                             self._path - self._path_at.get(request.candidate, self._path),
                             np.stack([view.camera_to_window for view in pair]),
                             np.stack([view.points for view in pair]), confidence, settings=self.settings)
        self.last_verification = result
        if not result.accepted:
            self.rejections += 1
        return result

    def stored_units_per_window_unit(self, key: KeyframeKey, views: list) -> Optional[float]:
        """A keyframe's stored depths over its depths in a window (views by key), on the verification grid's
        pixels: the median ratio, or None when the keyframe has no grid, is not in the window, or they share too
        few valid pixels."""
        by_key = {view.key: view for view in views}
        if key not in self._grids or key not in by_key:
            return None
        stored = self._grids[key]
        window = thinned_grid(by_key[key].points, by_key[key].confidence, self.settings.min_confidence)
        if window.shape != stored.shape:
            return None
        with np.errstate(invalid="ignore", divide="ignore"):
            ratios = stored[..., 2] / window[..., 2]
            both = np.isfinite(ratios) & (stored[..., 2] > 0) & (window[..., 2] > 0)
        if both.mean() < self.settings.min_valid_fraction:
            return None
        return float(np.median(ratios[both]))

    def detector_scene_depth(self, key: KeyframeKey) -> float:
        """Median depth of a keyframe's verification grid, map units (NaN when it has no valid pixel)."""
        grid = self._grids[key]
        valid = np.isfinite(grid).all(-1) & (grid[..., 2] > 0)
        return float(np.median(grid[..., 2][valid])) if valid.any() else math.nan

    def update_positions(self, poses: dict[KeyframeKey, np.ndarray]) -> None:
        for key, pose in poses.items():
            if key in self._grids:
                self.detector.update_position(key, pose[:3, 3])
