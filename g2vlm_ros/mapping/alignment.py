"""Similarity transforms and their robust estimation from dense point correspondences.

A window from the model lives in its own frame and its own unit. Consecutive windows share keyframes, and the
model predicts a point for every pixel of every view, so the same pixel of a shared keyframe gives one point in
the new window and one in the map: thousands of correspondences per window. `align_points` fits the similarity
x_map = s * R @ x_window + t to them in closed form (Umeyama) inside an iteratively reweighted least-squares loop:
each pass re-weights every correspondence by its confidence times a Cauchy weight of its residual, so that wrong
pixels (reflections, sky, depth edges) lose their influence instead of dragging the fit. Cauchy rather than Huber
because Huber still lets every far outlier pull with a constant force: 20 % wrong pixels would bias the fit.
When the windows are metric the scale is fixed to 1 (a rigid fit); the free scale is still estimated and
reported, as the drift the rigid chain absorbs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

_MAD_TO_SIGMA = 1.4826  # the median absolute deviation of a normal distribution is 0.6745 sigma
_CAUCHY_C = 2.3849  # 95 % efficiency at the normal distribution


@dataclass(frozen=True)
class Sim3:
    """x_map = scale * rotation @ x_window + translation."""

    scale: float
    rotation: np.ndarray  # [3,3]
    translation: np.ndarray  # [3]

    def __post_init__(self):
        if not np.isfinite(self.scale) or self.scale <= 0:
            raise ValueError(f"a similarity needs a finite positive scale, got {self.scale}")
        object.__setattr__(self, "rotation", np.asarray(self.rotation, np.float64).reshape(3, 3))
        object.__setattr__(self, "translation", np.asarray(self.translation, np.float64).reshape(3))

    def matrix(self) -> np.ndarray:
        matrix = np.eye(4)
        matrix[:3, :3] = self.scale * self.rotation
        matrix[:3, 3] = self.translation
        return matrix

    def apply_points(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points)
        return (self.scale * points @ self.rotation.T + self.translation).astype(np.result_type(points, np.float32))

    def apply_pose(self, camera_to_window: np.ndarray) -> np.ndarray:
        """A camera pose in the window -> the same camera in the map (rotation R @ Rc, translation s R tc + t)."""
        pose = np.eye(4)
        pose[:3, :3] = self.rotation @ camera_to_window[:3, :3]
        pose[:3, 3] = self.scale * self.rotation @ camera_to_window[:3, 3] + self.translation
        return pose

    def inverse(self) -> Sim3:
        rotation = self.rotation.T
        return Sim3(1.0 / self.scale, rotation, -rotation @ self.translation / self.scale)

    def compose(self, other: Sim3) -> Sim3:
        """self ∘ other: apply `other` first."""
        return Sim3(self.scale * other.scale, self.rotation @ other.rotation,
                    self.scale * self.rotation @ other.translation + self.translation)

    @staticmethod
    def identity() -> Sim3:
        return Sim3(1.0, np.eye(3), np.zeros(3))


@dataclass(frozen=True)
class Alignment:
    """The fit and how well the correspondences agree with it."""

    transform: Sim3  # window -> map (scale 1 when the fit was rigid)
    free_scale: float  # the closed-form scale with the final weights, also when the fit was rigid
    residual: float  # robust RMS distance after alignment (map units), weighted by the final weights
    inlier_fraction: float  # correspondences within 3 robust sigmas
    points: int  # correspondences used
    iterations: int
    weights: np.ndarray = field(repr=False)  # final weight of each correspondence


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value at which the cumulative weight crosses half of the total (the lower one at a tie)."""
    values, weights = np.asarray(values, np.float64).ravel(), np.asarray(weights, np.float64).ravel()
    if values.size == 0 or not np.any(weights > 0):
        raise ValueError("a weighted median needs at least one value with a positive weight")
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def umeyama(source: np.ndarray, target: np.ndarray, weights: np.ndarray, fix_scale: bool = False) -> Sim3:
    """Weighted least-squares similarity target ~ s R source + t (Umeyama 1991; s = 1 when fix_scale)."""
    total = float(weights.sum())
    if total <= 0:
        raise ValueError("all correspondence weights are zero")
    mean_source = weights @ source / total
    mean_target = weights @ target / total
    centred_source, centred_target = source - mean_source, target - mean_target
    covariance = (centred_target * weights[:, None]).T @ centred_source / total
    u, singular, vt = np.linalg.svd(covariance)
    correction = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        correction[2] = -1.0  # a reflection would fit better: take the best proper rotation instead
    rotation = (u * correction) @ vt
    if fix_scale:
        scale = 1.0
    else:
        variance = float(weights @ (centred_source ** 2).sum(1)) / total
        if variance <= 1e-300:
            raise ValueError("the window's correspondences all coincide: no similarity can be fitted")
        scale = float(singular @ correction) / variance
        if not scale > 0:
            raise ValueError("the correspondences do not determine a positive scale")
    return Sim3(scale, rotation, mean_target - scale * rotation @ mean_source)


def align_points(source: np.ndarray, target: np.ndarray, confidence: Optional[np.ndarray] = None, *,
                 fix_scale: bool = False, initial: Optional[Sim3] = None, max_iterations: int = 8,
                 tolerance: float = 1e-7, sigma_floor: float = 1e-9) -> Alignment:
    """Robust, confidence-weighted similarity target ~ s R source + t over N correspondences [N,3].

    IRLS: weights = confidence * Cauchy(residual / (c * sigma)), sigma = 1.4826 * median residual (a
    robust scale, so most correspondences are inliers by construction); stops when the transform moves less than
    `tolerance` (relative to the target's spread). `initial` (e.g. from the shared cameras' poses and depth
    ratios) starts the first weighting; without it the first pass is the plain weighted fit. `sigma_floor`
    (relative to the spread) keeps perfect data from dividing by zero.
    """
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 3:
        raise ValueError(f"correspondences must both be [N,3], got {source.shape} and {target.shape}")
    if len(source) < 3:
        raise ValueError(f"a similarity needs at least 3 correspondences, got {len(source)}")
    confidence = np.ones(len(source)) if confidence is None else np.asarray(confidence, np.float64).ravel()
    if confidence.shape != (len(source),) or not np.all(np.isfinite(confidence)) or np.any(confidence < 0):
        raise ValueError("confidence must be one finite non-negative weight per correspondence")
    spread = float(np.sqrt(((target - target.mean(0)) ** 2).sum(1).mean())) or 1.0
    transform = initial if initial is not None else umeyama(source, target, confidence, fix_scale)
    weights, iterations = confidence, 0
    for iterations in range(1, max_iterations + 1):  # noqa: B007 (the count is reported)
        residuals = _residuals(transform, source, target)
        weights = confidence * _cauchy_weights(residuals, confidence, sigma_floor * spread)
        updated = umeyama(source, target, weights, fix_scale)
        change = (abs(np.log(updated.scale / transform.scale)) + np.abs(updated.rotation - transform.rotation).max()
                  + np.abs(updated.translation - transform.translation).max() / spread)
        transform = updated
        if change < tolerance:
            break
    residuals = _residuals(transform, source, target)
    weights = confidence * _cauchy_weights(residuals, confidence, sigma_floor * spread)
    sigma = _robust_sigma(residuals, confidence, sigma_floor * spread)
    residual = float(np.sqrt(weights @ residuals ** 2 / weights.sum()))
    return Alignment(transform, _free_scale(transform, source, target, weights), residual,
                     float(np.mean(residuals <= 3.0 * sigma)), len(source), iterations, weights)


def _residuals(transform: Sim3, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    predicted = transform.scale * source @ transform.rotation.T + transform.translation
    return np.sqrt(((predicted - target) ** 2).sum(1))


def _robust_sigma(residuals: np.ndarray, confidence: np.ndarray, floor: float) -> float:
    # the plain median over the correspondences that count (a partition, not a sort: this runs every pass)
    return max(_MAD_TO_SIGMA * float(np.median(residuals[confidence > 0])), floor)


def _cauchy_weights(residuals: np.ndarray, confidence: np.ndarray, floor: float) -> np.ndarray:
    scaled = residuals / (_CAUCHY_C * _robust_sigma(residuals, confidence, floor))
    return 1.0 / (1.0 + scaled ** 2)


def _free_scale(transform: Sim3, source: np.ndarray, target: np.ndarray, weights: np.ndarray) -> float:
    """The least-squares scale with the fitted rotation and the weights held: the drift a rigid fit ignores."""
    total = weights.sum()
    centred_source = source - weights @ source / total
    centred_target = target - weights @ target / total
    rotated = centred_source @ transform.rotation.T
    denominator = float(weights @ (rotated ** 2).sum(1))
    return float(weights @ (rotated * centred_target).sum(1)) / denominator if denominator > 0 else 1.0


def rotation_mean(rotations: np.ndarray, weights: Optional[np.ndarray] = None) -> np.ndarray:
    """Chordal L2 mean of rotations [K,3,3]: the rotation nearest to their (weighted) sum."""
    weights = np.ones(len(rotations)) if weights is None else np.asarray(weights, np.float64)
    u, _, vt = np.linalg.svd(np.einsum("k,kij->ij", weights, rotations))
    correction = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        correction[2] = -1.0
    return (u * correction) @ vt


@dataclass(frozen=True)
class ScaleEvidence:
    """Per-keyframe scale estimates (map units per window unit) and how well they agree."""

    per_keyframe: tuple[float, ...]  # weighted median depth ratio of each shared keyframe
    scale: float  # weighted median over all shared pixels
    spread: float  # relative: mean |log(estimate / scale)| over keyframes (0 with one keyframe)


def depth_ratio_scale(map_depths: list[np.ndarray], window_depths: list[np.ndarray],
                      weights: list[np.ndarray]) -> ScaleEvidence:
    """Scale from the depths of the same pixels in the map (map units) and in the window (window units).

    Depth ratios need no pose at all, so they say on their own whether the shared keyframes agree on the
    window's unit; a large spread means the model's unit changed within the window (or a keyframe is wrong).
    """
    estimates, all_ratios, all_weights = [], [], []
    for map_depth, window_depth, weight in zip(map_depths, window_depths, weights, strict=True):
        ratios = map_depth / window_depth
        estimates.append(weighted_median(ratios, weight))
        all_ratios.append(ratios)
        all_weights.append(weight)
    scale = weighted_median(np.concatenate(all_ratios), np.concatenate(all_weights))
    # an L1 spread around the median: a median of deviations would read 0 whenever most of a handful of
    # keyframes agree, hiding the one that does not; a mean of absolute logs shows it, by its share only
    spread = float(np.mean(np.abs(np.log(np.asarray(estimates) / scale))))
    return ScaleEvidence(tuple(estimates), scale, spread)
