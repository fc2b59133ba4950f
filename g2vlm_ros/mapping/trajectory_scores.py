"""Scores an estimated camera trajectory against the truth with evo: ATE, RPE, scale drift and direction of motion.

The estimate is up to a similarity (its own frame and unit), so ATE is the RMSE of the positions after the best
Sim3 (Umeyama, evo's align with correct_scale); RPE is evo's per-step error after that same alignment. Umeyama
cannot align a standing-still trajectory (one point; evo refuses): its best similarity puts it at the truth's
centroid. Scale drift is the Sim3-aligned length over the true length of stretches of about `segment_m` walked
(1.0 everywhere = no drift). Direction of motion is gauge-free: the displacement to the next pose in the camera's
own frame must point the way the true one does (positive dot product).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
from evo import main_ape, main_rpe
from evo.core import metrics, sync
from evo.core.trajectory import PoseTrajectory3D


@dataclass(frozen=True)
class TrajectoryScores:
    poses: int
    ate_rmse: float  # true units (m) after the Sim3 alignment
    ate_percent: float  # of the distance walked
    rpe_translation: float  # RMSE per step between consecutive poses (m), after the alignment
    rpe_rotation_deg: float  # RMSE of the rotation error per step
    scale_min: float  # aligned / true length per stretch of about segment_m walked
    scale_max: float
    direction_correct: Optional[float]  # fraction of steps on the selected (backward) segments moving the right way
    direction_steps: int
    alignment: np.ndarray  # [4,4] the similarity applied to the estimate (s*R | t)
    aligned_positions: np.ndarray  # [N,3] the estimate after the alignment
    true_positions: np.ndarray  # [N,3]


def _trajectory(poses: np.ndarray, stamps_ns: np.ndarray) -> PoseTrajectory3D:
    return PoseTrajectory3D(poses_se3=[np.asarray(pose, dtype=np.float64) for pose in poses],
                            timestamps=np.asarray(stamps_ns, dtype=np.float64) * 1e-9)


def _rigid_rows(poses: np.ndarray) -> np.ndarray:
    """evo wants SE(3): orthonormalize each rotation (an estimate may carry float drift)."""
    rigid = np.array(poses, dtype=np.float64, copy=True)
    u, _, vt = np.linalg.svd(rigid[:, :3, :3])
    rigid[:, :3, :3] = u @ vt
    return rigid


def direction_agreement(true_poses: np.ndarray, estimated_poses: np.ndarray, selected: np.ndarray,
                        min_step: float = 0.05) -> tuple[Optional[float], int]:
    """Fraction of steps i -> i+1 with selected[i+1] whose estimated displacement, in camera i's frame, points the
    way the true one does. Steps shorter than min_step (true, m) are skipped: turning on the spot has no direction."""
    correct = total = 0
    for i in range(len(true_poses) - 1):
        if not selected[i + 1]:
            continue
        true_step = true_poses[i, :3, :3].T @ (true_poses[i + 1, :3, 3] - true_poses[i, :3, 3])
        if np.linalg.norm(true_step) < min_step:
            continue
        estimated_step = estimated_poses[i, :3, :3].T @ (estimated_poses[i + 1, :3, 3] - estimated_poses[i, :3, 3])
        total += 1
        correct += float(np.dot(true_step, estimated_step)) > 0.0
    return (correct / total if total else None), total


def scale_per_segment(true_positions: np.ndarray, aligned_positions: np.ndarray,
                      segment_m: float) -> np.ndarray:
    """Aligned / true chord length of consecutive stretches of about segment_m walked (chords of at least a third
    of that; a stretch that walks back to where it started has no length to compare)."""
    walked = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(true_positions, axis=0), axis=1))]
    bounds = np.searchsorted(walked, np.arange(0.0, walked[-1] + 1e-9, segment_m))
    ratios = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        true_chord = np.linalg.norm(true_positions[end] - true_positions[start])
        if true_chord >= segment_m / 3.0:
            ratios.append(np.linalg.norm(aligned_positions[end] - aligned_positions[start]) / true_chord)
    return np.array(ratios)


def score_trajectory(true_poses: np.ndarray, estimated_poses: np.ndarray, stamps_ns: np.ndarray,
                     distance_walked: float, direction_selected: Optional[Sequence[bool]] = None,
                     segment_m: float = 10.0) -> TrajectoryScores:
    """true_poses and estimated_poses [N,4,4] camera-to-frame at the same stamps_ns [N]."""
    if len(true_poses) != len(estimated_poses) or len(true_poses) != len(stamps_ns):
        raise ValueError(f"{len(true_poses)} true poses, {len(estimated_poses)} estimated, {len(stamps_ns)} stamps")
    if len(true_poses) < 3:
        raise ValueError("at least 3 poses are needed to score a trajectory")
    estimated_poses = _rigid_rows(estimated_poses)
    still = float(np.ptp(estimated_poses[:, :3, 3], axis=0).max()) < 1e-9
    if still:
        # Umeyama is degenerate for a single point (evo refuses); its best similarity puts it at the truth's centroid.
        estimated_poses[:, :3, 3] = np.mean(true_poses[:, :3, 3], axis=0)
    reference = _trajectory(_rigid_rows(true_poses), stamps_ns)
    estimate = _trajectory(estimated_poses, stamps_ns)
    reference, estimate = sync.associate_trajectories(reference, estimate, max_diff=1e-4)
    ape_estimate = copy.deepcopy(estimate)
    ape = main_ape.ape(copy.deepcopy(reference), ape_estimate, metrics.PoseRelation.translation_part,
                       align=not still, correct_scale=not still)
    rpe_translation = main_rpe.rpe(copy.deepcopy(reference), copy.deepcopy(estimate),
                                   metrics.PoseRelation.translation_part, delta=1, delta_unit=metrics.Unit.frames,
                                   align=not still, correct_scale=not still)
    rpe_rotation = main_rpe.rpe(copy.deepcopy(reference), copy.deepcopy(estimate),
                                metrics.PoseRelation.rotation_angle_deg, delta=1, delta_unit=metrics.Unit.frames,
                                align=not still, correct_scale=not still)
    aligned = ape_estimate.positions_xyz
    truth = reference.positions_xyz
    ratios = scale_per_segment(truth, aligned, segment_m)
    selected = np.ones(len(true_poses), bool) if direction_selected is None else np.asarray(direction_selected)
    direction, steps = direction_agreement(true_poses, estimated_poses, selected)
    ate = float(ape.stats["rmse"])
    alignment = np.eye(4)
    if still:
        alignment[:3, 3] = estimated_poses[0, :3, 3]
    else:
        alignment = np.asarray(ape.np_arrays["alignment_transformation_sim3"], dtype=np.float64)
    return TrajectoryScores(
        poses=len(truth), ate_rmse=ate, ate_percent=100.0 * ate / max(distance_walked, 1e-9),
        rpe_translation=float(rpe_translation.stats["rmse"]), rpe_rotation_deg=float(rpe_rotation.stats["rmse"]),
        scale_min=float(ratios.min()) if len(ratios) else float("nan"),
        scale_max=float(ratios.max()) if len(ratios) else float("nan"),
        direction_correct=direction, direction_steps=steps, alignment=alignment, aligned_positions=aligned,
        true_positions=truth)


def standing_still(count: int) -> np.ndarray:
    """The baseline that never moves: [count,4,4] identities."""
    return np.tile(np.eye(4), (count, 1, 1))
