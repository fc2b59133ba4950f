"""Metric scale estimators on synthetic scenes with known geometry."""
import numpy as np
import pytest

from g2vlm_ros.geometry.scale import ScaleUnavailable, scale_from_baseline, scale_from_depth, scale_from_trajectories

TRUE_SCALE = 2.37  # metres per model unit


def random_rotation(rng) -> np.ndarray:
    """A proper rotation from the QR decomposition of a Gaussian matrix."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def trajectory(count=12):
    """A curved camera path in metres (odometry frame), starting away from the origin."""
    t = np.linspace(0, 1, count)
    return np.stack((2.0 * t + 1.0, 0.5 * np.sin(3 * t), 0.1 * t ** 2 + 0.4), axis=1)


def to_model_frame(metric_positions, rotation, offset):
    """What an up-to-scale model would predict for the same cameras: another frame, another unit."""
    return (metric_positions @ rotation) / TRUE_SCALE + offset


def test_tf_trajectory_recovers_a_known_scale_within_2_percent_with_noise():
    metric = trajectory()
    rotation = random_rotation(np.random.default_rng(1))
    predicted = to_model_frame(metric, rotation, np.array([0.3, -1.0, 2.0]))
    predicted += np.random.default_rng(2).normal(0, 0.01 / TRUE_SCALE, predicted.shape)  # 1 cm of model noise
    fit = scale_from_trajectories(predicted, metric)
    assert fit.metres_per_unit == pytest.approx(TRUE_SCALE, rel=0.02) and fit.source == "tf"
    assert fit.residual_m < 0.03 and fit.samples == 12
    aligned = fit.metres_per_unit * predicted @ fit.rotation.T + fit.translation
    assert np.abs(aligned - metric).max() < 0.05


def test_tf_trajectory_is_exact_without_noise_and_ignores_non_finite_samples():
    metric = trajectory()
    predicted = to_model_frame(metric, random_rotation(np.random.default_rng(3)), np.zeros(3))
    predicted[4] = np.nan
    fit = scale_from_trajectories(predicted, metric)
    assert fit.metres_per_unit == pytest.approx(TRUE_SCALE, rel=1e-9) and fit.samples == 11
    assert fit.residual_m < 1e-9


@pytest.mark.parametrize("measured, message", [
    (np.zeros((5, 3)) + [1.0, 2.0, 3.0], "not enough motion"),
    (np.full((1, 3), 1.0), "at least two camera positions"),
])
def test_tf_trajectory_without_motion_gives_no_scale(measured, message):
    with pytest.raises(ScaleUnavailable, match=message):
        scale_from_trajectories(np.random.default_rng(0).normal(size=measured.shape), measured)


def test_rig_baseline_recovers_the_scale_without_motion():
    left, right = np.array([0.1, 0.2, 0.3]), np.array([0.1 + 0.12 / TRUE_SCALE, 0.2, 0.3])  # 12 cm stereo baseline
    fit = scale_from_baseline(left, right, known_distance_m=0.12)
    assert fit.metres_per_unit == pytest.approx(TRUE_SCALE, rel=1e-9) and fit.source == "rig"
    with pytest.raises(ScaleUnavailable, match="coincide"):
        scale_from_baseline(left, left, 0.12)
    with pytest.raises(ScaleUnavailable, match="positive distance"):
        scale_from_baseline(left, right, 0.0)


def test_depth_topic_median_ratio_survives_outliers_and_holes():
    rng = np.random.default_rng(4)
    metric = rng.uniform(0.5, 6.0, (48, 64))
    predicted = metric / TRUE_SCALE
    noisy = metric * (1 + rng.normal(0, 0.01, metric.shape))
    noisy[rng.random(metric.shape) < 0.15] = rng.uniform(0.1, 15.0)  # 15 % wild readings (edges, glass)
    noisy[:5] = np.nan  # no return
    noisy[5:8] = 0.0  # invalid by REP 118 convention
    fit = scale_from_depth(noisy, predicted)
    assert fit.metres_per_unit == pytest.approx(TRUE_SCALE, rel=0.02) and fit.source == "depth_topic"
    assert fit.samples == 40 * 64 and fit.residual_m < 0.1
    with pytest.raises(ScaleUnavailable, match="only 0 pixels"):
        scale_from_depth(np.full((10, 10), np.nan), np.ones((10, 10)))
    with pytest.raises(ValueError, match="differ in shape"):
        scale_from_depth(np.ones((4, 4)), np.ones((4, 5)))
