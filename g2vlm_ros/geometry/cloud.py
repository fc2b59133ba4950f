"""Point cloud reduction: voxel-grid downsampling of coloured, optionally confidence-weighted clouds.

A G2VLM frame unprojects to hundreds of thousands of points, most of them redundant at the
resolution a robot plans or displays at. `voxel_downsample` replaces all points that fall into
the same cube of edge `voxel_size` by one point: their mean position, mean colour and mean
confidence. The grid is anchored at the origin (voxel index = floor(p / voxel_size)), so the
same world location lands in the same voxel in every frame, whatever the cloud's extent.

Everything is vectorised torch on the tensors' own device (CPU or CUDA): the points are grouped
by an int64 voxel key with `torch.unique`, and the per-voxel sums are accumulated with
`index_add_`. The output is sorted by voxel index (x, then y, then z), so it does not depend on
the input order of the points.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

# floor(p / voxel_size) must fit in int64 with room for the differences taken below
_MAX_INDEX = 2.0 ** 62
_MAX_KEY = 2 ** 63 - 1


def voxel_downsample(points: torch.Tensor, colors: torch.Tensor, confidence: Optional[torch.Tensor],
                     voxel_size: float) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """One point per occupied voxel: the mean position, colour and confidence of its input points.

    points [M,3] float (finite: the caller removes invalid pixels), colors [M,3] uint8,
    confidence [M] float or None. Returns (points [V,3], colors [V,3] uint8, confidence [V] or None)
    with V the number of occupied voxels, in the input dtypes and on the input device, sorted by
    voxel index. Colours are rounded to the nearest integer, halves up. voxel_size <= 0 returns
    the inputs unchanged.

    Positions and confidences are summed in float64: the means then stay within the range of
    their voxel's points (a float32 sum of many points drifts). On CUDA, `index_add_` sums with
    atomics, so the last float64 bits may differ between runs; after rounding to float32 they
    practically never do. On CPU the result is bit-for-bit reproducible.
    """
    _check_inputs(points, colors, confidence, voxel_size)
    if voxel_size <= 0:
        return points, colors, confidence
    if points.shape[0] == 0:
        return points.clone(), colors.clone(), None if confidence is None else confidence.clone()

    # float64 division: p is exact in float64, so this rounds once, as floor(p / voxel_size) on doubles would
    scaled = torch.floor(points.to(torch.float64) / voxel_size)
    if float(scaled.abs().max()) >= _MAX_INDEX:
        raise ValueError(f"points up to {float(points.abs().max()):.3g} from the origin are too far for "
                         f"voxel_size {voxel_size}: voxel indices would overflow int64")
    index = scaled.to(torch.int64)
    inverse, counts = _group_voxels(index)
    voxel_count = counts.shape[0]

    position_sum = torch.zeros((voxel_count, 3), dtype=torch.float64, device=points.device)
    position_sum.index_add_(0, inverse, points.to(torch.float64))
    out_points = (position_sum / counts.unsqueeze(1)).to(points.dtype)

    # integer sums are exact; (2 * sum + n) // (2 * n) is round(sum / n) with halves rounded up
    color_sum = torch.zeros((voxel_count, 3), dtype=torch.int64, device=colors.device)
    color_sum.index_add_(0, inverse, colors.to(torch.int64))
    twice_counts = 2 * counts.unsqueeze(1)
    out_colors = torch.div(2 * color_sum + counts.unsqueeze(1), twice_counts, rounding_mode="floor").to(torch.uint8)

    out_confidence = None
    if confidence is not None:
        confidence_sum = torch.zeros(voxel_count, dtype=torch.float64, device=confidence.device)
        confidence_sum.index_add_(0, inverse, confidence.to(torch.float64))
        out_confidence = (confidence_sum / counts).to(confidence.dtype)
    return out_points, out_colors, out_confidence


def _check_inputs(points: torch.Tensor, colors: torch.Tensor, confidence: Optional[torch.Tensor],
                  voxel_size: float) -> None:
    if not math.isfinite(voxel_size):
        raise ValueError(f"voxel_size must be finite, got {voxel_size}")
    if points.ndim != 2 or points.shape[1] != 3 or not points.is_floating_point():
        raise ValueError(f"points must be a float tensor [M,3], got {points.dtype} {tuple(points.shape)}")
    count = points.shape[0]
    if colors.shape != (count, 3) or colors.dtype != torch.uint8:
        raise ValueError(f"colors must be uint8 [{count},3], got {colors.dtype} {tuple(colors.shape)}")
    if confidence is not None and (confidence.shape != (count,) or not confidence.is_floating_point()):
        raise ValueError(f"confidence must be a float tensor [{count}], got {confidence.dtype} "
                         f"{tuple(confidence.shape)}")
    if not bool(torch.isfinite(points).all()):
        raise ValueError("points contain NaN or infinite coordinates; remove invalid points before downsampling")


def _group_voxels(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For voxel indices [M,3] int64: (voxel number of each point [M], points per voxel [V]).

    Voxels are numbered in lexicographic order of (x, y, z) index.
    """
    low = index.min(dim=0).values
    offset = index - low  # >= 0 and < 2^63 thanks to the _MAX_INDEX check
    extent = [int(value) + 1 for value in offset.max(dim=0).values.tolist()]
    if extent[0] * extent[1] * extent[2] <= _MAX_KEY:
        # row-major key: one int64 per point, ordered like the (x, y, z) index tuples; a 1-D unique is far
        # faster than unique(dim=0)
        key = (offset[:, 0] * extent[1] + offset[:, 1]) * extent[2] + offset[:, 2]
        _, inverse, counts = torch.unique(key, sorted=True, return_inverse=True, return_counts=True)
    else:
        # the cloud spans more voxels than one int64 can number (tiny voxels over a huge extent): group rows
        _, inverse, counts = torch.unique(offset, dim=0, sorted=True, return_inverse=True, return_counts=True)
    return inverse, counts
