"""One continuous world from overlapping windows: chaining, the keyframe pose graph and the map cloud.

`WorldMap.add_window` takes one window of model output (its views' poses and local points, in the window's own
frame and unit) and returns where every view is in the map:
1. The first window initializes the map: the map frame is its frame, the map unit its unit (or metres when the
   map is metric).
2. Every later window is aligned to the map on the views it shares with it (keyframes still in the window, or
   the previous window's newest view when it is the same frame): a robust similarity from their dense points
   (rigid when metric), status "chained". If nothing is shared (a window of one set, dropped windows, a reset
   upstream) the window starts a new segment, status "reinitialized": its first view continues from the
   previous window's newest pose with identity motion and the previous scale, linked by a loose graph edge. It
   is a guess, said so in the status, never a crash.
3. New keyframes become graph nodes with stored points (their camera frame, in their *stored unit*: the map unit
   when they entered); every keyframe pair the window relates becomes an edge; ISAM2 updates; keyframe views are
   placed at their optimized poses, the window's other views relative to its newest keyframe.
Up to scale the graph's nodes are similarities (pose_graph.py): each window edge carries the ratio of its two
keyframes' stored units, measured from their stored depths against the window's depths of the same pixels (a new
keyframe's stored unit is the window's aligned unit), so a loop closure corrects the scale of the stretch leading
to it, not only where it ends. A keyframe's stored points enter the map scaled by its node's scale. Metric maps
keep rigid nodes (scale 1).
Thread-safe: the node adds windows on its worker thread and builds the cloud on a timer.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

from g2vlm_ros.mapping import chaining
from g2vlm_ros.mapping.alignment import Sim3
from g2vlm_ros.mapping.chaining import Anchor
from g2vlm_ros.mapping.keyframe_culling import KeyframeCulling
from g2vlm_ros.mapping.keyframe_culling import validate as validate_culling
from g2vlm_ros.mapping.loop_closure import LoopSettings, LoopVerification
from g2vlm_ros.mapping.map_cloud import MapCloud
from g2vlm_ros.mapping.map_loops import LoopRequest, MapLoops
from g2vlm_ros.mapping.occupancy import OccupancyGrid, occupancy_grid
from g2vlm_ros.mapping.pose_graph import KeyframePoseGraph

KeyframeKey = tuple[str, int]  # (camera name, stamp_ns): the same keyframe in several windows has the same key


@dataclass(frozen=True)
class ViewObservation:
    key: KeyframeKey
    keyframe: bool  # False: the window's newest set that is not a keyframe (placed, not kept)
    camera_to_window: np.ndarray  # [4,4] float64, window frame and unit
    points: np.ndarray  # [h,w,3] float32 local points (camera frame, window unit); NaN/inf/<=0 depth = invalid
    confidence: Optional[np.ndarray] = None  # [h,w] float32 in [0,1]
    colors: Optional[np.ndarray] = None  # [h,w,3] uint8, for the map cloud
    descriptor: Optional[np.ndarray] = None  # [D] float32 global descriptor, for loop closure


@dataclass(frozen=True)
class MapSettings:
    voxel_size: float = 0.05  # map cloud voxel (map units)
    max_points: int = 300_000  # memory bound of the map cloud (policy in map_cloud.py)
    min_shared_points: int = 200  # fewer valid shared pixels: the window cannot be chained
    loop_closure: bool = True
    max_alignment_points: int = 4000  # shared pixels used per alignment, thinned evenly: bounds the cost
    alignment_memory_windows: int = 4  # a keyframe absent from this many windows drops its alignment pixels
    cloud_min_confidence: float = 0.0  # pixels below this confidence stay out of the map cloud
    edge_rotation_sigma_deg: float = 1.0  # window edge noise: rotation
    edge_translation_sigma: float = 0.02  # window edge noise: translation, as a fraction of the window's median depth
    bridge_sigma_factor: float = 50.0  # a new segment's link to the previous one: this many times looser
    loop_sigma_factor: float = 2.0  # loop edges: this many times looser than window edges (a wider 2-view baseline)
    # window edge noise on the log of the relative scale of two keyframes (up to scale only). Each is the ratio of
    # two weighted medians of thousands of per-pixel depth ratios, so pixel noise hardly moves it; the allowance
    # is for a model whose unit changes within a window (depth errors that vary across the image), half the
    # relative translation noise allowed above
    edge_scale_sigma: float = 0.01
    # keyframes that keep loop-closure data (descriptor + verification grid, ~10 kB + 4 bytes per descriptor
    # value each). Beyond it the oldest keyframe loses both: it can no longer be a loop candidate, while its pose
    # stays in the graph and the trajectory, and its points stay in the cloud (bounded by max_points). Revisits
    # add new keyframes of the same places, so loops keep closing against the most recent passes.
    max_loop_keyframes: int = 1000
    loop_settings: LoopSettings = LoopSettings()  # candidate search and verification thresholds (loop_closure.py)
    # a new keyframe closer than this to one the map keeps (same camera; translation as a fraction of the scene's
    # median depth, and rotation) is placed but not kept: memory grows with ground covered (keyframe_culling.py)
    min_keyframe_translation: float = 0.05
    min_keyframe_rotation_deg: float = 5.0

    def validate(self) -> None:
        positive = ("max_points", "min_shared_points", "max_alignment_points", "alignment_memory_windows",
                    "edge_rotation_sigma_deg", "edge_translation_sigma", "bridge_sigma_factor", "loop_sigma_factor",
                    "edge_scale_sigma", "max_loop_keyframes")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not np.isfinite(value) or value <= 0:
                raise ValueError(f"MapSettings.{name} must be positive, got {value!r}")
        if not np.isfinite(self.voxel_size) or self.voxel_size < 0:
            raise ValueError(f"MapSettings.voxel_size must be >= 0, got {self.voxel_size!r}")
        validate_culling(self.min_keyframe_translation, self.min_keyframe_rotation_deg)
        if not 0.0 <= self.cloud_min_confidence <= 1.0:
            raise ValueError(f"MapSettings.cloud_min_confidence must be in [0, 1], got {self.cloud_min_confidence!r}")


@dataclass(frozen=True)
class Placement:
    """What one window became in the map."""

    window_to_map: Sim3
    camera_to_map: np.ndarray  # [N,4,4] float64, every view of the window in input order, map frame and unit
    status: str  # "initialized" | "chained" | "reinitialized" (no shared keyframe: a new segment)
    shared_keyframes: int  # shared views the alignment used (the previous window's newest view counts too)
    scale_ratio: float  # map units per window unit from the dense points (1.0 expected when metric)
    scale_spread: float  # relative spread of the per-keyframe scale estimates (robust); NaN when not measured
    residual: float  # robust RMS of the shared points after alignment, map units; NaN when not measured
    loop_closures: int  # loop edges accepted since the previous window (verify_loop runs after add_window)


@dataclass(frozen=True)
class MapStats:
    windows: int
    keyframes: int
    segments: int  # 1 + reinitializations
    edges: int
    loop_closures: int
    loop_requests: int  # candidates handed out by loop_request
    loop_rejections: int  # candidates that verification rejected
    loop_keyframes: int  # keyframes that keep loop data (<= MapSettings.max_loop_keyframes)
    alignment_keyframes: int  # keyframes that keep their full pixels for alignment (recent windows only)
    cloud_points: int  # points stored for the map cloud (<= MapSettings.max_points)
    evicted_keyframes: int  # keyframes whose points left the cloud under the memory bound
    redundant_sets: int  # new keyframe sets placed but not kept: too close to a kept keyframe (keyframe_culling.py)
    last_status: str
    scale_ratio: float  # newest window: map units per window unit (metric: the free scale of its fit)
    # the model's unit change per window: the newest chained window's unit relative to the previous window's
    # (scale_ratio / previous scale_ratio; a backend that keeps one unit gives 1). Metric: the window's metric
    # scale against the map's (its free scale_ratio), 1 for a model whose metres agree with the map's
    scale_change: float
    # scale drift of the map along the trajectory. Up to scale: the newest keyframe's node scale relative to the
    # first keyframe's, i.e. how much the graph rescaled the unit of the newest stretch to agree with the rest
    # (1 until a loop closure or another constraint measures drift; 0.9: chaining had inflated the unit by 1/0.9
    # by here). Metric: the newest window's metric scale against the map's (its free scale_ratio); the map's
    # own scale is fixed
    cumulative_scale_drift: float
    median_scale_change: float  # median |scale_change - 1| over the recent windows: the typical change per window
    residual: float  # newest window's alignment residual (map units)
    mapping_ms: float  # newest window's add_window time
    mean_mapping_ms: float


@dataclass
class _Keyframe:
    key: KeyframeKey
    node: int
    anchor: Optional[Anchor]  # pose refreshed from the graph when used; dropped when the keyframe leaves the windows
    last_window: int


class WorldMap:
    def __init__(self, settings: MapSettings = MapSettings(), metric: bool = False):
        settings.validate()
        self.settings = settings
        self.metric = metric
        self._lock = threading.RLock()
        self._graph = KeyframePoseGraph(similarity=not metric)
        self._cloud = MapCloud(settings.voxel_size, settings.max_points)
        self._loops = MapLoops(settings.loop_settings, settings.max_loop_keyframes) if settings.loop_closure else None
        self._culling = KeyframeCulling(settings.min_keyframe_translation, settings.min_keyframe_rotation_deg)
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._graph.reset()
            self._cloud.clear()
            self._culling.reset()
            if self._loops is not None:
                self._loops.reset()
            self._loops_since_window = 0
            self._keyframes: dict[KeyframeKey, _Keyframe] = {}
            self._by_node: dict[int, _Keyframe] = {}
            self._previous_views: dict[KeyframeKey, Anchor] = {}  # the last window's non-keyframe views
            self._last_pose: Optional[np.ndarray] = None  # the last window's newest view in the map
            self._last_node: Optional[int] = None  # the newest keyframe node
            self._last_scale = 1.0
            self._windows = 0
            self._segments = 0
            self._loop_closures = 0
            self._last_status = "empty"
            self._scale_ratio = self._scale_change = 1.0
            self._scale_changes: deque[float] = deque(maxlen=1000)
            self._residual = math.nan
            self._mapping_ms = self._total_ms = 0.0
            self._cloud_cache: Optional[tuple[int, tuple[np.ndarray, np.ndarray]]] = None

    def add_window(self, views: Sequence[ViewObservation], stamp_ns: int) -> Placement:
        """Aligns one window to the map, adds its keyframes and edges, optimizes; see the module docstring."""
        views = chaining.checked_views(views)
        with self._lock:
            started = time.perf_counter()
            placement = self._add_window(views)
            self._windows += 1
            self._mapping_ms = 1000.0 * (time.perf_counter() - started)
            self._total_ms += self._mapping_ms
            return placement

    def _add_window(self, views: list[ViewObservation]) -> Placement:
        settings = self.settings
        spread = residual = math.nan
        shared, view_scales = 0, {}
        if self._last_pose is None:
            status, window_to_map, scale_ratio, spread, residual = "initialized", Sim3.identity(), 1.0, 0.0, 0.0
            self._segments = 1
        else:
            fit = chaining.fit_window(views, self._anchors(), self.metric, settings.min_shared_points,
                                      settings.max_alignment_points)
            if fit is not None:
                status, window_to_map = "chained", fit.alignment.transform
                scale_ratio, spread, residual = fit.alignment.free_scale, fit.scale.spread, fit.alignment.residual
                shared, view_scales = fit.shared_views, fit.view_scales
            else:
                # nothing shared: continue from the last pose, in the last scale, and say that it is a guess
                status, scale_ratio = "reinitialized", self._last_scale
                window_to_map = chaining.continue_from(self._last_pose, _oldest(views).camera_to_window,
                                                       1.0 if self.metric else self._last_scale)
                self._segments += 1
        self._record_scale(status, scale_ratio, residual)
        self._last_status = status
        if status != "reinitialized":  # a guessed placement says nothing about where the keyframe is
            views = self._culling.select(views, set(self._keyframes), window_to_map,
                                         chaining.median_depth(views, window_to_map.scale), self._windows)
        nodes, new_nodes = self._add_keyframes(views, window_to_map)
        units = self._stored_units(views, nodes, new_nodes, window_to_map.scale, view_scales)
        self._add_edges(views, nodes, new_nodes, units, status)
        self._graph.optimize()
        poses, map_units = self._place(views, nodes, units, window_to_map)
        self._remember(views, nodes, units, poses, map_units)
        if self._loops is not None:
            self._loops.after_window(
                [(views[index].key, views[index].descriptor, views[index].points.astype(np.float64) * units[index],
                  views[index].confidence, poses[index]) for index, node in nodes.items() if node in new_nodes],
                {views[index].key: poses[index] for index, node in nodes.items() if node not in new_nodes},
                self._last_pose[:3, 3])
        loops, self._loops_since_window = self._loops_since_window, 0
        return Placement(window_to_map, poses, status, shared, scale_ratio, spread, residual, loops)

    def _anchors(self) -> dict[KeyframeKey, Anchor]:
        anchors = dict(self._previous_views)
        for key, keyframe in self._keyframes.items():
            if keyframe.anchor is not None:
                keyframe.anchor.camera_to_map, keyframe.anchor.scale = self._graph.pose_and_scale(keyframe.node)
                anchors[key] = keyframe.anchor
        return anchors

    def _record_scale(self, status: str, scale_ratio: float, residual: float) -> None:
        if status == "chained":
            # the unit change since the previous window: a similarity map absorbs it into the window's scale
            change = scale_ratio if self.metric else scale_ratio / self._scale_ratio
            self._scale_change = change
            self._scale_changes.append(abs(change - 1.0))
            self._last_scale = scale_ratio
        else:
            self._scale_change = 1.0
        self._scale_ratio = scale_ratio
        self._residual = residual

    def _add_keyframes(self, views: list[ViewObservation], window_to_map: Sim3) -> tuple[dict[int, int], set[int]]:
        """Graph nodes for the window's keyframe views: (view index -> node, the nodes created now)."""
        nodes, new_nodes = {}, set()
        for index, view in enumerate(views):
            if not view.keyframe:
                continue
            keyframe = self._keyframes.get(view.key)
            if keyframe is None:
                node = len(self._by_node)
                # stored unit = the map unit here and now: the node starts with scale 1
                self._graph.add_node(node, window_to_map.apply_pose(view.camera_to_window))
                keyframe = _Keyframe(view.key, node, None, self._windows)
                self._keyframes[view.key] = keyframe
                self._by_node[node] = keyframe
                self._store_points(node, view, window_to_map.scale)
                new_nodes.add(node)
            keyframe.last_window = self._windows
            nodes[index] = keyframe.node
        return nodes, new_nodes

    def _stored_units(self, views: list[ViewObservation], nodes: dict[int, int], new_nodes: set[int],
                      window_scale: float, view_scales: dict) -> dict[int, float]:
        """Per keyframe view: its stored units per window unit. A new keyframe's points were stored in the aligned
        map unit (window_scale); an older one's comes from its own depths (view_scales: map units per window
        unit, its stored points scaled by its node scale), else from the alignment. Metric: 1."""
        units = {}
        for index, node in nodes.items():
            if self.metric:
                units[index] = 1.0
            elif node in new_nodes:
                units[index] = window_scale
            else:
                units[index] = view_scales.get(views[index].key, window_scale) / self._graph.scale(node)
        return units

    def _store_points(self, node: int, view: ViewObservation, scale: float) -> None:
        valid = chaining.valid_pixels(view.points, view.confidence)
        if view.confidence is not None and self.settings.cloud_min_confidence > 0:
            valid &= view.confidence >= self.settings.cloud_min_confidence
        colors = view.colors[valid] if view.colors is not None else np.full((int(valid.sum()), 3), 255, np.uint8)
        self._cloud.add(node, view.points[valid].astype(np.float64) * scale, colors)

    def _add_edges(self, views: list[ViewObservation], nodes: dict[int, int], new_nodes: set[int],
                   units: dict[int, float], status: str) -> None:
        settings = self.settings
        rotation_sigma = math.radians(settings.edge_rotation_sigma_deg)
        window_depth = chaining.median_depth(views, 1.0)  # window units
        for first, second in chaining.window_edges(views):
            measured, scale = chaining.relative_similarity(views[first].camera_to_window,
                                                           views[second].camera_to_window, units[first], units[second])
            self._graph.add_edge(nodes[first], nodes[second], measured, rotation_sigma,
                                 settings.edge_translation_sigma * window_depth * units[first], "window", scale,
                                 settings.edge_scale_sigma)
        if nodes and self._last_node is not None and set(nodes.values()) <= new_nodes:
            # no keyframe of this window was in the graph: link its oldest to the newest keyframe, loosely when
            # it is a guess (a new segment), like a window edge when the window was aligned on a shared view
            oldest = min(nodes, key=lambda index: views[index].key[1])
            looseness = settings.bridge_sigma_factor if status == "reinitialized" else 2.0
            previous_pose, previous_scale = self._graph.pose_and_scale(self._last_node)
            new_pose, new_scale = self._graph.pose_and_scale(nodes[oldest])
            measured, scale = chaining.relative_similarity(previous_pose, new_pose, 1.0 / previous_scale,
                                                           1.0 / new_scale)
            self._graph.add_edge(self._last_node, nodes[oldest], measured, min(rotation_sigma * looseness, math.pi),
                                 settings.edge_translation_sigma * window_depth * units[oldest] * looseness,
                                 "bridge", scale, settings.edge_scale_sigma * looseness)

    def _place(self, views: list[ViewObservation], nodes: dict[int, int], units: dict[int, float],
               window_to_map: Sim3) -> tuple[np.ndarray, np.ndarray]:
        """Keyframes at their optimized poses; other views relative to the window's newest keyframe (same camera
        preferred) in its optimized unit, so that they move with the graph; with no keyframe at all, by the
        alignment alone. Returns the poses [N,4,4] and each view's map units per window unit [N]."""
        poses, map_units = np.empty((len(views), 4, 4)), np.full(len(views), window_to_map.scale)
        optimized = {index: self._graph.pose_and_scale(node) for index, node in nodes.items()}
        for index, (pose, scale) in optimized.items():
            poses[index], map_units[index] = pose, scale * units[index]
        for index, view in enumerate(views):
            if index in optimized:
                continue
            candidates = sorted(optimized, key=lambda other: (views[other].key[0] == view.key[0],
                                                              views[other].key[1]))
            if not candidates:
                poses[index] = window_to_map.apply_pose(view.camera_to_window)
                continue
            anchor = candidates[-1]
            map_units[index] = map_units[anchor]
            poses[index] = poses[anchor] @ chaining.relative_pose(
                views[anchor].camera_to_window, view.camera_to_window, map_units[anchor])
        return poses, map_units

    def _remember(self, views: list[ViewObservation], nodes: dict[int, int], units: dict[int, float],
                  poses: np.ndarray, map_units: np.ndarray) -> None:
        """What the next window may align to: this window's views (keyframes' pixels in their stored unit, the
        others' in map units), stale ones dropped."""
        self._previous_views = {}
        for index, view in enumerate(views):
            if index in nodes:
                keyframe = self._by_node[nodes[index]]
                if keyframe.anchor is None:
                    keyframe.anchor = Anchor(poses[index], (view.points.astype(np.float64) * units[index]).astype(
                        np.float32), view.confidence)
            else:
                self._previous_views[view.key] = Anchor(
                    poses[index], (view.points.astype(np.float64) * map_units[index]).astype(np.float32),
                    view.confidence)
        for keyframe in self._keyframes.values():
            if self._windows - keyframe.last_window >= self.settings.alignment_memory_windows:
                keyframe.anchor = None
        newest = max(range(len(views)), key=lambda index: views[index].key[1])
        self._last_pose = poses[newest]
        if nodes:
            self._last_node = max(nodes.values(), key=lambda node: self._by_node[node].key[1])
        self._cloud_cache = None

    def keyframe_trajectory(self) -> list[tuple[KeyframeKey, np.ndarray]]:
        """Every keyframe's optimized camera_to_map, in time order (then camera name)."""
        with self._lock:
            poses = self._graph.poses()
            return [(keyframe.key, poses[keyframe.node])
                    for keyframe in sorted(self._by_node.values(), key=lambda kf: (kf.key[1], kf.key[0]))]

    def cloud(self) -> tuple[np.ndarray, np.ndarray]:
        """The map cloud (points [M,3] float32, colors [M,3] uint8, map frame), rebuilt from the optimized poses
        when a window was added since the last call."""
        with self._lock:
            if self._cloud_cache is None or self._cloud_cache[0] != self._windows:
                self._cloud_cache = (self._windows, self._cloud.build(self._graph.poses_and_scales()))
            return self._cloud_cache[1]

    def occupancy(self, up: np.ndarray, band: tuple[float, float] = (0.1, 1.5), resolution: float = 0.05,
                  floor_height: Optional[float] = None) -> OccupancyGrid:
        """The 2-D occupancy grid of the map cloud (policy in occupancy.py), rays cast from every keyframe camera;
        band and resolution in map units."""
        points, _ = self.cloud()
        viewpoints = np.array([pose[:3, 3] for _, pose in self.keyframe_trajectory()]).reshape(-1, 3)
        return occupancy_grid(points, up, floor_height, band, resolution, viewpoints=viewpoints)

    def holds_keyframe(self, key: KeyframeKey) -> bool:
        """Whether the map keeps this keyframe (a graph node); a demoted one (keyframe_culling) is not kept."""
        with self._lock:
            return key in self._keyframes

    def stats(self) -> MapStats:
        with self._lock:
            changes = list(self._scale_changes)
            drift = self._scale_ratio if self.metric else 1.0
            if not self.metric and self._last_node is not None:
                drift = self._graph.scale(self._last_node) / self._graph.scale(0)
            return MapStats(
                windows=self._windows, keyframes=len(self._by_node), segments=self._segments,
                edges=self._graph.edges(), loop_closures=self._loop_closures,
                loop_requests=self._loops.requests if self._loops else 0,
                loop_rejections=self._loops.rejections if self._loops else 0,
                loop_keyframes=self._loops.keyframes if self._loops else 0,
                alignment_keyframes=sum(keyframe.anchor is not None for keyframe in self._keyframes.values()),
                cloud_points=self._cloud.stored_points, evicted_keyframes=self._cloud.evicted_keyframes,
                redundant_sets=self._culling.demoted_total,
                last_status=self._last_status, scale_ratio=self._scale_ratio, scale_change=self._scale_change,
                cumulative_scale_drift=drift,
                median_scale_change=float(np.median(changes)) if changes else 0.0, residual=self._residual,
                mapping_ms=self._mapping_ms, mean_mapping_ms=self._total_ms / max(self._windows, 1))

    def loop_request(self) -> Optional[LoopRequest]:
        """After add_window: the next older keyframe that may show the newest keyframe's place, or None. The
        caller runs the model on [request.candidate's image, request.current's image] and calls verify_loop."""
        with self._lock:
            return self._loops.next_request() if self._loops is not None else None

    def verify_loop(self, request: LoopRequest, views: Sequence[ViewObservation]) -> bool:
        """Geometric verification of a loop (loop_closure.verify_loop) on the model's output for the 2-view
        window; when accepted, a robust loop edge joins the two keyframes and the graph is re-optimized."""
        views = chaining.checked_views(views)
        with self._lock:
            if self._loops is None:
                return False
            candidate, current = self._keyframes.get(request.candidate), self._keyframes.get(request.current)
            if candidate is None or current is None:
                raise ValueError(f"loop request {request} names a keyframe the map does not hold (reset since?)")
            candidate_pose, candidate_scale = self._graph.pose_and_scale(candidate.node)
            result = self._loops.verify(request, views, candidate_pose, self._graph.pose(current.node),
                                        candidate_scale)
            if not result.accepted:
                return False
            settings = self.settings
            # map units at the candidate; finite (verification needs pixels)
            scene_depth = self._loops.detector_scene_depth(request.candidate) * candidate_scale
            # the loop's similarity between the two stored units: the candidate's from the verification scale,
            # the current keyframe's from its own stored depths (unknown: the graph's guess, with a loose sigma)
            measured = result.relative_pose.copy()
            measured[:3, 3] /= candidate_scale
            current_unit = self._loops.stored_units_per_window_unit(request.current, views)
            scale_sigma = settings.edge_scale_sigma * settings.loop_sigma_factor
            if current_unit is None:
                relative_scale = self._graph.scale(current.node) / candidate_scale
                scale_sigma *= settings.bridge_sigma_factor
            else:
                relative_scale = result.scale / candidate_scale / current_unit
            self._graph.add_edge(candidate.node, current.node, measured,
                                 math.radians(settings.edge_rotation_sigma_deg) * settings.loop_sigma_factor,
                                 settings.edge_translation_sigma * scene_depth / candidate_scale
                                 * settings.loop_sigma_factor, "loop", relative_scale, scale_sigma)
            self._graph.optimize()
            poses = self._graph.poses()
            self._loops.update_positions({keyframe.key: poses[node] for node, keyframe in self._by_node.items()})
            self._loop_closures += 1
            self._loops_since_window += 1
            self._cloud_cache = None
            return True

    def last_loop_verification(self) -> Optional[LoopVerification]:
        """The newest verification's outcome and measurements (its `reason` says why a loop was rejected)."""
        with self._lock:
            return self._loops.last_verification if self._loops is not None else None


def _oldest(views: list[ViewObservation]) -> ViewObservation:
    return min(views, key=lambda view: view.key[1])
