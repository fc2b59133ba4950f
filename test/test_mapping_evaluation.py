"""The mapping evaluation (evaluate_mapping), CI subset: a shorter looped walk through the same code path.

The full figures (230 m, loop closure, the demo model) are in docs/mapping_evaluation.md; here the perfect backend
in a random per-window gauge must come out exact, the noisy backend must beat both baselines by far, the scorer
must recognise a known similarity and a reversed motion, and the CLI must write its table and plot.
"""
import math

import numpy as np
import pytest

from g2vlm_ros.cli import evaluate_mapping
from g2vlm_ros.mapping.evaluation import play_through_map, score_baselines, score_run
from g2vlm_ros.mapping.simulated_backends import noisy_backend, perfect_backend, random_rotation
from g2vlm_ros.mapping.simulation import (
    SOLID_BOXES,
    WalkSettings,
    WindowingSettings,
    assemble_windows,
    simulate_walk,
    summarize,
)
from g2vlm_ros.mapping.trajectory_scores import score_trajectory, standing_still

# One lap of the ring (57 m) and then walking backwards: a loop back to the start, both directions of motion.
CI_WALK = WalkSettings(distance_m=64.0, step_m=0.3)
CI_WINDOWS = WindowingSettings(keyframe_min_motion_m=0.6)


@pytest.fixture(scope="module")
def walk():
    sequence = simulate_walk(CI_WALK)
    return sequence, assemble_windows(sequence, CI_WINDOWS)


def test_the_walk_loops_moves_both_ways_and_stays_in_free_space(walk):
    sequence, windows = walk
    summary = summarize(sequence, windows)
    assert summary.mode_distance_m["forward"] > 50 and summary.mode_distance_m["backward"] > 5
    positions = sequence.camera_to_world[:, :3, 3]
    start_to_lap_end = np.linalg.norm(positions[20:] - positions[0], axis=1).min()
    assert start_to_lap_end < 0.5  # it comes back to where it started
    for low, high in SOLID_BOXES:  # never inside furniture or walls
        assert not np.any(np.all((positions > np.array(low)) & (positions < np.array(high)), axis=1))
    depth = sequence.local_points[..., 2]
    assert np.isfinite(depth).all() and depth.min() > 0.3
    # windows as the node forms them: K views, the last K-1 keyframes plus the newest set
    assert all(len(window.frame_indices) == CI_WINDOWS.window_size for window in windows)
    assert any(not window.newest_is_keyframe for window in windows)


def test_the_perfect_backend_answers_in_a_random_gauge(walk):
    sequence, windows = walk
    backend = perfect_backend(sequence, seed=3)
    window = windows[10].frame_indices
    scales = []
    for _ in range(3):
        geometry = backend.run(window)
        truth = np.linalg.inv(sequence.camera_to_world[window[0]]) @ sequence.camera_to_world[window[-1]]
        answer = np.linalg.inv(geometry.camera_to_window[0]) @ geometry.camera_to_window[-1]
        scale = np.linalg.norm(answer[:3, 3]) / np.linalg.norm(truth[:3, 3])
        assert np.allclose(answer[:3, :3], truth[:3, :3], atol=1e-9)
        assert np.allclose(answer[:3, 3] / scale, truth[:3, 3], atol=1e-9)
        assert np.allclose(geometry.local_points / scale, sequence.local_points[window], rtol=1e-5)
        scales.append(scale)
    assert max(scales) / min(scales) > 1.05 and 0.3 <= min(scales) and max(scales) <= 3.0


def test_the_scorer_sees_through_a_similarity_and_catches_reversed_motion():
    rng = np.random.default_rng(0)
    angles = np.linspace(0.0, 2.0 * math.pi, 80)
    truth = np.tile(np.eye(4), (80, 1, 1))
    truth[:, 0, 3], truth[:, 2, 3] = 5.0 * np.cos(angles), 3.0 * np.sin(angles) + 0.1 * angles
    stamps = np.arange(1, 81) * 100_000_000
    walked = float(np.linalg.norm(np.diff(truth[:, :3, 3], axis=0), axis=1).sum())
    gauge = np.eye(4)
    gauge[:3, :3], gauge[:3, 3] = random_rotation(rng), (1.0, -2.0, 3.0)
    estimate = gauge @ truth
    estimate[:, :3, 3] = 0.37 * (estimate[:, :3, 3] - gauge[:3, 3]) + gauge[:3, 3]
    exact = score_trajectory(truth, estimate, stamps, walked)
    assert exact.ate_rmse < 1e-9 and exact.direction_correct == 1.0
    assert exact.scale_min == pytest.approx(1.0) and exact.scale_max == pytest.approx(1.0)
    still = score_trajectory(truth, standing_still(80), stamps, walked)
    spread = math.sqrt(np.mean(np.sum((truth[:, :3, 3] - truth[:, :3, 3].mean(axis=0)) ** 2, axis=1)))
    assert still.ate_rmse == pytest.approx(spread, rel=1e-9) and still.direction_correct == 0.0
    # Every step the other way (a point reflection of the positions, cameras unchanged): the path is planar, so a
    # half turn aligns it and ATE cannot tell; the steps in each camera's own frame can.
    reversed_motion = estimate.copy()
    reversed_motion[:, :3, 3] = 2.0 * estimate[0, :3, 3] - estimate[:, :3, 3]
    assert score_trajectory(truth, reversed_motion, stamps, walked).direction_correct == 0.0


def test_perfect_geometry_in_a_random_gauge_maps_within_a_millimetre(walk):
    sequence, windows = walk
    run = play_through_map(sequence, windows, perfect_backend(sequence, seed=1), loop_closure=False,
                           keep_cloud=False)
    assert run.statuses["chained"] == len(windows) - 1
    for row in score_run(sequence, run):
        assert row.scores.ate_rmse <= 1e-3, row
        assert row.scores.direction_correct == 1.0
    _, before = score_baselines(sequence, run, "perfect")
    assert before.scores.ate_rmse > 1.0  # each window in its own frame is no trajectory at all


def test_the_noisy_backend_beats_both_baselines_by_far(walk):
    sequence, windows = walk
    run = play_through_map(sequence, windows, noisy_backend(sequence, seed=2), loop_closure=False,
                           keep_cloud=False)
    mapped = score_run(sequence, run)[0].scores
    still, before = (row.scores for row in score_baselines(sequence, run, "noisy"))
    print(f"noisy ATE {mapped.ate_rmse:.3f} m ({mapped.ate_percent:.2f} %), standing still {still.ate_rmse:.3f} m, "
          f"before {before.ate_rmse:.3f} m")
    assert mapped.ate_rmse > 1e-3  # the noise reaches the map: the test would notice a backend without it
    assert mapped.ate_rmse * 5.0 < still.ate_rmse and mapped.ate_rmse * 5.0 < before.ate_rmse
    assert 0.8 < mapped.scale_min <= mapped.scale_max < 1.25


def test_the_cli_writes_its_table_and_plot(tmp_path, capsys):
    assert evaluate_mapping.main(["--distance", "14", "--output", str(tmp_path), "--keyframe-motion", "0.6"]) == 0
    table = (tmp_path / "mapping_evaluation.md").read_text()
    for row in ("| perfect | map |", "| noisy + loops | map |", "| baseline | standing still |", "| noisy | before |"):
        assert row in table
    assert "PASS: perfect backend" in table
    png = (tmp_path / "mapping_topdown.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert "wrote" in capsys.readouterr().out
    assert evaluate_mapping.main(["--distance", "0.5", "--output", str(tmp_path / "short")]) == 2


def test_demo_targets_judge_direction_on_the_odometry_when_the_map_kept_no_backward_step(walk):
    """A walk that backs up over mapped ground adds no map keyframe there (keyframe culling): the direction target
    then rests on the odometry and the model's own steps; a map step the wrong way, when there is one, fails it."""
    from dataclasses import replace

    sequence, windows = walk
    run = play_through_map(sequence, windows, perfect_backend(sequence, seed=1), loop_closure=False,
                           keep_cloud=False)
    run.label, run.window_direction = "demo", (6, 6)
    mapped, online = score_run(sequence, run)
    still, _ = score_baselines(sequence, run, "demo")

    def lines(map_direction, online_direction) -> list[str]:
        rows = [replace(mapped, scores=replace(mapped.scores, direction_correct=map_direction)),
                replace(online, scores=replace(online.scores, direction_correct=online_direction)), still]
        evaluation = evaluate_mapping.Evaluation(sequence, [run], rows, {"demo": False}, "test walk")
        return [line for line in evaluate_mapping.target_lines(evaluation) if "direction" in line]

    assert lines(None, 1.0)[0].startswith("- PASS: demo: direction of motion on backward segments right in 100 %")
    assert "(- of" in lines(None, 1.0)[0] and "right in 6 of 6 windows" in lines(None, 1.0)[0]
    assert lines(1.0, 1.0)[0].startswith("- PASS")
    assert lines(None, 0.0)[0].startswith("- MISS")  # the odometry backs up the wrong way
    assert lines(0.0, 1.0)[0].startswith("- MISS")  # a map keyframe step the wrong way
    assert lines(None, None)[0].startswith("- MISS")  # nothing to judge: not a pass
    run.window_direction = (2, 6)
    assert lines(1.0, 1.0)[0].startswith("- MISS")  # the model's own steps point forwards: chaining hid it
