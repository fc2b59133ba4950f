"""Loop closure wired into the map (world_map.py, map_loops.py over loop_closure.py): a revisit found by descriptor
and verified on a [candidate, current] window pulls the drifted chain back; a look-alike place is rejected."""
from __future__ import annotations

import dataclasses

import numpy as np

from g2vlm_ros.mapping.alignment import Sim3
from g2vlm_ros.mapping.synthetic import BoxRoom, ellipse_walk, random_rotation, render_points, synthetic_sequence
from g2vlm_ros.mapping.world_map import ViewObservation, WorldMap

ANCHORS = np.stack(np.meshgrid(np.linspace(-2.5, 2.5, 5), np.linspace(-3.5, 3.5, 5)), -1).reshape(-1, 2)
HEADINGS = np.linspace(0, 2 * np.pi, 8, endpoint=False)


def _place_descriptor(camera_to_world: np.ndarray) -> np.ndarray:
    """A stand-in for the model's pooled tokens: similar for nearby poses looking the same way."""
    position = camera_to_world[[0, 2], 3]
    forward = camera_to_world[:3, 2]
    yaw = np.arctan2(forward[0], forward[2])
    near = np.exp(-((ANCHORS - position) ** 2).sum(1) / 0.5)
    facing = np.exp((np.cos(yaw - HEADINGS) - 1.0) / 0.2)
    return np.outer(near, facing).ravel().astype(np.float32)


def _with_descriptors(sequence):
    windows = [[dataclasses.replace(view, descriptor=_place_descriptor(sequence.world_truth[view.key]))
                for view in views] for views in sequence.windows]
    return dataclasses.replace(sequence, windows=windows)


def _verification_window(sequence, candidate, current, rng, look_alike=False):
    """What a perfect model returns for [candidate, current] in a random gauge; a look-alike place makes the
    model see the candidate's image twice (repeated texture): identical points, no motion."""
    gauge = Sim3(float(np.exp(rng.uniform(-0.5, 0.5))), random_rotation(rng), rng.normal(size=3))
    truth = sequence.world_truth
    shown = candidate if look_alike else current
    views = []
    for key, seen in ((candidate, candidate), (current, shown)):
        pose = gauge.apply_pose(np.linalg.solve(truth[candidate], truth[seen]))
        points = (render_points(BoxRoom(), truth[seen]) * gauge.scale).astype(np.float32)
        views.append(ViewObservation(key, True, pose, points, np.ones(points.shape[:2], np.float32)))
    return views


def _final_error(world, sequence) -> float:
    key, pose = world.keyframe_trajectory()[-1]
    return float(np.linalg.norm(pose[:3, 3] - sequence.map_truth[key][:3, 3]))


def test_a_verified_revisit_closes_the_loop_and_a_look_alike_does_not():
    sequence = _with_descriptors(synthetic_sequence(ellipse_walk(64, turns=1.25), window_size=3, seed=21,
                                                    pose_noise_deg=1.0, pose_noise_fraction=0.02, depth_noise=0.02))
    rng = np.random.default_rng(22)
    with_loops, without_loops = WorldMap(), WorldMap()
    accepted = 0
    for views, stamp in zip(sequence.windows, sequence.stamps, strict=True):
        without_loops.add_window(views, stamp)
        placement = with_loops.add_window(views, stamp)
        assert placement.loop_closures == 0 or accepted > 0
        while (request := with_loops.loop_request()) is not None:
            accepted += with_loops.verify_loop(request, _verification_window(sequence, request.candidate,
                                                                              request.current, rng))
    stats = with_loops.stats()
    assert accepted >= 1 and stats.loop_closures == accepted and stats.loop_requests >= accepted
    assert without_loops.loop_request() is None or without_loops.stats().loop_closures == 0
    assert _final_error(with_loops, sequence) < 0.5 * _final_error(without_loops, sequence)

    # a look-alike: the oldest keyframe, far from where the walk ends, shown as if it were the current view
    trajectory = with_loops.keyframe_trajectory()
    current, far = trajectory[-1][0], max(trajectory, key=lambda entry: np.linalg.norm(
        entry[1][:3, 3] - trajectory[-1][1][:3, 3]))[0]
    request = dataclasses.replace(request or _any_request(), current=current, candidate=far)
    edges = stats.edges
    assert not with_loops.verify_loop(request, _verification_window(sequence, far, current, rng, look_alike=True))
    assert with_loops.stats().edges == edges and with_loops.stats().loop_rejections >= 1
    assert "odometry" in with_loops.last_loop_verification().reason


def _any_request():
    from g2vlm_ros.mapping.map_loops import LoopRequest
    return LoopRequest(("cam0", 0), ("cam0", 0), 1.0)
