"""The keyframe pose graph: one gtsam Pose3 node per keyframe (map frame, map units), optimized incrementally (ISAM2).

Edges are relative poses a_to_b = inverse(T_a) @ T_b between two keyframes, already in map units:
- window edges: from one window's relative poses (its translations scaled by the window's map units per window
  unit). Consecutive windows share keyframes, so the same pair is measured by several windows; each measurement
  is its own edge and the optimizer averages them by their noise.
- bridge edges: link a new segment (a window that shared nothing with the map) to the newest keyframe, with a
  loose noise model: the guess keeps the graph connected without pretending to be a measurement.
- loop edges: from a verified loop closure, with a Huber noise model so that one wrong loop that slipped through
  verification bends the graph less than a Gaussian edge would.
The first keyframe carries a tight prior: it fixes the gauge (the map frame is the first window's frame).
Similarity nodes (BetweenFactorSimilarity3) would let loop closures correct scale drift too, but every window is
already brought into map units by the dense alignment before its edges are added, so Pose3 keeps the graph
small and the update cheap.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional

import gtsam
import numpy as np

_HUBER_K = 1.345  # 95 % efficiency at the normal distribution


def _pose3(matrix: np.ndarray) -> gtsam.Pose3:
    return gtsam.Pose3(np.ascontiguousarray(matrix, dtype=np.float64))


def _sigmas(rotation_sigma: float, translation_sigma: float) -> np.ndarray:
    if not (rotation_sigma > 0 and translation_sigma > 0 and np.isfinite(rotation_sigma)
            and np.isfinite(translation_sigma)):
        raise ValueError(f"edge sigmas must be finite and positive, got {rotation_sigma}, {translation_sigma}")
    # gtsam orders the Pose3 tangent space as rotation (x, y, z) first, then translation
    return np.array([rotation_sigma] * 3 + [translation_sigma] * 3)


class KeyframePoseGraph:
    """Pose3 nodes keyed by integers, between-factor edges, an ISAM2 solver; not thread-safe (the map locks)."""

    def __init__(self, prior_rotation_sigma: float = 1e-6, prior_translation_sigma: float = 1e-6,
                 relinearize_threshold: float = 1e-3, loop_iterations: int = 3):
        self._prior_noise = gtsam.noiseModel.Diagonal.Sigmas(_sigmas(prior_rotation_sigma, prior_translation_sigma))
        self._relinearize_threshold = relinearize_threshold
        self._loop_iterations = loop_iterations  # extra ISAM2 passes after a loop edge: its correction is large
        self.reset()

    def reset(self) -> None:
        params = gtsam.ISAM2Params()
        params.setRelinearizeThreshold(self._relinearize_threshold)
        params.relinearizeSkip = 1
        self._isam = gtsam.ISAM2(params)
        self._pending_factors = gtsam.NonlinearFactorGraph()
        self._pending_values = gtsam.Values()
        self._nodes: set[int] = set()
        self._edges: Counter[str] = Counter()
        self._loop_added = False

    @property
    def nodes(self) -> int:
        return len(self._nodes)

    def edges(self, kind: Optional[str] = None) -> int:
        """Edges added so far, of one kind ("window", "bridge", "loop") or all."""
        return self._edges[kind] if kind is not None else sum(self._edges.values())

    def __contains__(self, node: int) -> bool:
        return node in self._nodes

    def add_node(self, node: int, camera_to_map: np.ndarray) -> None:
        """A keyframe with its initial pose; the very first node also gets the prior that fixes the map frame."""
        if node in self._nodes:
            raise ValueError(f"keyframe node {node} is already in the graph")
        pose = _pose3(camera_to_map)
        if not self._nodes:
            self._pending_factors.add(gtsam.PriorFactorPose3(node, pose, self._prior_noise))
        self._pending_values.insert(node, pose)
        self._nodes.add(node)

    def add_edge(self, first: int, second: int, first_to_second: np.ndarray, rotation_sigma: float,
                 translation_sigma: float, kind: str = "window") -> None:
        """A relative-pose measurement inverse(T_first) @ T_second in map units; loop edges get a Huber model."""
        if first not in self._nodes or second not in self._nodes:
            raise ValueError(f"an edge needs both keyframes in the graph, got {first} -> {second}")
        if first == second:
            raise ValueError(f"an edge needs two different keyframes, got {first} twice")
        noise = gtsam.noiseModel.Diagonal.Sigmas(_sigmas(rotation_sigma, translation_sigma))
        if kind == "loop":
            noise = gtsam.noiseModel.Robust.Create(gtsam.noiseModel.mEstimator.Huber.Create(_HUBER_K), noise)
            self._loop_added = True
        self._pending_factors.add(gtsam.BetweenFactorPose3(first, second, _pose3(first_to_second), noise))
        self._edges[kind] += 1

    def optimize(self) -> None:
        """One incremental ISAM2 update with what was added since the last one (a few more after a loop edge)."""
        if self._pending_factors.size() == 0 and self._pending_values.size() == 0:
            return
        self._isam.update(self._pending_factors, self._pending_values)
        for _ in range(self._loop_iterations if self._loop_added else 0):
            self._isam.update()
        self._pending_factors = gtsam.NonlinearFactorGraph()
        self._pending_values = gtsam.Values()
        self._loop_added = False

    def pose(self, node: int) -> np.ndarray:
        """The current estimate of one keyframe (its initial pose until the next optimize())."""
        if node not in self._nodes:
            raise KeyError(f"keyframe node {node} is not in the graph")
        if self._pending_values.exists(node):
            return self._pending_values.atPose3(node).matrix()
        return self._isam.calculateEstimatePose3(node).matrix()

    def poses(self) -> dict[int, np.ndarray]:
        """Every keyframe's current estimate (one full back-substitution: for trajectories, not per window)."""
        estimate = self._isam.calculateEstimate()
        result = {node: estimate.atPose3(node).matrix() for node in self._nodes if estimate.exists(node)}
        result.update({node: self._pending_values.atPose3(node).matrix() for node in self._nodes
                       if self._pending_values.exists(node)})
        return result
