"""The training losses are zero for a perfect prediction at any scale and grow with each kind of error."""
from __future__ import annotations

import math

import pytest
import torch

from g2vlm_ros.training.evaluate import scene_metrics
from g2vlm_ros.training.losses import LossWeights, local_points_from_depth, scene_losses


def rotation_y(degrees: float) -> torch.Tensor:
    angle = math.radians(degrees)
    return torch.tensor([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]])


def rotation_x(degrees: float) -> torch.Tensor:
    angle = math.radians(degrees)
    return torch.tensor([[1, 0, 0], [0, math.cos(angle), -math.sin(angle)], [0, math.sin(angle), math.cos(angle)]])


def scene(views: int = 3):
    generator = torch.Generator().manual_seed(0)
    height, width = 14, 28
    depth = 2.0 + torch.rand(views, height, width, generator=generator)
    intrinsics = torch.tensor([[20.0, 0, (width - 1) / 2], [0, 20.0, (height - 1) / 2], [0, 0, 1]]).repeat(views, 1, 1)
    poses = torch.eye(4).repeat(views, 1, 1)
    for view in range(views):
        poses[view, :3, :3] = rotation_y(5.0 * view)
        poses[view, :3, 3] = torch.tensor([0.3 * view, 0.05 * view, 0.1])
    return depth, intrinsics, poses


def perfect_raw(depth, intrinsics, poses, scale: float) -> dict[str, torch.Tensor]:
    """What a perfect up-to-scale model outputs: everything in the first camera's frame, times 1/scale."""
    local = local_points_from_depth(depth, intrinsics)
    relative = torch.linalg.inv(poses[0]) @ poses
    world = torch.einsum("vij,vhwj->vhwi", relative[:, :3, :3], local) + relative[:, None, None, :3, 3]
    return {"local_points": local / scale, "global_points": world / scale,
            "rotation_raw": relative[:, :3, :3].clone(), "translation": relative[:, :3, 3] / scale}


@pytest.mark.parametrize("scale", [0.1, 1.0, 7.0])
def test_a_perfect_prediction_at_any_scale_costs_nothing(scale):
    depth, intrinsics, poses = scene()
    parts = scene_losses(perfect_raw(depth, intrinsics, poses, scale), poses, depth, intrinsics, LossWeights())
    for key in ("local", "global", "camera", "normal", "direction", "total"):
        assert float(parts[key]) < 1e-3, (key, float(parts[key]))  # camera: sqrt(eps) = 1e-4 floor


def test_the_direction_term_sees_a_short_step_read_the_wrong_way():
    """A short step read backwards barely moves the camera term (an error in units of the scene's size) but
    costs the direction term its maximum, 2; the term counts only with a weight."""
    depth, intrinsics, poses = scene(2)
    poses[1, :3, 3] = poses[0, :3, 3] + torch.tensor([0.0, 0.0, 0.05])  # 5 cm forward at 2-3 m depth
    base = perfect_raw(depth, intrinsics, poses, 1.0)
    backwards = dict(base, translation=-base["translation"])
    plain = scene_losses(backwards, poses, depth, intrinsics, LossWeights())
    weighted = scene_losses(backwards, poses, depth, intrinsics, LossWeights(direction=0.1))
    assert float(plain["camera"]) < 0.01
    assert float(plain["direction"]) == pytest.approx(2.0, abs=1e-4)
    assert float(weighted["total"] - plain["total"]) == pytest.approx(0.2, abs=1e-4)


def test_each_kind_of_error_raises_its_loss():
    depth, intrinsics, poses = scene()
    base = perfect_raw(depth, intrinsics, poses, 2.0)
    wrong_depth = dict(base, local_points=base["local_points"] * torch.linspace(0.7, 1.3, 28)[:, None])
    turned = base["rotation_raw"].clone()
    turned[1:] = turned[1:] @ rotation_x(20.0)  # relative rotations change (a turn about y alone would commute)
    wrong_rotation = dict(base, rotation_raw=turned)
    wrong_global = dict(base, global_points=base["global_points"] + 0.3)
    weights = LossWeights()
    losses = {name: scene_losses(raw, poses, depth, intrinsics, weights)
              for name, raw in {"depth": wrong_depth, "rotation": wrong_rotation, "global": wrong_global}.items()}
    assert float(losses["depth"]["local"]) > 0.01 and float(losses["depth"]["normal"]) > 1e-3
    assert float(losses["rotation"]["camera"]) > 0.1 and float(losses["rotation"]["local"]) < 1e-4
    assert float(losses["global"]["global"]) > 0.05 and float(losses["global"]["camera"]) < 1e-3


def test_evaluation_metrics_are_scale_free_and_detect_errors():
    depth, _, poses = scene(4)
    scaled_poses = poses.clone()
    scaled_poses[:, :3, 3] *= 0.2  # the same trajectory in other units
    perfect = scene_metrics(depth * 0.2, scaled_poses, depth, poses)
    assert perfect["depth_abs_rel"] < 1e-6 and perfect["depth_delta_1_25"] == 1.0
    assert perfect["rotation_deg"] < 0.05 and perfect["translation_deg"] < 0.05  # float32 poses: arccos near 1
    turned = scaled_poses.clone()
    turned[1:, :3, :3] = turned[1:, :3, :3] @ rotation_y(10.0)
    noisy_depth = depth * 0.2 * torch.where(torch.arange(28) % 2 == 0, 1.5, 1.0)
    worse = scene_metrics(noisy_depth, turned, depth, poses)
    assert worse["depth_abs_rel"] > 0.1 and worse["depth_delta_1_25"] < 0.9
    assert worse["rotation_deg"] > 5.0


def test_a_batch_of_scenes_costs_the_mean_of_its_scenes():
    """batch_losses aligns every scene on its own: the batch equals the mean of single-scene losses."""
    from g2vlm_ros.training.losses import batch_losses

    depth, intrinsics, poses = scene()
    first = perfect_raw(depth, intrinsics, poses, 2.0)
    first["local_points"] = first["local_points"] * torch.linspace(0.8, 1.2, 28)[:, None]
    second_poses = poses.clone()
    second_poses[:, :3, 3] *= 3.0
    second = perfect_raw(depth * 3.0, intrinsics, second_poses, 0.5)
    second["rotation_raw"] = second["rotation_raw"] @ rotation_x(7.0)
    raws, truths = (first, second), ((poses, depth, intrinsics), (second_poses, depth * 3.0, intrinsics))
    singles = [scene_losses(raw, *truth, LossWeights()) for raw, truth in zip(raws, truths, strict=True)]
    batch = batch_losses({key: torch.stack((first[key], second[key])) for key in first},
                         torch.stack((poses, second_poses)), torch.stack((depth, depth * 3.0)),
                         torch.stack((intrinsics, intrinsics)), LossWeights())
    for key in ("local", "global", "camera", "normal", "total"):
        expected = (float(singles[0][key]) + float(singles[1][key])) / 2
        assert float(batch[key]) == pytest.approx(expected, rel=1e-5, abs=1e-7), key


def test_relative_poses_keep_short_steps_of_cameras_far_from_the_origin():
    """A model places its cameras 15-24 units from its origin and steps 0.06-0.4 units apart. The relative
    poses the losses compare must keep such a step whatever float32 products round to (TF32 on a GPU)."""
    from g2vlm_ros.training.losses import relative_to_first

    poses = torch.eye(4).repeat(1, 3, 1, 1)
    for view in range(3):
        poses[0, view, :3, :3] = rotation_y(30.0 + 2.0 * view) @ rotation_x(10.0)
        poses[0, view, :3, 3] = torch.tensor([21.3, -17.9, 15.2]) + 0.06 * view * torch.tensor([0.6, 0.0, 0.8])
    relative = relative_to_first(poses)
    exact = poses.double()
    first_rotation, first_position = exact[0, 0, :3, :3], exact[0, 0, :3, 3]
    for view in (1, 2):
        step = torch.linalg.solve(first_rotation, exact[0, view, :3, 3] - first_position)  # no cancellation
        error = (relative[0, view, :3, 3] - step).norm() / step.norm()
        assert error < 1e-9, (view, float(error))  # float32 products: 3e-5 here, TF32: percents
