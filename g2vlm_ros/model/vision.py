"""The Qwen2-VL vision tower: G2VLM's semantic-path image encoder.

Input is the flat patch layout made by `vision_preprocess.vision_inputs`: one row per 14x14 patch
(times `temporal_patch_size` frames), rows of an image ordered so that every run of
`spatial_merge_size**2` consecutive rows is one 2x2 block of neighbouring patches. The tower embeds
the patches, runs `depth` pre-norm transformer blocks with 2D rotary attention restricted to each
frame's own patches, then merges each 2x2 block into one token of the language model's width.

Parameter names equal the official checkpoint keys with their `vit_model.` prefix removed, so
`load_state_dict` needs no renaming.

Numerics follow the official code, except that the official attention always casts q/k/v to bfloat16
(its "sdpa" and "flash_attention_2" choices both map to flash-attn); here attention runs in the
module's own dtype, so an fp32 tower is exact fp32 and a bf16 tower matches the official bf16 path.
The rotary angles and their application stay in fp32 whatever the module dtype, as in the official code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VisionConfig

_LAYER_NORM_EPS = 1e-6
_ROPE_THETA = 10000.0


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


_ACTIVATIONS = {
    "quick_gelu": _quick_gelu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
}


class _PatchEmbed(nn.Module):
    """[N, C*T*P*P] flat patches -> [N, embed_dim]; a Conv3d whose kernel covers exactly one patch."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.patch_shape = (config.in_channels, config.temporal_patch_size, config.patch_size, config.patch_size)
        kernel = self.patch_shape[1:]
        self.proj = nn.Conv3d(config.in_channels, config.embed_dim, kernel_size=kernel, stride=kernel, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.reshape(-1, *self.patch_shape).to(self.proj.weight.dtype)
        return self.proj(x).flatten(1)


class _Attention(nn.Module):
    """Multi-head self-attention with 2D rotary embedding, computed separately per segment."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"vision embed_dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, seqlens: list[int]) -> torch.Tensor:
        """x [N, dim]; cos/sin [N, head_dim] fp32; seqlens sum to N -> [N, dim]."""
        n = x.shape[0]
        q, k, v = self.qkv(x).view(n, 3, self.num_heads, -1).unbind(1)  # each [N, heads, head_dim]
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        out = []
        # One SDPA call per frame is the block-diagonal mask of the official cu_seqlens without
        # materialising an N x N mask.
        for qs, ks, vs in zip(q.split(seqlens), k.split(seqlens), v.split(seqlens), strict=True):
            # batch axis added: 3-D inputs would force PyTorch's slow fp32 math kernel
            o = F.scaled_dot_product_attention(qs.transpose(0, 1)[None], ks.transpose(0, 1)[None],
                                               vs.transpose(0, 1)[None])[0]
            out.append(o.transpose(0, 1))
        return self.proj(torch.cat(out).reshape(n, -1))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in fp32 (as the official code does) on x [N, heads, head_dim]; result in x's dtype."""
    xf = x.float()
    half = xf.shape[-1] // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos[:, None] + rotated * sin[:, None]).to(x.dtype)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        if act not in _ACTIVATIONS:
            raise ValueError(f"unsupported vision hidden_act '{act}'")
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = _ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.embed_dim, eps=_LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(config.embed_dim, eps=_LAYER_NORM_EPS)
        self.attn = _Attention(config.embed_dim, config.num_heads)
        self.mlp = _Mlp(config.embed_dim, int(config.embed_dim * config.mlp_ratio), config.hidden_act)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, seqlens: list[int]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin, seqlens)
        return x + self.mlp(self.norm2(x))


class _Merger(nn.Module):
    """[N, embed_dim] -> [N / merge**2, hidden_size]: each run of merge**2 rows becomes one token."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.merged_dim = config.embed_dim * config.spatial_merge_size**2
        self.ln_q = nn.LayerNorm(config.embed_dim, eps=_LAYER_NORM_EPS)
        # Sequential so that the checkpoint's `mlp.0` / `mlp.2` keys line up (index 1 is the exact GELU).
        self.mlp = nn.Sequential(
            nn.Linear(self.merged_dim, self.merged_dim), nn.GELU(), nn.Linear(self.merged_dim, config.hidden_size)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).reshape(-1, self.merged_dim))


class QwenVisionTower(nn.Module):
    """Qwen2-VL vision transformer (patch embed, `depth` blocks, 2x2 patch merger).

    forward(pixel_values [num_patches, in_channels*temporal_patch_size*patch_size**2],
            grid_thw [num_images, 3] integer (t, h, w) in patches)
        -> [num_patches // spatial_merge_size**2, hidden_size] in the module's dtype.
    """

    def __init__(self, config: VisionConfig):
        super().__init__()
        if config.embed_dim % config.num_heads or (config.embed_dim // config.num_heads) % 4:
            raise ValueError("vision head_dim must be a multiple of 4 (2D rotary over h and w halves)")
        self.config = config
        self.patch_embed = _PatchEmbed(config)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.depth))
        self.merger = _Merger(config)

    def rotary(self, grid_thw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [num_patches, head_dim] fp32 for patches laid out as the preprocessing lays them out.

        The first half of each head's channel pairs rotates with the patch row, the second with the
        patch column; inverse frequencies are those of a head_dim/2 rotary, shared by both axes.
        """
        merge = self.config.spatial_merge_size
        device = self.patch_embed.proj.weight.device
        positions = []
        for t, h, w in grid_thw.tolist():
            if h % merge or w % merge:
                raise ValueError(f"grid {h}x{w} is not a multiple of spatial_merge_size {merge}")
            rows = torch.arange(h, device=device)[:, None].expand(h, w)
            cols = torch.arange(w, device=device)[None, :].expand(h, w)
            # Reorder (h, w) raster positions into the merge-block order of the flat patch rows.
            hw = torch.stack((rows, cols), dim=-1).reshape(h // merge, merge, w // merge, merge, 2)
            positions.append(hw.permute(0, 2, 1, 3, 4).reshape(-1, 2).repeat(t, 1))
        pos = torch.cat(positions).float()  # [N, 2]
        quarter = self.config.embed_dim // self.config.num_heads // 4
        inv_freq = 1.0 / (_ROPE_THETA ** (torch.arange(quarter, dtype=torch.float, device=device) / quarter))
        angles = (pos[:, :, None] * inv_freq).flatten(1)  # [N, head_dim / 2]: row angles then column angles
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos(), angles.sin()

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, C*T*P*P], grid_thw [num_images, 3] -> [N / merge**2, hidden_size]."""
        grid_thw = torch.as_tensor(grid_thw).reshape(-1, 3)
        counts = grid_thw.prod(dim=1)
        if int(counts.sum()) != pixel_values.shape[0]:
            raise ValueError(f"grid_thw describes {int(counts.sum())} patches but pixel_values has "
                             f"{pixel_values.shape[0]} rows")
        # Each temporal frame of each image is its own attention segment, as the official cu_seqlens are.
        seqlens = [h * w for t, h, w in grid_thw.tolist() for _ in range(t)]
        cos, sin = self.rotary(grid_thw)
        x = self.patch_embed(pixel_values)
        for block in self.blocks:
            x = block(x, cos, sin, seqlens)
        return self.merger(x)
