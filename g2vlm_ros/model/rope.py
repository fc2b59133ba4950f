"""Rotary position embeddings: M-RoPE for the language stack, 2D RoPE for the geometry heads."""
from __future__ import annotations

from typing import NamedTuple

import torch

from g2vlm_ros.model.config import MROPE_SECTION


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def mrope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [L, head_dim] (fp32) for M-RoPE positions [3, L] (rows: temporal, height, width).

    The rotary channels are split into sections (16, 24, 24) per half; section i rotates with the
    position of axis i % 3. Text tokens carry the same value on all three axes, which reduces this
    to ordinary 1D RoPE.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids.device)
                                .float() / head_dim))
    freqs = position_ids.float()[..., None] * inv_freq  # [3, L, head_dim/2]
    angles = torch.cat((freqs, freqs), dim=-1)  # [3, L, head_dim]
    sections = list(MROPE_SECTION) * 2
    picked = [chunk[axis % 3] for axis, chunk in enumerate(angles.split(sections, dim=-1))]
    angles = torch.cat(picked, dim=-1)  # [L, head_dim]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates x [..., L, D] by cos/sin [L, D] (broadcast over leading axes)."""
    return x * cos + rotate_half(x) * sin


class RotaryTables(NamedTuple):
    """The 2D RoPE as one rotation over all channels: x * cos + swap(x) * signed_sin, where swap
    exchanges the two quarters of each half (rotate_half without its negation, which signed_sin
    carries). Both [B, 1, N, D], broadcast over heads."""

    cos: torch.Tensor
    signed_sin: torch.Tensor


class RoPE2D(torch.nn.Module):
    """2D rotary embedding of the π³-style heads: half the channels rotate with the patch row, half
    with the patch column, each half as 1D RoPE with base `frequency`."""

    def __init__(self, frequency: float):
        super().__init__()
        self.frequency = frequency

    def cos_sin(self, positions: torch.Tensor, half_dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [..., N] (integer) -> cos/sin [..., N, half_dim]."""
        inv_freq = 1.0 / (self.frequency ** (torch.arange(0, half_dim, 2, device=positions.device).float() / half_dim))
        freqs = (positions.float()[..., None] * inv_freq).to(dtype)
        freqs = torch.cat((freqs, freqs), dim=-1)
        return freqs.cos(), freqs.sin()

    def tables(self, positions: torch.Tensor, head_dim: int, dtype: torch.dtype) -> RotaryTables:
        """The tables for positions [B, N, 2] as (row, column): computed once per forward and
        shared by every block and head decoder instead of being recomputed for each q and k."""
        half, quarter = head_dim // 2, head_dim // 4
        row_cos, row_sin = self.cos_sin(positions[..., 0], half, dtype)
        col_cos, col_sin = self.cos_sin(positions[..., 1], half, dtype)
        signed = [torch.cat((-sin[..., :quarter], sin[..., quarter:]), dim=-1) for sin in (row_sin, col_sin)]
        return RotaryTables(torch.cat((row_cos, col_cos), dim=-1)[:, None], torch.cat(signed, dim=-1)[:, None])

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | RotaryTables) -> torch.Tensor:
        """tokens [B, heads, N, D], positions [B, N, 2] as (row, column) or their tables -> rotated tokens.

        Per half this is part * cos + rotate_half(part) * sin (three kernels for all channels
        instead of nine per half)."""
        if not isinstance(positions, RotaryTables):
            positions = self.tables(positions, tokens.shape[-1], tokens.dtype)
        quarter = tokens.shape[-1] // 4
        swapped = tokens.unflatten(-1, (2, 2, quarter)).flip(-2).flatten(-3)
        return torch.addcmul(tokens * positions.cos, swapped, positions.signed_sin)


def patch_grid_positions(views: int, grid_h: int, grid_w: int, device=None) -> torch.Tensor:
    """(row, column) of each patch in row-major order, for every view: [views, grid_h*grid_w, 2]."""
    rows = torch.arange(grid_h, device=device).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, device=device).repeat(grid_h)
    return torch.stack((rows, cols), dim=-1)[None].expand(views, -1, -1)
