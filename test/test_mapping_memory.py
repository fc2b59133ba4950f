"""Bounds of the map over a long run (g2vlm_ros/mapping/world_map.py, map_loops.py, map_cloud.py, pose_graph.py):
loop data, alignment pixels and the cloud stay within their budgets while every keyframe keeps its pose."""
from __future__ import annotations

import dataclasses

import numpy as np

from g2vlm_ros.mapping.pose_graph import KeyframePoseGraph
from g2vlm_ros.mapping.synthetic import ellipse_walk, synthetic_sequence
from g2vlm_ros.mapping.world_map import MapSettings, WorldMap


def test_thousands_of_keyframes_keep_loop_data_pixels_and_cloud_within_their_budgets():
    keyframes, laps, budget = 1500, 30, 120  # 50 keyframes a lap: the budget holds the last 2.4 laps
    sequence = synthetic_sequence(ellipse_walk(keyframes, turns=laps), window_size=2, grid=(6, 8), seed=30)
    # culling off: every lap's keyframes are kept, as on new ground (the next test covers culling)
    settings = MapSettings(max_loop_keyframes=budget, max_points=3000, voxel_size=0.0, min_shared_points=20,
                           alignment_memory_windows=2, min_keyframe_translation=0.0, min_keyframe_rotation_deg=0.0)
    world = WorldMap(settings)
    peaks = dict(loop=0, alignment=0, cloud=0)
    requests = 0
    for views, stamp in zip(sequence.windows, sequence.stamps, strict=True):
        views = [dataclasses.replace(view, descriptor=_place_descriptor(view.key, keyframes // laps))
                 for view in views]
        world.add_window(views, stamp)
        recent = {key for key, _ in world.keyframe_trajectory()[-budget - 1:]}
        while (request := world.loop_request()) is not None:
            assert request.candidate in recent  # older keyframes lost their loop data
            requests += 1
        stats = world.stats()
        peaks = dict(loop=max(peaks["loop"], stats.loop_keyframes),
                     alignment=max(peaks["alignment"], stats.alignment_keyframes),
                     cloud=max(peaks["cloud"], stats.cloud_points))
    stats = world.stats()
    assert stats.keyframes == keyframes and len(world.keyframe_trajectory()) == keyframes  # poses all stay
    assert peaks["loop"] == budget  # filled up to the budget, never beyond
    assert peaks["alignment"] <= 2 * settings.alignment_memory_windows
    assert peaks["cloud"] <= settings.max_points and stats.evicted_keyframes > keyframes - 100
    assert len(world.cloud()[0]) <= settings.max_points
    assert requests > laps  # revisits were found all along, among the keyframes within the budget


def test_keyframes_grow_with_ground_covered_not_with_time():
    """Default culling: 20 laps of the same ellipse keep about one lap of keyframes, a camera standing still for
    300 windows keeps its first window's, and every view is still placed exactly (perfect geometry)."""
    per_lap, laps = 40, 20
    sequence = synthetic_sequence(ellipse_walk(per_lap * laps, turns=laps), window_size=3, grid=(6, 8), seed=31)
    world = WorldMap(MapSettings(min_shared_points=20, loop_closure=False))
    errors = []
    for views, stamp in zip(sequence.windows, sequence.stamps, strict=True):
        placement = world.add_window(views, stamp)
        errors += [np.abs(pose[:3, 3] - sequence.map_truth[view.key][:3, 3]).max()
                   for view, pose in zip(views, placement.camera_to_map, strict=True)]
    stats = world.stats()
    assert per_lap <= stats.keyframes <= 2 * per_lap, stats  # the first lap, then (almost) nothing new
    assert stats.redundant_sets > (laps - 2) * per_lap and stats.segments == 1
    # demoted keyframes are placed like any view: exact up to the robust fit's stopping tolerance (1e-7 relative a
    # window), which 760 windows chained on plain views add up to micrometres
    assert max(errors) < 1e-5
    standing = synthetic_sequence(np.repeat(ellipse_walk(4)[:1], 300, axis=0), window_size=3, grid=(6, 8), seed=32)
    still = WorldMap(MapSettings(min_shared_points=20, loop_closure=False))
    for views, stamp in zip(standing.windows, standing.stamps, strict=True):
        assert still.add_window(views, stamp).status in ("initialized", "chained")
    assert still.stats().keyframes == 1 and still.stats().edges == 0


def _place_descriptor(key, per_lap: int) -> np.ndarray:
    """Alike for the same place on every lap (the synthetic sets are 0.5 s apart)."""
    angle = 2 * np.pi * (key[1] // 500_000_000 % per_lap) / per_lap
    return np.exp((np.cos(angle - np.linspace(0, 2 * np.pi, 16, endpoint=False)) - 1) / 0.05).astype(np.float32)


def test_a_long_loop_free_chain_stays_solvable():
    """A straight 1600-keyframe chain, 0.4 m a step, as a long exploration without loops gives: the newest
    keyframe's uncertainty grows with the lever arm until a Cholesky-based ISAM2 finds the system indeterminate
    (after about 1400 keyframes with gtsam 4.3); the graph must keep solving it."""
    for similarity in (True, False):
        graph = KeyframePoseGraph(similarity=similarity)
        step = np.eye(4)
        step[0, 3] = 0.4
        graph.add_node(0, np.eye(4))
        for node in range(1, 1600):
            graph.add_node(node, graph.pose(node - 1) @ step)
            graph.add_edge(node - 1, node, step, np.radians(1.0), 0.05, scale=1.0, scale_sigma=0.01)
            graph.optimize()
        assert abs(graph.pose(1599)[0, 3] - 0.4 * 1599) < 1e-6
