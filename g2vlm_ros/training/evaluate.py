"""Accuracy of a G2VLM checkpoint on held-out procedural scenes (seeds never used in training).

  python -m g2vlm_ros.training.evaluate CHECKPOINT [--scenes 16] [--views 2 4] [--device cpu] [--motion mixed]

Metrics, per number of views, averaged over scenes (all scale-free, as the model is up to scale):
  depth_abs_rel     mean |s d_pred - d| / d, s = median(d / d_pred) over the scene's pixels
  depth_delta_1_25  fraction of pixels with max(s d_pred / d, d / (s d_pred)) < 1.25
  rotation_deg      mean angle of R_pred_ij^T R_ij over view pairs i < j (relative rotations)
  translation_deg   mean angle between predicted and true relative camera translations
  wrong_way         fraction of consecutive view pairs whose predicted step points against the true one
                    (negative dot product): a model that always predicts "forward" gets the backward walks wrong

--motion mixed scores the walks of training (backwards, sideways, reversed, turning back: scenes.WALKS) on the same
held-out seeds; the default, forward, is the held-out table of docs/demo_model.md and the CI test.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import torch

from g2vlm_ros.geometry.rotations import rotation_angle_deg
from g2vlm_ros.training.scenes import MOTIONS, render_scenes

HELD_OUT_SEED = 9_000_001  # training seeds are seed * 1_000_003 + step with step < total steps: disjoint


def _angle_deg(cosine: torch.Tensor) -> torch.Tensor:
    return torch.rad2deg(torch.arccos(cosine.clamp(-1.0, 1.0)))


def scene_metrics(pred_depth: torch.Tensor, pred_poses: torch.Tensor, depth: torch.Tensor,
                  poses: torch.Tensor) -> dict[str, float]:
    """One scene: predicted depth [V,H,W] and camera_to_world [V,4,4] against the truth."""
    pred_depth, depth = pred_depth.double(), depth.double()
    valid = torch.isfinite(pred_depth) & (pred_depth > 0) & (depth > 0)
    scale = torch.median(depth[valid] / pred_depth[valid])
    aligned = scale * pred_depth[valid]
    truth = depth[valid]
    ratio = torch.maximum(aligned / truth, truth / aligned)
    metrics = {"depth_abs_rel": float(((aligned - truth).abs() / truth).mean()),
               "depth_delta_1_25": float((ratio < 1.25).double().mean())}
    rotations, translations, wrong_way = [], [], []
    views = poses.shape[0]
    pred_poses, poses = pred_poses.double(), poses.double()
    for i in range(views):
        for j in range(i + 1, views):
            true_rel = torch.linalg.inv(poses[i]) @ poses[j]
            pred_rel = torch.linalg.inv(pred_poses[i]) @ pred_poses[j]
            rotations.append(rotation_angle_deg((pred_rel[:3, :3].T @ true_rel[:3, :3]).cpu().numpy()))
            t_true, t_pred = true_rel[:3, 3], pred_rel[:3, 3]
            lengths = (t_true.norm() * t_pred.norm()).clamp_min(1e-12)
            translations.append(_angle_deg(torch.dot(t_true, t_pred) / lengths))
            if j == i + 1:
                wrong_way.append(float(torch.dot(t_true, t_pred) < 0))
    if rotations:
        metrics["rotation_deg"] = float(sum(rotations) / len(rotations))
        metrics["translation_deg"] = float(torch.stack(translations).mean())
        metrics["wrong_way"] = sum(wrong_way) / len(wrong_way)
    return metrics


@torch.no_grad()
def evaluate(model, scenes: int, views: int, height: int, width: int, device: torch.device,
             prompt: list[int], special: dict[str, int], seed: int = HELD_OUT_SEED,
             motion: str = "forward") -> dict[str, float]:
    batch = render_scenes(scenes, views, height, width, seed=seed + views, device=device, motion=motion)
    totals: dict[str, float] = {}
    for item in range(scenes):
        result = model.reconstruct(batch.images[item].to(model.dtype), prompt, special)
        for key, value in scene_metrics(result["depth"], result["camera_poses"], batch.depth[item],
                                        batch.camera_to_world[item]).items():
            totals[key] = totals.get(key, 0.0) + value
    return {key: value / scenes for key, value in totals.items()}


def main(argv: Optional[list[str]] = None) -> int:
    from g2vlm_ros.backends.torch_backend import folder_token_ids
    from g2vlm_ros.model import load_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--views", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--height", type=int, default=392)
    parser.add_argument("--width", type=int, default=518)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--motion", choices=MOTIONS, default="forward", help="camera walks (scenes.WALKS)")
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    model = load_checkpoint(args.checkpoint, device=device, dtype=torch.float32)
    prompt, special = folder_token_ids(args.checkpoint)
    table = {views: evaluate(model, args.scenes, views, args.height, args.width, device, prompt, special,
                             motion=args.motion) for views in args.views}
    print(f"{args.motion} walks")
    print(f"{'views':>5} {'AbsRel':>8} {'d<1.25':>8} {'rot deg':>8} {'trans deg':>9} {'wrong way':>9}")
    for views, row in table.items():
        print(f"{views:>5} {row['depth_abs_rel']:>8.4f} {row['depth_delta_1_25']:>8.4f} "
              f"{row.get('rotation_deg', float('nan')):>8.2f} {row.get('translation_deg', float('nan')):>9.2f} "
              f"{row.get('wrong_way', float('nan')):>9.3f}")
    if args.json:
        args.json.write_text(json.dumps({str(k): v for k, v in table.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
