"""The demo's map report: the node's accumulated map (`~/map`) and keyframe trajectory (`~/path`) from above and,
on the synthetic walk, the true path beside them with the trajectory error measured against it (evo).

The node never sees the truth. The demo identifies which rendered view each keyframe was by its camera image (a
small thumbnail of every input frame is kept by stamp), looks up that view's true pose, aligns the keyframe
trajectory to the truth by the best similarity (the map is up to scale without a scale source) and reports the
ATE, next to the ATE of a camera that never moved (the baseline a map must beat).
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Optional

import numpy as np

THUMBNAIL = 16  # pixels a side: enough to tell the walk's views apart
SAME_VIEW = 0.02  # mean grey difference (0..1) below which a thumbnail is taken as that rendered view


class InputLog:
    """Thumbnails of the camera frames the demo received, by stamp (bounded: the oldest go first)."""

    def __init__(self, limit: int = 20_000):
        self._thumbnails: OrderedDict[int, np.ndarray] = OrderedDict()
        self._limit = limit

    def record(self, stamp_ns: int, rgb: Optional[np.ndarray]) -> None:
        from g2vlm_ros.pipeline.windowing import thumbnail

        if rgb is None:
            return
        self._thumbnails[stamp_ns] = thumbnail(rgb, THUMBNAIL)
        while len(self._thumbnails) > self._limit:
            self._thumbnails.popitem(last=False)

    def get(self, stamp_ns: int) -> Optional[np.ndarray]:
        return self._thumbnails.get(stamp_ns)


class SyntheticTruth:
    """The true pose of each view of the synthetic walk that `play synthetic` publishes, found by its image."""

    def __init__(self, seed: int):
        from g2vlm_ros.pipeline.windowing import thumbnail
        from g2vlm_ros.playback.frames import SyntheticSequence

        sequence = SyntheticSequence(seed=seed)
        self.thumbnails = np.stack([thumbnail(frame.rgb, THUMBNAIL) for frame in sequence.frames])
        self.camera_to_world = np.stack(sequence.camera_to_world)

    def pose_of(self, image_thumbnail: np.ndarray) -> Optional[np.ndarray]:
        differences = np.abs(self.thumbnails - image_thumbnail).mean(axis=(1, 2))
        best = int(np.argmin(differences))
        return self.camera_to_world[best] if differences[best] < SAME_VIEW else None


def write_map_report(path_msg, map_msg, inputs: InputLog, truth: Optional[SyntheticTruth], unit: str,
                     output: Path) -> list[str]:
    """Prints nothing; returns the report's lines and writes output/map.png when there is a path to draw."""
    from g2vlm_ros.cli.previews import save_png
    from g2vlm_ros.cli.topdown import render_topdown
    from g2vlm_ros.ros.conversions import unpack_point_cloud, unpack_rgb_float

    if path_msg is None or len(path_msg.poses) < 2:
        return ["  map: fewer than two keyframes on /g2vlm/path: no trajectory to draw"]
    stamps = np.array([pose.header.stamp.sec * 1_000_000_000 + pose.header.stamp.nanosec for pose in path_msg.poses])
    estimated = np.stack([pose_matrix(pose.pose) for pose in path_msg.poses])
    points, colors = np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
    if map_msg is not None and map_msg.width * map_msg.height:
        cloud = unpack_point_cloud(map_msg)
        points = np.stack([cloud["x"], cloud["y"], cloud["z"]], axis=-1).astype(np.float64)
        colors = unpack_rgb_float(cloud["rgb"])
    lines = [f"  map: {len(points)} points, {len(estimated)} keyframes on /g2vlm/path ({unit} units)"]
    true_poses, caption_truth = None, ""
    if truth is not None:
        scored = _score(estimated, stamps, inputs, truth)
        if isinstance(scored, str):
            lines.append(f"  trajectory: {scored}")
        else:
            scores, still, true_poses, alignment = scored
            lines.append(f"  trajectory vs the synthetic walk's truth ({scores.poses} keyframes, similarity-aligned):"
                         f" ATE {scores.ate_rmse:.3f} m; a camera that never moved: {still.ate_rmse:.3f} m "
                         f"({still.ate_rmse / max(scores.ate_rmse, 1e-9):.1f}x worse)")
            # draw everything in the truth's frame: the map and the keyframes moved by the same similarity
            scale = np.cbrt(np.linalg.det(alignment[:3, :3]))
            points = points @ alignment[:3, :3].T + alignment[:3, 3]
            estimated = estimated.copy()
            estimated[:, :3, :3] = alignment[:3, :3] @ estimated[:, :3, :3] / scale
            estimated[:, :3, 3] = estimated[:, :3, 3] @ alignment[:3, :3].T + alignment[:3, 3]
            unit, caption_truth = "m", f";\ngreen: the true path (ATE {scores.ate_rmse:.3f} m, aligned by a similarity)"
    caption = (f"the accumulated map from above ({len(points)} points) and the keyframe path (red, newest filled)"
               f"{caption_truth}")
    image = render_topdown(points, colors, estimated, unit, caption, true_camera_to_world=true_poses)
    lines.append(f"  map picture: {save_png(image, output / 'map.png')}")
    return lines


def _score(estimated: np.ndarray, stamps: np.ndarray, inputs: InputLog, truth: SyntheticTruth):
    from g2vlm_ros.mapping.trajectory_scores import score_trajectory, standing_still

    found = [(index, truth.pose_of(thumb)) for index, stamp in enumerate(stamps)
             if (thumb := inputs.get(int(stamp))) is not None]
    found = [(index, pose) for index, pose in found if pose is not None]
    if len(found) < 3:
        return f"only {len(found)} keyframes matched a view of the walk: too few to score"
    indices = [index for index, _ in found]
    true_poses = np.stack([pose for _, pose in found])
    walked = float(np.linalg.norm(np.diff(true_poses[:, :3, 3], axis=0), axis=1).sum())
    scores = score_trajectory(true_poses, estimated[indices], stamps[indices], walked)
    still = score_trajectory(true_poses, standing_still(len(indices)), stamps[indices], walked)
    return scores, still, true_poses, scores.alignment


def pose_matrix(pose) -> np.ndarray:
    from g2vlm_ros.geometry.rotations import matrix_from_translation_quaternion

    q, p = pose.orientation, pose.position
    return matrix_from_translation_quaternion((p.x, p.y, p.z), (q.x, q.y, q.z, q.w))
