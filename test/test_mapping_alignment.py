"""The similarity algebra and its robust estimation from dense correspondences (g2vlm_ros/mapping/alignment.py)."""
from __future__ import annotations

import numpy as np
import pytest

from g2vlm_ros.mapping.alignment import Sim3, align_points, depth_ratio_scale, umeyama, weighted_median
from g2vlm_ros.mapping.synthetic import random_rotation


def _random_sim3(rng, scale=None) -> Sim3:
    return Sim3(float(np.exp(rng.uniform(-1, 1))) if scale is None else scale, random_rotation(rng),
                rng.normal(scale=3.0, size=3))


def test_sim3_algebra_agrees_with_its_matrix():
    rng = np.random.default_rng(1)
    first, second = _random_sim3(rng), _random_sim3(rng)
    points = rng.normal(size=(10, 3))
    homogeneous = np.c_[points, np.ones(10)]
    assert np.allclose(first.apply_points(points), (homogeneous @ first.matrix().T)[:, :3])
    assert np.allclose(first.compose(second).matrix(), first.matrix() @ second.matrix())
    assert np.allclose(first.inverse().matrix(), np.linalg.inv(first.matrix()))
    assert np.allclose(first.compose(first.inverse()).matrix(), np.eye(4))
    assert np.allclose(Sim3.identity().matrix(), np.eye(4))
    # a pose moves like its camera centre and keeps a pure rotation
    pose = np.eye(4)
    pose[:3, :3] = random_rotation(rng)
    pose[:3, 3] = rng.normal(size=3)
    moved = first.apply_pose(pose)
    assert np.allclose(moved[:3, 3], first.apply_points(pose[:3, 3]))
    assert np.allclose(moved[:3, :3].T @ moved[:3, :3], np.eye(3))
    with pytest.raises(ValueError, match="positive scale"):
        Sim3(0.0, np.eye(3), np.zeros(3))


def test_umeyama_recovers_an_exact_similarity():
    rng = np.random.default_rng(2)
    truth = _random_sim3(rng)
    source = rng.normal(size=(50, 3))
    fitted = umeyama(source, truth.apply_points(source), np.ones(50))
    assert np.allclose(fitted.matrix(), truth.matrix(), atol=1e-10)


def test_rigid_fit_keeps_scale_one_and_reports_the_free_scale():
    rng = np.random.default_rng(3)
    truth = _random_sim3(rng, scale=1.1)
    source = rng.normal(size=(200, 3))
    alignment = align_points(source, truth.apply_points(source), fix_scale=True)
    assert alignment.transform.scale == 1.0
    assert alignment.free_scale == pytest.approx(1.1, rel=1e-6)
    assert np.allclose(alignment.transform.rotation, truth.rotation, atol=1e-8)
    assert alignment.residual > 0.01  # a rigid fit cannot explain a 10 % scale


def test_twenty_percent_wrong_correspondences_do_not_move_the_fit():
    rng = np.random.default_rng(4)
    truth = _random_sim3(rng)
    source = rng.normal(size=(2000, 3)) * [3.0, 1.0, 2.0]
    target = truth.apply_points(source)
    wrong = rng.random(2000) < 0.2
    target[wrong] += rng.normal(scale=2.0, size=(int(wrong.sum()), 3))
    robust = align_points(source, target)
    plain = umeyama(source, target, np.ones(2000))
    robust_error = np.abs(robust.transform.matrix() - truth.matrix()).max()
    plain_error = np.abs(plain.matrix() - truth.matrix()).max()
    assert plain_error > 1e-2, "the outliers must be able to move a non-robust fit"
    assert robust_error < 1e-6
    assert robust.inlier_fraction == pytest.approx(0.8, abs=0.03)
    # the confidence counts: the same wrong points with zero confidence are simply ignored
    ignored = align_points(source, target, (~wrong).astype(float))
    assert np.abs(ignored.transform.matrix() - truth.matrix()).max() < 1e-9


def test_alignment_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[N,3\]"):
        align_points(np.zeros((5, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="at least 3"):
        align_points(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="coincide"):
        align_points(np.zeros((5, 3)), np.ones((5, 3)))
    with pytest.raises(ValueError, match="confidence"):
        align_points(np.eye(3), np.eye(3), np.array([1.0, -1.0, 1.0]))


def test_depth_ratio_scale_per_keyframe_and_its_spread():
    rng = np.random.default_rng(5)
    depths = [rng.uniform(1, 5, 300) for _ in range(3)]
    agreeing = depth_ratio_scale([2.0 * d for d in depths], depths, [np.ones(300)] * 3)
    assert agreeing.per_keyframe == pytest.approx((2.0, 2.0, 2.0))
    assert agreeing.scale == pytest.approx(2.0) and agreeing.spread == pytest.approx(0.0, abs=1e-12)
    disagreeing = depth_ratio_scale([2.0 * depths[0], 2.0 * depths[1], 2.4 * depths[2]], depths,
                                    [np.ones(300)] * 3)
    assert disagreeing.per_keyframe[2] == pytest.approx(2.4)
    assert disagreeing.spread > 0.05
    assert weighted_median(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 5.0])) == 3.0
