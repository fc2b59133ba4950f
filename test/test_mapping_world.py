"""Chaining windows into one map (g2vlm_ros/mapping/world_map.py, chaining.py, pose_graph.py) on synthetic walks
whose truth is known: every window in its own random similarity gauge, as an up-to-scale model returns them."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from evo.core import metrics
from evo.core.trajectory import PoseTrajectory3D

from g2vlm_ros.mapping.alignment import Sim3
from g2vlm_ros.mapping.pose_graph import KeyframePoseGraph
from g2vlm_ros.mapping.synthetic import BoxRoom, ellipse_walk, random_rotation, render_points, synthetic_sequence
from g2vlm_ros.mapping.world_map import MapSettings, ViewObservation, WorldMap


def _play(sequence, world=None, metric=False):
    world = world or WorldMap(metric=metric)
    placements = [world.add_window(views, stamp) for views, stamp in zip(sequence.windows, sequence.stamps,
                                                                           strict=True)]
    return world, placements


def _relative_error(world, sequence) -> float:
    """Largest keyframe position or rotation error, relative to the extent of the true trajectory."""
    trajectory = world.keyframe_trajectory()
    truth = np.stack([sequence.map_truth[key] for key, _ in trajectory])
    estimate = np.stack([pose for _, pose in trajectory])
    extent = np.ptp(truth[:, :3, 3], axis=0).max()
    return max(np.abs(estimate[:, :3, 3] - truth[:, :3, 3]).max() / extent,
               np.abs(estimate[:, :3, :3] - truth[:, :3, :3]).max())


def _ate(world, sequence) -> float:
    """evo's absolute trajectory error (RMSE of positions, no alignment: the map frame is the truth's frame)."""
    trajectory = world.keyframe_trajectory()
    stamps = np.array([key[1] * 1e-9 for key, _ in trajectory])
    estimate = PoseTrajectory3D(poses_se3=[pose for _, pose in trajectory], timestamps=stamps)
    truth = PoseTrajectory3D(poses_se3=[sequence.map_truth[key] for key, _ in trajectory], timestamps=stamps)
    ape = metrics.APE(metrics.PoseRelation.translation_part)
    ape.process_data((truth, estimate))
    return ape.get_statistic(metrics.StatisticsType.rmse)


def test_exact_windows_in_random_gauges_chain_exactly():
    sequence = synthetic_sequence(ellipse_walk(24), window_size=3, cameras=2, seed=11)
    world, placements = _play(sequence)
    assert [placement.status for placement in placements] == ["initialized"] + ["chained"] * (len(placements) - 1)
    assert _relative_error(world, sequence) < 1e-6
    for views, placement, gauge in zip(sequence.windows, placements, sequence.gauges, strict=True):
        for view, pose in zip(views, placement.camera_to_map, strict=True):
            assert np.abs(pose - sequence.map_truth[view.key]).max() < 1e-5
        # map units per window unit: the first window's gauge scale over this one's
        assert placement.scale_ratio == pytest.approx(sequence.gauges[0].scale / gauge.scale, rel=1e-6)
        assert placement.scale_spread < 1e-6 and placement.residual < 1e-5
    stats = world.stats()
    assert stats.keyframes == 2 * 24 and stats.segments == 1 and stats.loop_closures == 0
    # every window has its own unit, the map's does not drift: the newest keyframe's node scale is the first's
    assert stats.cumulative_scale_drift == pytest.approx(1.0, abs=1e-6)
    assert stats.scale_change == pytest.approx(placements[-1].scale_ratio / placements[-2].scale_ratio, rel=1e-9)
    # every keyframe pair of a window is an edge, again in each later window that still holds both
    assert stats.edges > 2 * 24
    assert world.loop_request() is None


def test_a_gauge_error_would_be_seen():
    """The exactness check above can fail: one window shifted by 1 % of its scale breaks it."""
    sequence = synthetic_sequence(ellipse_walk(12), window_size=3, seed=12)
    views = sequence.windows[5]
    sequence.windows[5] = [dataclasses.replace(view, points=view.points * 1.01) for view in views]
    world, _ = _play(sequence)
    assert _relative_error(world, sequence) > 1e-4


def test_metric_windows_are_aligned_rigidly_and_drift_is_reported():
    sequence = synthetic_sequence(ellipse_walk(16), window_size=3, seed=13, metric=True)
    sequence.windows[6] = [dataclasses.replace(view, points=view.points * 1.05,
                                               camera_to_window=_scaled_pose(view.camera_to_window, 1.05))
                           for view in sequence.windows[6]]
    world = WorldMap(metric=True)
    placements = []
    for index, (views, stamp) in enumerate(zip(sequence.windows, sequence.stamps, strict=True)):
        placements.append(world.add_window(views, stamp))
        if index <= 6:  # (the next windows share the wrong window's keyframes: they measure what it stored)
            # metric: the drift reported is the newest window's metric scale against the map's
            expected = 1 / 1.05 if index == 6 else 1.0
            assert world.stats().cumulative_scale_drift == pytest.approx(expected, rel=1e-3)
            assert world.stats().scale_change == pytest.approx(expected, rel=1e-3)
    assert all(placement.window_to_map.scale == 1.0 for placement in placements)
    assert placements[6].scale_ratio == pytest.approx(1 / 1.05, rel=1e-3)
    assert all(placement.scale_ratio == pytest.approx(1.0, abs=1e-6) for placement in placements[:6])
    # the wrong window costs its own accuracy, not the map's: a similarity map would have shrunk instead
    assert _relative_error(world, sequence) < 0.05


def _scaled_pose(pose, factor):
    scaled = pose.copy()
    scaled[:3, 3] *= factor
    return scaled


def test_twenty_percent_wrong_pixels_do_not_move_the_chain():
    sequence = synthetic_sequence(ellipse_walk(16), window_size=3, cameras=2, seed=14, outlier_fraction=0.2)
    world, placements = _play(sequence)
    assert all(placement.status != "reinitialized" for placement in placements)
    assert _relative_error(world, sequence) < 1e-6


def test_noisy_windows_give_a_bounded_error():
    walk = ellipse_walk(40)
    noisy = synthetic_sequence(walk, window_size=3, seed=15, pose_noise_deg=1.0, pose_noise_fraction=0.02,
                               depth_noise=0.02, outlier_fraction=0.05)
    world, placements = _play(noisy)
    assert all(placement.status == "chained" for placement in placements[1:])
    truth = np.stack([noisy.map_truth[key][:3, 3] for key, _ in world.keyframe_trajectory()])
    walked = np.linalg.norm(np.diff(truth, axis=0), axis=1).sum()
    standing_still = float(np.sqrt(((truth - truth[0]) ** 2).sum(1).mean()))
    ate = _ate(world, noisy)
    assert 0 < ate < 0.05 * walked
    assert ate < standing_still / 5
    assert world.stats().median_scale_change > 0.0


def test_no_shared_keyframe_starts_a_new_segment_from_the_last_pose():
    sequence = synthetic_sequence(ellipse_walk(6), window_size=1, seed=16)
    world, placements = _play(sequence)
    assert [placement.status for placement in placements] == ["initialized"] + ["reinitialized"] * 5
    assert world.stats().segments == 6
    for previous, placement in zip(placements, placements[1:], strict=False):
        # identity motion: each window continues exactly where the previous one ended
        assert np.allclose(placement.camera_to_map[0], previous.camera_to_map[-1], atol=1e-6)
        assert placement.shared_keyframes == 0 and np.isnan(placement.residual)
    assert len(world.keyframe_trajectory()) == 6


def test_the_previous_newest_view_chains_a_window_that_shares_no_keyframe():
    """Window A: keyframe 0 and the newest set 1 (not a keyframe); window B: set 1 again and keyframe 2. B shares
    no keyframe with the map, but the same view as A's newest: B is chained on it, exactly."""
    room, truth = BoxRoom(), ellipse_walk(12)[[0, 1, 2]]
    gauge = Sim3(0.37, random_rotation(np.random.default_rng(20)), np.array([1.0, -2.0, 0.5]))

    def view(index, keyframe, frame_index, gauge=None):
        gauge = gauge or Sim3.identity()
        pose = gauge.apply_pose(np.linalg.solve(truth[frame_index], truth[index]))
        points = (render_points(room, truth[index]) * gauge.scale).astype(np.float32)
        return ViewObservation(("cam0", index), keyframe, pose, points)

    world = WorldMap()
    world.add_window([view(0, True, 0), view(1, False, 0)], 1)
    placement = world.add_window([view(1, False, 1, gauge), view(2, True, 1, gauge)], 2)
    assert placement.status == "chained" and placement.shared_keyframes == 1
    expected = np.linalg.solve(truth[0], truth[2])
    assert np.abs(placement.camera_to_map[1] - expected).max() < 1e-5
    assert placement.scale_ratio == pytest.approx(1 / 0.37, rel=1e-6)
    stats = world.stats()
    assert stats.keyframes == 2 and stats.segments == 1 and stats.edges == 1  # the link to keyframe 0
    # a window of one view that the map holds as a keyframe is chained on it, whether it is a keyframe now or not
    assert world.add_window([view(2, False, 2)], 3).status == "chained"
    assert world.add_window([view(0, True, 0, gauge)], 4).status == "chained"


def test_bad_windows_get_clear_errors_and_leave_the_map_as_it_was():
    sequence = synthetic_sequence(ellipse_walk(4), window_size=2, seed=18)
    world, _ = _play(dataclasses.replace(sequence, windows=sequence.windows[:1], stamps=sequence.stamps[:1]))
    before = world.stats()
    view = sequence.windows[1][0]
    bad_windows = {
        "at least one view": [],
        "appears twice": [view, view],
        "finite": [dataclasses.replace(view, camera_to_window=np.full((4, 4), np.nan))],
        "rotation": [dataclasses.replace(view, camera_to_window=np.diag([2.0, 2.0, 2.0, 1.0]))],
        r"\[h,w,3\]": [dataclasses.replace(view, points=np.zeros((5, 3)))],
        "confidence": [dataclasses.replace(view, confidence=np.ones((2, 2)))],
        "colors": [dataclasses.replace(view, colors=np.zeros(view.points.shape, np.float32))],
        "camera name": [dataclasses.replace(view, key=("cam0", "late"))],
    }
    for message, views in bad_windows.items():
        with pytest.raises(ValueError, match=message):
            world.add_window(views, 0)
    assert world.stats() == before
    with pytest.raises(ValueError, match="max_points"):
        WorldMap(MapSettings(max_points=0))


def test_reset_forgets_everything():
    sequence = synthetic_sequence(ellipse_walk(5), window_size=2, seed=19)
    world, _ = _play(sequence)
    world.reset()
    assert world.keyframe_trajectory() == [] and world.stats().keyframes == 0 and len(world.cloud()[0]) == 0
    assert world.add_window(sequence.windows[2], sequence.stamps[2]).status == "initialized"


def test_pose_graph_averages_repeated_edges_and_bends_little_for_a_robust_loop():
    graph = KeyframePoseGraph()
    graph.add_node(0, np.eye(4))
    graph.add_node(1, _translation(1.0))
    graph.add_edge(0, 1, _translation(1.0), 0.01, 0.1)
    graph.add_edge(0, 1, _translation(1.2), 0.01, 0.1)  # a second window measured the same pair
    graph.optimize()
    assert graph.pose(1)[0, 3] == pytest.approx(1.1, abs=1e-6)
    assert graph.edges() == 2 and graph.nodes == 2
    graph.add_node(2, _translation(2.1))
    graph.add_edge(1, 2, _translation(1.0), 0.01, 0.1)
    graph.add_edge(0, 2, _translation(10.0), 0.01, 0.1, kind="loop")  # a wrong loop, far from the chain
    graph.optimize()
    assert graph.pose(2)[0, 3] < 3.5  # a Gaussian edge would pull it to about 5.5
    assert graph.edges("loop") == 1
    with pytest.raises(ValueError, match="both keyframes"):
        graph.add_edge(0, 7, np.eye(4), 0.1, 0.1)


def _translation(x):
    pose = np.eye(4)
    pose[0, 3] = x
    return pose


def _circle_truth(count: int, radius: float) -> list[np.ndarray]:
    poses = []
    for index in range(count):
        angle = 2 * np.pi * index / count
        pose = np.eye(4)
        pose[:3, :3] = [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
        pose[:3, 3] = (radius * np.sin(angle), 0.0, radius * np.cos(angle))
        poses.append(pose)
    return poses


def _chain_with_unseen_scale_drift(graph: KeyframePoseGraph, truth: list[np.ndarray], growth: float) -> None:
    """Keyframe k's stored unit is growth^k map units, but every window edge measures a unit ratio of 1: the
    drift chaining cannot see. The chain then shrinks; one loop edge (last -> first, measured right, scale
    included) closes it."""
    units = [growth ** index for index in range(len(truth))]
    graph.add_node(0, truth[0])
    for index in range(1, len(truth)):
        relative = np.linalg.solve(truth[index - 1], truth[index])
        relative[:3, 3] /= units[index - 1]  # the step in the previous keyframe's stored unit
        graph.add_node(index, graph.pose(index - 1) @ _scaled_translation(relative, units[0]))
        graph.add_edge(index - 1, index, relative, 0.01, 0.02, scale=1.0, scale_sigma=0.01)
        graph.optimize()
    loop = np.linalg.solve(truth[-1], truth[0])
    loop[:3, 3] /= units[-1]
    graph.add_edge(len(truth) - 1, 0, loop, 0.01, 0.02, kind="loop", scale=units[0] / units[-1], scale_sigma=0.01)
    graph.optimize()


def _scaled_translation(pose, factor):
    scaled = pose.copy()
    scaled[:3, 3] *= factor
    return scaled


def test_a_loop_corrects_scale_drift_along_the_whole_similarity_chain():
    truth = _circle_truth(30, 5.0)
    errors = {}
    for similarity in (True, False):
        graph = KeyframePoseGraph(similarity=similarity)
        _chain_with_unseen_scale_drift(graph, truth, growth=1.02)
        poses = graph.poses()
        errors[similarity] = max(np.linalg.norm(poses[index][:3, 3] - truth[index][:3, 3]) for index in poses)
        if similarity:
            scales = [graph.scale(index) for index in range(len(truth))]
            # the correction is spread along the loop: each node's scale moves towards its true unit 1.02^k
            assert scales[0] == pytest.approx(1.0, abs=1e-4)
            assert all(later > earlier for earlier, later in zip(scales, scales[1:], strict=False))
            assert 1.02 ** (29 * 2 / 3) < scales[-1] < 1.02 ** 29  # most of the drift found, none invented
    # a rigid graph can only bend the shrunken circle; similarity nodes restore its size
    print(f"largest position error after the loop: similarity {errors[True]:.3f}, rigid {errors[False]:.3f}")
    assert errors[True] < errors[False] / 3
