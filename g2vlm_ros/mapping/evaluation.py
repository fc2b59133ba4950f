"""Plays a walk's windows through WorldMap and scores what comes out: the evaluation behind `evaluate_mapping`.

A backend here is anything with `run(frame_indices) -> WindowGeometry` (simulated_backends, or the demo model's
adapter in cli/evaluate_mapping). Each window's answer becomes ViewObservations and goes to WorldMap.add_window,
as the node hands them over; when the map asks to verify a loop candidate, the backend runs on the two-view window
[candidate, current] and the answer goes to verify_loop, as the node would run the model on it.

Three trajectories come out of one run, each scored against the truth (trajectory_scores):
- "map": WorldMap.keyframe_trajectory() at the end: every keyframe, optimized (what ~/path shows);
- "online": the newest camera of each window as placed when its window arrived (what ~/odom publishes);
- "before": the newest camera in its own window's frame and unit, as the node published before the map existed.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Protocol

import numpy as np

from g2vlm_ros.mapping.simulated_backends import WindowGeometry
from g2vlm_ros.mapping.simulation import SimulatedSequence, SimulatedWindow
from g2vlm_ros.mapping.trajectory_scores import TrajectoryScores, score_trajectory, standing_still

WIDE_LOOP_M = 2.0


class WindowBackend(Protocol):
    name: str

    def run(self, frame_indices: list[int]) -> WindowGeometry: ...


@dataclass
class MapRun:
    """Raw outputs of one play-through (poses camera-to-frame [N,4,4] with their stamps [N])."""

    label: str
    map_stamps_ns: np.ndarray
    map_poses: np.ndarray
    online_stamps_ns: np.ndarray
    online_poses: np.ndarray
    before_stamps_ns: np.ndarray
    before_poses: np.ndarray
    statuses: Counter = field(default_factory=Counter)
    loop_requests: int = 0
    loops_accepted: int = 0
    wide_loops: int = 0  # accepted with the true cameras > WIDE_LOOP_M apart or > 60 deg turned (false loops show here)
    mapping_ms: list[float] = field(default_factory=list)  # WorldMap time per window (add_window + loop verify)
    window_direction: tuple[int, int] = (0, 0)  # (correct, total) newest-vs-previous view steps on backward legs
    cloud: Optional[tuple[np.ndarray, np.ndarray]] = None
    stats: object = None


def observations(sequence: SimulatedSequence, frame_indices: list[int], geometry: WindowGeometry,
                 newest_is_keyframe: bool) -> list:
    from g2vlm_ros.mapping.world_map import ViewObservation

    last = len(frame_indices) - 1
    return [ViewObservation(
        key=sequence.key(index), keyframe=view < last or newest_is_keyframe,
        camera_to_window=np.asarray(geometry.camera_to_window[view], dtype=np.float64),
        points=np.asarray(geometry.local_points[view], dtype=np.float32),
        confidence=None if geometry.confidence is None else geometry.confidence[view],
        colors=geometry.colors[view], descriptor=geometry.descriptors[view])
        for view, index in enumerate(frame_indices)]


def _newest_in_window(geometry: WindowGeometry) -> np.ndarray:
    """The newest camera in the window's first view's frame (what the node published per window before)."""
    return np.linalg.inv(geometry.camera_to_window[0]) @ geometry.camera_to_window[-1]


def _loop_frame_indices(sequence: SimulatedSequence, request) -> list[int]:
    """[candidate, current] frame indices of a LoopRequest (keys are (camera, stamp_ns))."""
    index_of = {int(stamp): index for index, stamp in enumerate(sequence.stamps_ns)}
    return [index_of[int(request.candidate[1])], index_of[int(request.current[1])]]


def _same_place(sequence: SimulatedSequence, first: int, second: int) -> bool:
    poses = sequence.camera_to_world
    relative = poses[first, :3, :3].T @ poses[second, :3, :3]
    turned = np.degrees(np.arccos(np.clip((np.trace(relative) - 1.0) / 2.0, -1.0, 1.0)))
    return bool(np.linalg.norm(poses[first, :3, 3] - poses[second, :3, 3]) <= WIDE_LOOP_M and turned <= 60.0)


def _window_direction(sequence: SimulatedSequence, frame_indices: list[int], geometry: WindowGeometry) -> int:
    """+1 / -1: the backend's step from the previous to the newest view points the true way or not; 0: no step."""
    before, after = frame_indices[-2], frame_indices[-1]
    true_poses = sequence.camera_to_world
    true_step = true_poses[before, :3, :3].T @ (true_poses[after, :3, 3] - true_poses[before, :3, 3])
    if np.linalg.norm(true_step) < 0.05:
        return 0
    poses = geometry.camera_to_window
    step = poses[-2, :3, :3].T @ (poses[-1, :3, 3] - poses[-2, :3, 3])
    return 1 if float(np.dot(true_step, step)) > 0 else -1


def play_through_map(sequence: SimulatedSequence, windows: list[SimulatedWindow], backend: WindowBackend,
                     loop_closure: bool, label: str = "", settings=None, keep_cloud: bool = True) -> MapRun:
    from g2vlm_ros.mapping.world_map import MapSettings, WorldMap

    base = settings if settings is not None else MapSettings()
    world = WorldMap(_with_loop_closure(base, loop_closure))
    online, before = {}, {}
    run = MapRun(label or backend.name, *(np.empty(0),) * 6)
    correct = total = 0
    for window in windows:
        indices = window.frame_indices
        geometry = backend.run(indices)
        newest_stamp = int(sequence.stamps_ns[indices[-1]])
        before[newest_stamp] = _newest_in_window(geometry)
        if sequence.modes[indices[-1]] == "backward":
            verdict = _window_direction(sequence, indices, geometry)
            correct, total = correct + (verdict > 0), total + (verdict != 0)
        views = observations(sequence, indices, geometry, window.newest_is_keyframe)
        started = time.perf_counter()
        placement = world.add_window(views, newest_stamp)
        elapsed = time.perf_counter() - started
        run.statuses[placement.status] += 1
        online[newest_stamp] = np.asarray(placement.camera_to_map[-1], dtype=np.float64)
        request = world.loop_request() if loop_closure else None
        if request is not None:
            run.loop_requests += 1
            pair = _loop_frame_indices(sequence, request)
            pair_views = observations(sequence, pair, backend.run(pair), True)
            started = time.perf_counter()
            accepted = bool(world.verify_loop(request, pair_views))
            run.loops_accepted += accepted
            run.wide_loops += accepted and not _same_place(sequence, *pair)
            elapsed += time.perf_counter() - started
        run.mapping_ms.append(1e3 * elapsed)
    trajectory = world.keyframe_trajectory()
    run.map_stamps_ns = np.array([key[1] for key, _ in trajectory], dtype=np.int64)
    run.map_poses = np.array([pose for _, pose in trajectory], dtype=np.float64)
    run.online_stamps_ns = np.array(sorted(online), dtype=np.int64)
    run.online_poses = np.array([online[stamp] for stamp in sorted(online)])
    run.before_stamps_ns = np.array(sorted(before), dtype=np.int64)
    run.before_poses = np.array([before[stamp] for stamp in sorted(before)])
    run.window_direction = (correct, total)
    run.stats = world.stats()
    if keep_cloud:
        run.cloud = world.cloud()
    return run


def _with_loop_closure(settings, loop_closure: bool):
    from dataclasses import replace

    return replace(settings, loop_closure=loop_closure)


@dataclass(frozen=True)
class RunScores:
    label: str
    trajectory: str  # map | online | before | standing still
    scores: TrajectoryScores


def score_poses(sequence: SimulatedSequence, stamps_ns: np.ndarray, poses: np.ndarray) -> TrajectoryScores:
    """Scores poses at some of the sequence's stamps against the truth at those stamps."""
    index_of = {int(stamp): index for index, stamp in enumerate(sequence.stamps_ns)}
    indices = [index_of[int(stamp)] for stamp in stamps_ns]
    backward = [sequence.modes[index] == "backward" for index in indices]
    # scale drift per 10 m, or per quarter of a shorter walk (the demo model's room is a few metres)
    segment_m = min(10.0, sequence.distance_walked_m / 4.0)
    return score_trajectory(sequence.camera_to_world[indices], poses, stamps_ns,
                            sequence.distance_walked_m, direction_selected=backward, segment_m=segment_m)


def score_run(sequence: SimulatedSequence, run: MapRun) -> list[RunScores]:
    results = [RunScores(run.label, "map", score_poses(sequence, run.map_stamps_ns, run.map_poses)),
               RunScores(run.label, "online", score_poses(sequence, run.online_stamps_ns, run.online_poses))]
    return results


def score_baselines(sequence: SimulatedSequence, run: MapRun, label: str) -> list[RunScores]:
    """Standing still at the map's keyframes, and the before behaviour of this run's backend (labelled `label`)."""
    return [RunScores("baseline", "standing still",
                      score_poses(sequence, run.map_stamps_ns, standing_still(len(run.map_stamps_ns)))),
            RunScores(label, "before", score_poses(sequence, run.before_stamps_ns, run.before_poses))]
