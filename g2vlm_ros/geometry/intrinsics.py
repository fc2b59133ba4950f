"""Pinhole intrinsics recovered from a local point map (G2VLM predicts points, not intrinsics).

For a pinhole camera every pixel (u, v) with camera-frame point (x, y, z) satisfies
    u = fx * (x / z) + cx,    v = fy * (y / z) + cy
(pixel centres at integer coordinates, u = column, v = row). The solver fits these by least
squares over valid pixels (finite, z > 0), optionally weighted (e.g. by confidence):
- principal_point="center" (default): cx = (W-1)/2, cy = (H-1)/2 fixed; each focal is the
  one-parameter fit  f = sum(w*a*(u-c)) / sum(w*a*a)  with a = x/z (resp. y/z). Predicted point
  maps are noisy near the borders; fixing the principal point keeps the focal estimate stable.
- principal_point="solve": (fx, cx) and (fy, cy) are two independent straight-line fits.
Views whose map has fewer than two valid pixels get NaN intrinsics rather than a guess.
"""
from __future__ import annotations

from typing import Optional

import torch


def solve_intrinsics(local_points: torch.Tensor, weights: Optional[torch.Tensor] = None,
                     principal_point: str = "center") -> torch.Tensor:
    """local_points [N,H,W,3] (camera frame) -> K [N,3,3] (float64) for the same H x W grid."""
    if principal_point not in ("center", "solve"):
        raise ValueError("principal_point must be 'center' or 'solve'")
    views, height, width, _ = local_points.shape
    points = local_points.double()
    z = points[..., 2]
    valid = torch.isfinite(points).all(dim=-1) & (z > 0)
    w = valid.double() if weights is None else torch.where(valid, weights.double().clamp(min=0), 0.0)
    safe_z = torch.where(valid, z, torch.ones_like(z))
    a_x = torch.where(valid, points[..., 0] / safe_z, 0.0)
    a_y = torch.where(valid, points[..., 1] / safe_z, 0.0)
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64, device=points.device),
                          torch.arange(width, dtype=torch.float64, device=points.device), indexing="ij")
    u, v = u.expand(views, -1, -1), v.expand(views, -1, -1)

    def fit(a: torch.Tensor, pixel: torch.Tensor, centre: float) -> tuple[torch.Tensor, torch.Tensor]:
        dims = (1, 2)
        total = w.sum(dims)
        if principal_point == "center":
            focal = (w * a * (pixel - centre)).sum(dims) / (w * a * a).sum(dims)
            return focal, torch.full_like(focal, centre)
        mean_a, mean_p = (w * a).sum(dims) / total, (w * pixel).sum(dims) / total
        da, dp = a - mean_a[:, None, None], pixel - mean_p[:, None, None]
        focal = (w * da * dp).sum(dims) / (w * da * da).sum(dims)
        return focal, mean_p - focal * mean_a

    fx, cx = fit(a_x, u, (width - 1) / 2.0)
    fy, cy = fit(a_y, v, (height - 1) / 2.0)
    intrinsics = torch.zeros(views, 3, 3, dtype=torch.float64, device=points.device)
    intrinsics[:, 0, 0], intrinsics[:, 0, 2] = fx, cx
    intrinsics[:, 1, 1], intrinsics[:, 1, 2] = fy, cy
    intrinsics[:, 2, 2] = 1.0
    too_few = valid.sum((1, 2)) < 2
    # where, not a masked assignment: that one waits for the device to count the masked views
    return torch.where(too_few[:, None, None], float("nan"), intrinsics)
