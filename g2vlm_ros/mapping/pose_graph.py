"""The keyframe pose graph: one gtsam node per keyframe (map frame, map units), optimized incrementally (ISAM2).

Up to scale (the default) every node is a Similarity3: the keyframe's camera-to-map similarity
x_map = s * R @ x_local + c, where x_local is in the keyframe's *stored unit* (the map unit when the keyframe entered
the map: its stored points are in that unit, and its node starts with s = 1). A window measures, for every pair of
its keyframes, their relative pose and the ratio of their stored units (each keyframe's stored depths against the
window's depths of the same pixels), so the graph holds the unit of every stretch of the trajectory: a loop edge
that fixes where a keyframe is also fixes the unit of the stretch leading to it, and the optimizer spreads the
scale correction along the loop (Strasdat et al., "Scale drift-aware large scale monocular SLAM", 2010). When the
map is metric the nodes are rigid Pose3 (s = 1 always).

Callers see rigid camera_to_map matrices (rotation R, camera centre c in map units) and each node's scale s: a
keyframe's stored points in the map are camera_to_map @ (s * stored point).

Edges are similarities first_to_second = inverse(S_first) @ S_second between two keyframes, given as a rigid
[4,4] (rotation, translation in the first keyframe's stored unit) and a scale (second's stored unit in the
first's):
- window edges: from one window's relative poses. Consecutive windows share keyframes, so the same pair is
  measured by several windows; each measurement is its own edge and the optimizer averages them by their noise.
- bridge edges: link a new segment (a window that shared nothing with the map) to the newest keyframe, with a
  loose noise model: the guess keeps the graph connected without pretending to be a measurement.
- loop edges: from a verified loop closure, with a Huber noise model so that one wrong loop that slipped through
  verification bends the graph less than a Gaussian edge would.
The first keyframe carries a tight prior: it fixes the gauge (the map frame and unit are the first window's).

Memory: the graph keeps every keyframe (its poses are the trajectory) and every edge; it is the part of the map
that grows without a bound. Measured with gtsam 4.3 (process RSS over 4000 Similarity3 keyframes): about 4 kB
per node and 3.4 kB per edge (ISAM2's factors, their linearizations and the Bayes tree). The 4-view windows of
the evaluation walk add about 5.4 edges per keyframe (each window re-measures the pairs it shares), so about
22 kB per keyframe: about 100 MB after 30 minutes at 1 m/s with a keyframe every 0.4 m. Pose3 nodes take about
15 % less.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional

import gtsam
import numpy as np

_HUBER_K = 1.345  # 95 % efficiency at the normal distribution


def _pose3(matrix: np.ndarray) -> gtsam.Pose3:
    return gtsam.Pose3(np.ascontiguousarray(matrix, dtype=np.float64))


def _similarity3(matrix: np.ndarray, scale: float) -> gtsam.Similarity3:
    """x -> scale * R @ x + t (t = matrix[:3, 3]) as gtsam's Similarity3, which maps x -> s * (R @ x + t')."""
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"a similarity needs a finite positive scale, got {scale}")
    rotation = gtsam.Rot3(np.ascontiguousarray(matrix[:3, :3], dtype=np.float64))
    return gtsam.Similarity3(rotation, np.asarray(matrix[:3, 3], np.float64) / scale, float(scale))


def _rigid(similarity: gtsam.Similarity3) -> tuple[np.ndarray, float]:
    """gtsam Similarity3 -> (camera_to_map [4,4] with the camera centre, scale)."""
    scale = float(similarity.scale())
    matrix = np.eye(4)
    matrix[:3, :3] = similarity.rotation().matrix()
    matrix[:3, 3] = scale * np.asarray(similarity.translation())
    return matrix, scale


def _sigmas(rotation_sigma: float, translation_sigma: float, scale_sigma: Optional[float]) -> np.ndarray:
    values = (rotation_sigma, translation_sigma) + (() if scale_sigma is None else (scale_sigma,))
    if not all(value > 0 and np.isfinite(value) for value in values):
        raise ValueError(f"edge sigmas must be finite and positive, got {values}")
    # gtsam orders the tangent space as rotation (x, y, z), translation, then (Similarity3) log scale
    return np.array([rotation_sigma] * 3 + [translation_sigma] * 3 + ([] if scale_sigma is None else [scale_sigma]))


class KeyframePoseGraph:
    """Similarity3 (or, with similarity=False, Pose3) nodes keyed by integers, between-factor edges, an ISAM2
    solver; not thread-safe (the map locks)."""

    def __init__(self, similarity: bool = False, prior_rotation_sigma: float = 1e-6,
                 prior_translation_sigma: float = 1e-6, prior_scale_sigma: float = 1e-6,
                 relinearize_threshold: float = 1e-3, loop_iterations: int = 3):
        self.similarity = similarity
        self._prior_noise = gtsam.noiseModel.Diagonal.Sigmas(_sigmas(
            prior_rotation_sigma, prior_translation_sigma, prior_scale_sigma if similarity else None))
        self._relinearize_threshold = relinearize_threshold
        self._loop_iterations = loop_iterations  # extra ISAM2 passes after a loop edge: its correction is large
        self.reset()

    def reset(self) -> None:
        params = gtsam.ISAM2Params()
        params.setRelinearizeThreshold(self._relinearize_threshold)
        params.relinearizeSkip = 1
        # QR, not the default Cholesky: on a loop-free chain the newest keyframe's uncertainty grows with the
        # chain (rotation error times the lever arm), and gtsam 4.3's Cholesky declares the system indeterminate
        # after about 1400 keyframes (a RuntimeError on a long exploration); QR solves it and costs ~0.1 ms more
        # per window at 4-view windows
        params.setFactorization("QR")
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

    def _value(self, matrix: np.ndarray, scale: float):
        return _similarity3(matrix, scale) if self.similarity else _pose3(matrix)

    def add_node(self, node: int, camera_to_map: np.ndarray, scale: float = 1.0) -> None:
        """A keyframe with its initial pose (and scale: map units per stored unit; ignored when rigid); the very
        first node also gets the prior that fixes the map frame (and unit)."""
        if node in self._nodes:
            raise ValueError(f"keyframe node {node} is already in the graph")
        value = self._value(camera_to_map, scale)
        if not self._nodes:
            prior = gtsam.PriorFactorSimilarity3 if self.similarity else gtsam.PriorFactorPose3
            self._pending_factors.add(prior(node, value, self._prior_noise))
        self._pending_values.insert(node, value)
        self._nodes.add(node)

    def add_edge(self, first: int, second: int, first_to_second: np.ndarray, rotation_sigma: float,
                 translation_sigma: float, kind: str = "window", scale: float = 1.0,
                 scale_sigma: Optional[float] = None) -> None:
        """A relative measurement inverse(S_first) @ S_second: rotation and translation (first's stored unit) in
        `first_to_second`, the second's stored unit in the first's in `scale` with `scale_sigma` on its log (both
        ignored when rigid); loop edges get a Huber model."""
        if first not in self._nodes or second not in self._nodes:
            raise ValueError(f"an edge needs both keyframes in the graph, got {first} -> {second}")
        if first == second:
            raise ValueError(f"an edge needs two different keyframes, got {first} twice")
        if self.similarity and scale_sigma is None:
            raise ValueError("an edge of a similarity graph needs a scale_sigma")
        noise = gtsam.noiseModel.Diagonal.Sigmas(_sigmas(rotation_sigma, translation_sigma,
                                                         scale_sigma if self.similarity else None))
        if kind == "loop":
            noise = gtsam.noiseModel.Robust.Create(gtsam.noiseModel.mEstimator.Huber.Create(_HUBER_K), noise)
            self._loop_added = True
        between = gtsam.BetweenFactorSimilarity3 if self.similarity else gtsam.BetweenFactorPose3
        self._pending_factors.add(between(first, second, self._value(first_to_second, scale), noise))
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

    def _read(self, values, node: int) -> tuple[np.ndarray, float]:
        if self.similarity:
            return _rigid(values.atSimilarity3(node))
        return values.atPose3(node).matrix(), 1.0

    def pose_and_scale(self, node: int) -> tuple[np.ndarray, float]:
        """The current estimate of one keyframe: rigid camera_to_map and its scale (map units per stored unit;
        its initial values until the next optimize())."""
        if node not in self._nodes:
            raise KeyError(f"keyframe node {node} is not in the graph")
        if self._pending_values.exists(node):
            return self._read(self._pending_values, node)
        if self.similarity:
            return _rigid(self._isam.calculateEstimateSimilarity3(node))
        return self._isam.calculateEstimatePose3(node).matrix(), 1.0

    def pose(self, node: int) -> np.ndarray:
        """The current rigid camera_to_map of one keyframe (camera centre in map units)."""
        return self.pose_and_scale(node)[0]

    def scale(self, node: int) -> float:
        """Map units per stored unit of one keyframe (1.0 when rigid)."""
        return self.pose_and_scale(node)[1]

    def poses_and_scales(self) -> dict[int, tuple[np.ndarray, float]]:
        """Every keyframe's current estimate (one full back-substitution: for trajectories, not per window)."""
        estimate = self._isam.calculateEstimate()
        result = {node: self._read(estimate, node) for node in self._nodes if estimate.exists(node)}
        result.update({node: self._read(self._pending_values, node) for node in self._nodes
                       if self._pending_values.exists(node)})
        return result

    def poses(self) -> dict[int, np.ndarray]:
        """Every keyframe's current rigid camera_to_map."""
        return {node: pose for node, (pose, _) in self.poses_and_scales().items()}
