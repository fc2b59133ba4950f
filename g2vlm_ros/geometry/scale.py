"""Metric scale for up-to-scale geometry (G2VLM predicts shape, not metres).

Each estimator returns a `ScaleFit`: metres per model unit, a residual in metres that says how
well the data agree with a single scale, and how many samples it used. None of them guesses:
with too little information (no motion, degenerate baselines, no valid depth) they raise
`ScaleUnavailable` saying what is missing.

- `scale_from_trajectories`: camera positions predicted by the model vs the same cameras'
  positions from TF (odometry), aligned by a least-squares similarity transform (Umeyama):
  needs motion.
- `scale_from_baseline`: the distance between two rigidly mounted cameras, known from the robot
  description (static TF), vs the predicted distance between their camera centres: works without
  motion.
- `scale_from_depth`: a metric depth image (e.g. an RGB-D camera) vs the predicted depth of the
  same pixels, as a robust median of per-pixel ratios.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class ScaleUnavailable(ValueError):
    """The data cannot determine a scale; the message says what is missing."""


@dataclass(frozen=True)
class ScaleFit:
    metres_per_unit: float
    residual_m: float  # RMS (trajectories), absolute error (baseline) or median absolute deviation (depth)
    samples: int
    source: str
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))  # model world -> measured frame
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))


def scale_from_trajectories(predicted: np.ndarray, measured: np.ndarray, min_extent_m: float = 0.05) -> ScaleFit:
    """Similarity fit measured ~ s * R @ predicted + t over K >= 2 camera positions [K,3].

    The measured positions must span at least `min_extent_m` (metres of motion); the residual is
    the RMS distance between measured and aligned predicted positions.
    """
    predicted, measured = np.asarray(predicted, np.float64), np.asarray(measured, np.float64)
    if predicted.shape != measured.shape or predicted.ndim != 2 or predicted.shape[1] != 3:
        raise ValueError(f"positions must both be [K,3], got {predicted.shape} and {measured.shape}")
    finite = np.isfinite(predicted).all(axis=1) & np.isfinite(measured).all(axis=1)
    predicted, measured = predicted[finite], measured[finite]
    if len(predicted) < 2:
        raise ScaleUnavailable("need at least two camera positions with both a prediction and a TF pose")
    centred_p, centred_m = predicted - predicted.mean(0), measured - measured.mean(0)
    extent = float(np.sqrt((centred_m ** 2).sum(1).max()))
    if extent < min_extent_m:
        raise ScaleUnavailable(f"the cameras moved {extent:.3f} m (< {min_extent_m} m): not enough motion for a scale")
    variance_p = float((centred_p ** 2).sum()) / len(predicted)
    if variance_p <= 1e-12:
        raise ScaleUnavailable("the predicted camera positions do not move")
    covariance = centred_m.T @ centred_p / len(predicted)
    u, singular, vt = np.linalg.svd(covariance)
    correction = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ correction @ vt
    scale = float(np.trace(np.diag(singular) @ correction) / variance_p)
    translation = measured.mean(0) - scale * rotation @ predicted.mean(0)
    aligned = scale * predicted @ rotation.T + translation
    residual = float(np.sqrt(((aligned - measured) ** 2).sum(1).mean()))
    return ScaleFit(scale, residual, len(predicted), "tf", rotation, translation)


def scale_from_baseline(predicted_a: np.ndarray, predicted_b: np.ndarray, known_distance_m: float,
                        min_predicted: float = 1e-6) -> ScaleFit:
    """Known metric distance between two camera centres / their predicted distance (one pair)."""
    return scale_from_baselines(predicted_a, predicted_b, known_distance_m, min_predicted)


def scale_from_depth(metric_depth_m: np.ndarray, predicted_depth: np.ndarray, min_pixels: int = 100,
                     max_range_m: float = 20.0) -> ScaleFit:
    """Median of metric/predicted depth ratios over pixels valid in both [H,W] maps.

    The median ignores the outliers depth cameras produce at edges and on dark or shiny surfaces;
    the residual is the median absolute deviation of the scaled prediction from the metric depth.
    """
    metric, predicted = np.asarray(metric_depth_m, np.float64), np.asarray(predicted_depth, np.float64)
    if metric.shape != predicted.shape:
        raise ValueError(f"depth maps differ in shape: {metric.shape} vs {predicted.shape}")
    valid = (np.isfinite(metric) & np.isfinite(predicted) & (metric > 0) & (metric < max_range_m)
             & (predicted > 0))
    count = int(valid.sum())
    if count < min_pixels:
        raise ScaleUnavailable(f"only {count} pixels have both a metric and a predicted depth (< {min_pixels})")
    ratios = metric[valid] / predicted[valid]
    scale = float(np.median(ratios))
    residual = float(np.median(np.abs(scale * predicted[valid] - metric[valid])))
    return ScaleFit(scale, residual, count, "depth_topic")


def scale_from_baselines(predicted_a: np.ndarray, predicted_b: np.ndarray, known_distance_m: float,
                         min_predicted: float = 1e-6) -> ScaleFit:
    """Known distance between two rigidly mounted cameras / their predicted distance, over K synchronized
    pairs of camera centres [K,3]: the median ratio, robust to a bad pair; residual = median |error| in metres.
    """
    if not np.isfinite(known_distance_m) or known_distance_m <= 0:
        raise ScaleUnavailable(f"the rig baseline must be a positive distance, got {known_distance_m}")
    predicted_a, predicted_b = np.atleast_2d(predicted_a), np.atleast_2d(predicted_b)
    distances = np.linalg.norm(np.asarray(predicted_a, np.float64) - np.asarray(predicted_b, np.float64), axis=1)
    distances = distances[np.isfinite(distances) & (distances >= min_predicted)]
    if len(distances) == 0:
        raise ScaleUnavailable("the predicted camera centres coincide: the rig baseline cannot be measured")
    scale = float(known_distance_m / np.median(distances))
    residual = float(np.median(np.abs(scale * distances - known_distance_m)))
    return ScaleFit(scale, residual, len(distances), "rig")
