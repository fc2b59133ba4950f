"""π³-style geometry decoders and heads on top of the geometry expert's patch tokens.

- `point_decoder` + `point_head`: per-pixel local points in the camera frame.
- `camera_decoder` + `camera_head`: camera-to-world pose per view.
- `global_points_decoder` (cross-attends to the first view) + `global_point_head`: per-pixel
  points in the world frame.
Decoders are pre-norm transformer blocks whose attention applies 2D RoPE over the patch grid.
Parameter names follow the official checkpoint.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from g2vlm_ros.model.rope import RoPE2D, RotaryTables

LAYER_NORM_EPS = 1e-6


def linear_fp32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The official heads run outside autocast in fp32; reduced-precision weights are upcast here."""
    bias = layer.bias.float() if layer.bias is not None else None
    return F.linear(x.float(), layer.weight.float(), bias)


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, C] -> [B, heads, N, C/heads]."""
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)


class SelfAttentionRope(nn.Module):
    def __init__(self, width: int, heads: int, rope: RoPE2D):
        super().__init__()
        self.heads, self.rope = heads, rope
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        q, k, v = (_heads(part, self.heads) for part in self.qkv(x).chunk(3, dim=-1))
        q, k = self.rope(q, positions), self.rope(k, positions)
        return self.proj(_merge(F.scaled_dot_product_attention(q, k, v)))


class CrossAttentionRope(nn.Module):
    def __init__(self, width: int, heads: int, rope: RoPE2D):
        super().__init__()
        self.heads, self.rope = heads, rope
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor, x_positions: torch.Tensor,
                context_positions: torch.Tensor) -> torch.Tensor:
        q = self.rope(_heads(self.q_proj(x), self.heads), x_positions)
        k = self.rope(_heads(self.k_proj(context), self.heads), context_positions)
        v = _heads(self.v_proj(context), self.heads)
        return self.proj(_merge(F.scaled_dot_product_attention(q, k, v)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, rope: RoPE2D):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.attn = SelfAttentionRope(width, heads, rope)
        self.norm2 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(width, 4 * width)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), positions)
        return x + self.mlp(self.norm2(x))


class CrossBlock(nn.Module):
    def __init__(self, width: int, heads: int, rope: RoPE2D):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.attn = SelfAttentionRope(width, heads, rope)
        self.norm2 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.norm_y = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.cross_attn = CrossAttentionRope(width, heads, rope)
        self.norm3 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(width, 4 * width)

    def forward(self, x: torch.Tensor, context: torch.Tensor, positions: torch.Tensor,
                context_positions: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), positions)
        x = x + self.cross_attn(self.norm2(x), self.norm_y(context), positions, context_positions)
        return x + self.mlp(self.norm3(x))


class TransformerDecoder(nn.Module):
    """`depth` blocks then a linear projection to `out_dim`; with `cross=True` the blocks also
    cross-attend to a context sequence."""

    def __init__(self, width: int, heads: int, depth: int, out_dim: int, rope: RoPE2D, cross: bool = False):
        super().__init__()
        block = CrossBlock if cross else Block
        self.heads, self.rope = heads, rope
        self.blocks = nn.ModuleList(block(width, heads, rope) for _ in range(depth))
        self.linear_out = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | RotaryTables, context: torch.Tensor | None = None,
                context_positions: torch.Tensor | RotaryTables | None = None) -> torch.Tensor:
        """positions [B, N, 2] (row, column) or their RotaryTables (precomputed once per forward)."""
        head_dim = x.shape[-1] // self.heads
        if not isinstance(positions, RotaryTables):
            positions = self.rope.tables(positions, head_dim, x.dtype)
        if context_positions is not None and not isinstance(context_positions, RotaryTables):
            context_positions = self.rope.tables(context_positions, head_dim, x.dtype)
        for block in self.blocks:
            x = block(x, positions) if context is None else block(x, context, positions, context_positions)
        return self.linear_out(x)


class PixelHead(nn.Module):
    """Each patch token -> a patch_size x patch_size tile of `channels` values (pixel shuffle)."""

    def __init__(self, in_dim: int, patch_size: int, channels: int):
        super().__init__()
        self.patch_size, self.channels = patch_size, channels
        self.proj = nn.Linear(in_dim, channels * patch_size * patch_size)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """tokens [B, P, in_dim] -> [B, height, width, channels] (fp32)."""
        batch = tokens.shape[0]
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        grid = linear_fp32(self.proj, tokens).transpose(1, 2).reshape(batch, -1, grid_h, grid_w)
        return F.pixel_shuffle(grid, self.patch_size).permute(0, 2, 3, 1)


class ResidualMlpBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.res_conv1 = nn.Linear(width, width)
        self.res_conv2 = nn.Linear(width, width)
        self.res_conv3 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(linear_fp32(self.res_conv1, x))
        y = F.relu(linear_fp32(self.res_conv2, y))
        return x + F.relu(linear_fp32(self.res_conv3, y))


class _SpecialPolar(torch.autograd.Function):
    """R = V diag(1, 1, det(V U^T)) U^T for A^T = U S V^T: the rotation nearest to A.

    Autograd through torch.linalg.svd differentiates U and V separately, with 1 / (s_i^2 - s_j^2)
    terms; near a rotation every s_i is about 1, so those gradients explode (they cancel only in
    exact arithmetic), which derails training. The polar factor's own derivative has the stable
    denominators s_i + s_j instead (last one signed by the determinant), used here; the forward
    pass is unchanged.
    """

    @staticmethod
    def forward(ctx, matrices: torch.Tensor) -> torch.Tensor:
        # a batch of 3x3 SVDs is a few microseconds on the host but milliseconds of cuSOLVER
        # launches and syncs on a GPU: GPU inputs are solved on the host in float64
        work = matrices.detach().cpu().double() if matrices.is_cuda else matrices
        u, singular, vh = torch.linalg.svd(work.transpose(-1, -2))
        v = vh.transpose(-1, -2)
        det = torch.det(v @ u.transpose(-1, -2))
        v = torch.cat((v[..., :2], v[..., 2:] * det[..., None, None]), dim=-1)
        signed = torch.cat((singular[..., :2], singular[..., 2:] * det[..., None]), dim=-1)
        u, v, signed = (t.to(matrices.device, matrices.dtype) for t in (u, v, signed))
        ctx.save_for_backward(u, v, signed)
        return v @ u.transpose(-1, -2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        u, v, signed = ctx.saved_tensors
        k = v.transpose(-1, -2) @ grad @ u
        denominator = (signed[..., :, None] + signed[..., None, :]).clamp_min(1e-6)
        return v @ ((k - k.transpose(-1, -2)) / denominator) @ u.transpose(-1, -2)


def orthonormalize(matrices: torch.Tensor) -> torch.Tensor:
    """Nearest rotation to each 3x3 matrix [B,3,3] after normalising its rows (the official
    9D-to-SO(3) mapping): R = V diag(1, 1, det(V U^T)) U^T for the SVD of the row-normalised
    matrix transposed, U S V^T (with a numerically stable gradient, see _SpecialPolar)."""
    return _SpecialPolar.apply(F.normalize(matrices, p=2, dim=-1))


def pose_matrix(rotation_raw: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Raw head outputs ([B,3,3] unconstrained, [B,3]) -> camera-to-world 4x4 [B,4,4] (fp32)."""
    pose = torch.zeros(rotation_raw.shape[0], 4, 4, dtype=torch.float32, device=rotation_raw.device)
    pose[:, :3, :3] = orthonormalize(rotation_raw.float())
    pose[:, :3, 3] = translation.float()
    pose[:, 3, 3] = 1.0
    return pose


class CameraHead(nn.Module):
    """Camera tokens [B, P, C] -> 9 rotation numbers [B,3,3] and a translation [B,3].

    The rotation numbers become a rotation in `pose_matrix` (an SVD), kept outside this module so
    that the network itself exports to graph formats without an SVD operator.
    """

    def __init__(self, width: int):
        super().__init__()
        self.res_conv = nn.ModuleList(ResidualMlpBlock(width) for _ in range(2))
        self.more_mlps = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.fc_t = nn.Linear(width, 3)
        self.fc_rot = nn.Linear(width, 9)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Computed in fp32 whatever the model dtype (as the official head): SVD and det need it."""
        tokens = tokens.float()
        for block in self.res_conv:
            tokens = block(tokens)
        pooled = tokens.mean(dim=1)
        pooled = F.relu(linear_fp32(self.more_mlps[2], F.relu(linear_fp32(self.more_mlps[0], pooled))))
        return linear_fp32(self.fc_rot, pooled).view(-1, 3, 3), linear_fp32(self.fc_t, pooled)
