"""DINOv2-with-registers encoder of the geometry path, including the official attention segmentation.

The official encoder flattens all views' tokens (1 CLS + R registers + P patches each) into one
sequence but cuts attention segments by patch counts only: segment k covers flat rows
[k*P, (k+1)*P). Segments therefore straddle view boundaries, and the last N*(1+R) rows belong to
no segment and get no attention output. The trained weights saw exactly this, so we reproduce it:
attention runs within each length-P block of the flat sequence, and the trailing rows get zeros
(deterministic, where flash-attention leaves uninitialised memory).

Parameter names follow the official checkpoint (`dino_model.` prefix stripped).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from g2vlm_ros.model.config import DinoConfig


class PatchEmbeddings(nn.Module):
    def __init__(self, config: DinoConfig):
        super().__init__()
        self.projection = nn.Conv2d(config.num_channels, config.hidden_size, config.patch_size, config.patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.projection(pixels).flatten(2).transpose(1, 2)


class Embeddings(nn.Module):
    def __init__(self, config: DinoConfig):
        super().__init__()
        width, grid = config.hidden_size, config.image_size // config.patch_size
        self.patch_size = config.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.mask_token = nn.Parameter(torch.zeros(1, width))  # pre-training only; kept for the key layout
        self.register_tokens = nn.Parameter(torch.zeros(1, config.num_register_tokens, width))
        self.patch_embeddings = PatchEmbeddings(config)
        self.position_embeddings = nn.Parameter(torch.zeros(1, grid * grid + 1, width))

    def patch_position_embeddings(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Position embeddings [1, 1 + grid_h*grid_w, C]: the square table resampled to the patch grid
        (bicubic with antialiasing, in fp32), unchanged when the grid already matches."""
        table = self.position_embeddings
        side = math.isqrt(int(table.shape[1]) - 1)
        if grid_h == side and grid_w == side:
            return table
        width = table.shape[-1]
        grid = table[:, 1:].reshape(1, side, side, width).permute(0, 3, 1, 2)
        resized = F.interpolate(grid.float(), size=(grid_h, grid_w), mode="bicubic", align_corners=False,
                                antialias=True).to(table.dtype)
        return torch.cat((table[:, :1], resized.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, width)), dim=1)

    def forward(self, pixels: torch.Tensor, position_table: Optional[torch.Tensor] = None) -> torch.Tensor:
        """pixels [N,3,H,W] (normalised) -> tokens [N, 1 + R + P, C] as CLS, registers, patches.

        `position_table` may hold `patch_position_embeddings` precomputed for this size (export).
        """
        views, _, height, width = pixels.shape
        patches = self.patch_embeddings(pixels.to(self.patch_embeddings.projection.weight.dtype))
        tokens = torch.cat((self.cls_token.expand(views, -1, -1), patches), dim=1)
        if position_table is None:
            position_table = self.patch_position_embeddings(height // self.patch_size, width // self.patch_size)
        tokens = tokens + position_table
        registers = self.register_tokens.expand(views, -1, -1)
        return torch.cat((tokens[:, :1], registers, tokens[:, 1:]), dim=1)


class SelfAttention(nn.Module):
    def __init__(self, config: DinoConfig):
        super().__init__()
        width = config.hidden_size
        self.query = nn.Linear(width, width, bias=config.qkv_bias)
        self.key = nn.Linear(width, width, bias=config.qkv_bias)
        self.value = nn.Linear(width, width, bias=config.qkv_bias)


class AttentionOutput(nn.Module):
    def __init__(self, config: DinoConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)


class Attention(nn.Module):
    def __init__(self, config: DinoConfig):
        super().__init__()
        self.heads = config.num_attention_heads
        self.attention = SelfAttention(config)
        self.output = AttentionOutput(config)

    def forward(self, flat: torch.Tensor, segment_length: int, segments: int) -> torch.Tensor:
        """flat [..., T, C] -> [..., T, C]; attention inside each of `segments` blocks of
        `segment_length` rows of every flat sequence (leading axes: independent scenes)."""
        *lead, total, width = flat.shape
        covered = segment_length * segments

        def split_heads(projection: nn.Linear) -> torch.Tensor:
            x = projection(flat[..., :covered, :]).reshape(-1, segment_length, self.heads, width // self.heads)
            return x.transpose(1, 2)

        q, k, v = (split_heads(p) for p in (self.attention.query, self.attention.key, self.attention.value))
        context = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(*lead, covered, width)
        context = torch.cat((context, context.new_zeros(*lead, total - covered, width)), dim=-2)
        return self.output.dense(context)


class LayerScale(nn.Module):
    def __init__(self, width: int, value: float):
        super().__init__()
        self.lambda1 = nn.Parameter(torch.full((width,), float(value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.lambda1


class Mlp(nn.Module):
    def __init__(self, config: DinoConfig):
        super().__init__()
        hidden = int(config.hidden_size * config.mlp_ratio)
        self.fc1 = nn.Linear(config.hidden_size, hidden)
        self.fc2 = nn.Linear(hidden, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Layer(nn.Module):
    def __init__(self, config: DinoConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = Attention(config)
        self.layer_scale1 = LayerScale(config.hidden_size, config.layerscale_value)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = Mlp(config)
        self.layer_scale2 = LayerScale(config.hidden_size, config.layerscale_value)

    def forward(self, flat: torch.Tensor, segment_length: int, segments: int) -> torch.Tensor:
        flat = flat + self.layer_scale1(self.attention(self.norm1(flat), segment_length, segments))
        return flat + self.layer_scale2(self.mlp(self.norm2(flat)))


class Encoder(nn.Module):
    def __init__(self, config: DinoConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))


class DinoEncoder(nn.Module):
    """pixels [N,3,H,W] (ResNet-normalised, H and W multiples of 14) -> patch tokens [N, P, C].

    With `scenes` > 1 the N views are that many scenes of N / scenes views each, consecutive; every
    scene gets its own flat sequence and segmentation, exactly as if encoded alone."""

    def __init__(self, config: DinoConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixels: torch.Tensor, position_table: Optional[torch.Tensor] = None,
                scenes: int = 1) -> torch.Tensor:
        tokens = self.embeddings(pixels, position_table)
        views, per_view, width = tokens.shape
        patches = (pixels.shape[2] // self.config.patch_size) * (pixels.shape[3] // self.config.patch_size)
        flat = tokens.reshape(views * per_view, width) if scenes == 1 else tokens.reshape(scenes, -1, width)
        for layer in self.encoder.layer:
            flat = layer(flat, segment_length=patches, segments=views // scenes)
        tokens = self.layernorm(flat).reshape(views, per_view, width)
        return tokens[:, 1 + self.config.num_register_tokens:]
