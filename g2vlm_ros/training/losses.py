"""π³-style training losses for G2VLM's geometry path, invariant to the scene's unknown scale.

The model predicts shape up to scale, so every loss first aligns the prediction's scale to the
ground truth: the ground truth of each scene is normalised by its mean point distance, and one
least-squares factor s* per scene maps the predicted local points onto it. With that factor:
  local   depth-weighted L1 between s* x predicted and true local points (camera frames)
  global  L1 between s* x predicted global points and true points in the first camera's frame
  camera  pairwise relative poses: rotation (Frobenius distance) and Huber on s* x translation
  normal  1 - cosine between normals of the predicted and true local point maps
  direction  1 - cosine between predicted and true translations of every pair of views (off by default)

Why `direction`: the camera term's translation part is a Huber error in units of the scene's size, so a short step
(0.17 m in a room seen at 2 m is 0.085 units) read the wrong way costs it little (a 5 cm step read backwards: under
0.01, test_training_losses), and the direction of motion, which a robot's odometry lives on, gets little gradient
(docs/demo_model.md, runs 7 and 8). The cosine does not shrink with the step. Its gradient does grow as the step
shrinks: weigh it accordingly (0.01-0.02 puts it on a par with the other terms).

The pose algebra (each scene's poses in its first camera's frame, the pairs' rotations and steps) runs in
float64: a model places its cameras 15-24 units from its origin while the steps between views are 0.02-0.8
units, and a float32 product that a GPU runs in TF32 (10-bit mantissa) misplaces such a step by up to 8 %.
float64 products never use TF32, and a few 4x4 matrices per scene cost nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossWeights:
    local: float = 1.0
    global_points: float = 1.0
    camera: float = 1.0
    normal: float = 0.5
    direction: float = 0.0


def local_points_from_depth(depth: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """depth [V,H,W], K [V,3,3] -> camera-frame points [V,H,W,3] (pixel centres at integer coordinates)."""
    views, height, width = depth.shape
    rows = torch.arange(height, device=depth.device, dtype=depth.dtype)
    columns = torch.arange(width, device=depth.device, dtype=depth.dtype)
    v, u = torch.meshgrid(rows, columns, indexing="ij")
    fx, fy = intrinsics[:, 0, 0, None, None], intrinsics[:, 1, 1, None, None]
    cx, cy = intrinsics[:, 0, 2, None, None], intrinsics[:, 1, 2, None, None]
    return torch.stack(((u - cx) / fx * depth, (v - cy) / fy * depth, depth), dim=-1)


def point_normals(points: torch.Tensor) -> torch.Tensor:
    """Unit normals [..., H-1, W-1, 3] of point maps [..., H, W, 3] from their right and down neighbours."""
    right = points[..., :-1, 1:, :] - points[..., :-1, :-1, :]
    down = points[..., 1:, :-1, :] - points[..., :-1, :-1, :]
    return F.normalize(torch.cross(right, down, dim=-1), dim=-1, eps=1e-8)


def relative_to_first(poses: torch.Tensor) -> torch.Tensor:
    """camera_to_world [B,V,4,4] -> the same cameras in each scene's first camera frame, in float64."""
    poses = poses.double()
    return torch.linalg.inv(poses[:, :1]) @ poses


def scene_losses(raw: dict[str, torch.Tensor], poses: torch.Tensor, depth: torch.Tensor, intrinsics: torch.Tensor,
                 weights: LossWeights) -> dict[str, torch.Tensor]:
    """Losses of one scene: raw = G2VLM.decode_geometry_raw output for its V views; ground truth
    camera_to_world [V,4,4], depth [V,H,W], intrinsics [V,3,3]. Returns named scalar losses and 'total'."""
    batched = {key: value[None] for key, value in raw.items()}
    return batch_losses(batched, poses[None], depth[None], intrinsics[None], weights)


def batch_losses(raw: dict[str, torch.Tensor], poses: torch.Tensor, depth: torch.Tensor, intrinsics: torch.Tensor,
                 weights: LossWeights) -> dict[str, torch.Tensor]:
    """Mean losses over B scenes of V views each, every scene aligned on its own: raw =
    G2VLM.decode_geometry_raw output for tokens [B,V,P,C]; camera_to_world [B,V,4,4], depth
    [B,V,H,W], intrinsics [B,V,3,3]. Returns named scalar losses and 'total'."""
    from g2vlm_ros.model.heads import pose_matrix

    scenes, views = depth.shape[:2]
    per_scene = (1, 2, 3, 4)  # reduce over views, rows, columns, xyz
    true_local = local_points_from_depth(depth.flatten(0, 1), intrinsics.flatten(0, 1)).unflatten(0, (scenes, views))
    relative = relative_to_first(poses)  # cameras in their scene's first camera frame (model world)
    points_relative = relative.to(true_local.dtype)
    true_global = (torch.einsum("bvij,bvhwj->bvhwi", points_relative[..., :3, :3], true_local)
                   + points_relative[:, :, None, None, :3, 3])
    # scene scale: mean distance camera -> surface
    norm = true_local.norm(dim=-1).mean((1, 2, 3)).clamp_min(1e-6)[:, None, None, None, None]
    true_local, true_global = true_local / norm, true_global / norm
    true_translation = relative[..., :3, 3] / norm[..., 0, 0]

    predicted_local = raw["local_points"].float()
    # least-squares scale per scene aligning the prediction to the normalised truth (kept in the graph, as in π³)
    scale = ((predicted_local * true_local).sum(per_scene)
             / (predicted_local * predicted_local).sum(per_scene).clamp_min(1e-8))[:, None, None, None, None]
    aligned_local = scale * predicted_local
    inverse_depth = 1.0 / true_local[..., 2:].clamp_min(1e-3)
    local = ((aligned_local - true_local).abs() * inverse_depth).mean(per_scene)
    global_points = (scale * raw["global_points"].float() - true_global).abs().mean(per_scene)

    predicted_poses = pose_matrix(raw["rotation_raw"].flatten(0, 1), raw["translation"].flatten(0, 1))
    predicted_poses = predicted_poses.unflatten(0, (scenes, views))
    predicted_poses = relative_to_first(predicted_poses)  # same frame as the truth
    rotation_error = (predicted_poses[:, :, None, :3, :3].transpose(-1, -2) @ predicted_poses[:, None, :, :3, :3]
                      - relative[:, :, None, :3, :3].transpose(-1, -2) @ relative[:, None, :, :3, :3])
    predicted_pairs = predicted_poses[:, None, :, :3, 3] - predicted_poses[:, :, None, :3, 3]
    true_pairs = true_translation[:, None, :, :] - true_translation[:, :, None, :]
    camera = (rotation_error.pow(2).sum((-1, -2)).add(1e-8).sqrt().mean((1, 2))
              + F.huber_loss(scale[..., 0] * predicted_pairs, true_pairs, delta=0.1, reduction="none").mean((1, 2, 3)))
    normal = (1 - (point_normals(aligned_local) * point_normals(true_local)).sum(-1)).mean((1, 2, 3))
    off_diagonal = ~torch.eye(views, dtype=torch.bool, device=depth.device)
    cosine = F.cosine_similarity(predicted_pairs[:, off_diagonal], true_pairs[:, off_diagonal], dim=-1, eps=1e-6)
    direction = (1 - cosine).mean(1)
    parts = {"local": local.mean(), "global": global_points.mean(), "camera": camera.mean().float(),
             "normal": normal.mean(), "direction": direction.mean().float()}
    parts["total"] = (weights.local * parts["local"] + weights.global_points * parts["global"]
                      + weights.camera * parts["camera"] + weights.normal * parts["normal"]
                      + weights.direction * parts["direction"])
    parts["scale"] = scale.detach().mean()
    return parts
