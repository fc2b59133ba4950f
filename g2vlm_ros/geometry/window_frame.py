"""The frame a window's geometry is published in, and a per-pixel confidence for checkpoints
without a confidence head.

G2VLM's camera loss (π³) only sees relative poses, so the raw camera-to-world of the first view
is arbitrary (the demo model's is tens of degrees and ten units away from the identity), while
the global point head predicts in the first camera's frame. Anchoring every pose to the first
view gives the window one well-defined frame, the first view's optical frame, in which the
posed local points and the global points can be compared.

Two heads predict every pixel's world position independently: the camera pose applied to the
local points, and the global point head. Where they disagree the geometry is unreliable (on the
demo model's held-out scenes the tenth of pixels with the largest disagreement has twice the
depth error of the rest), which makes their agreement a usable confidence where the checkpoint
has no confidence head (the released one and the demo model have none).
"""
from __future__ import annotations

from typing import Optional

import torch

# disagreement, as a fraction of the pixel's depth, at which the confidence falls to 1/e
AGREEMENT_SCALE = 0.1


def anchor_to_first_camera(camera_to_world: torch.Tensor, world_points: torch.Tensor,
                           first_inverse: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """camera_to_world [N,4,4], world_points [N,H,W,3] -> both expressed in the first camera's frame.
    first_inverse: the first camera's world-to-camera [1,4,4] on the tensors' device, where the caller has it."""
    if first_inverse is None:
        # a 4x4 inverse on the host: on a GPU it is a solver launch plus an error check that waits
        first_inverse = torch.linalg.inv(camera_to_world[:1].double().cpu()).float().to(camera_to_world.device)
    anchored = first_inverse @ camera_to_world
    rotation, translation = first_inverse[0, :3, :3], first_inverse[0, :3, 3]
    return anchored, world_points @ rotation.T + translation


def head_agreement_confidence(posed_points: torch.Tensor, global_points: torch.Tensor,
                              depth: torch.Tensor) -> torch.Tensor:
    """Confidence in (0, 1] [N,H,W] from the distance between the posed local points and the global
    points [N,H,W,3] (same frame), relative to the depth [N,H,W]: exp(-distance / (0.1 depth))."""
    distance = (posed_points - global_points).norm(dim=-1) / depth.abs().clamp_min(1e-6)
    return torch.exp(-distance / AGREEMENT_SCALE).nan_to_num(0.0)
