"""The Mixture-of-Transformer-Experts language stack (Qwen2-VL layout, two experts per layer).

Every layer holds two experts with identical shapes: the semantic ("und") expert under the plain
Qwen2 names and the geometry expert under the same names with the suffix `_moe_geo`. Each token
is processed by one expert (its norms, Q/K/V/O projections, q/k norms and MLP), and all tokens of
a step share one attention. The layer scales `ls1`/`ls2` apply to geometry tokens only.

A step's new tokens come as two contiguous groups, `und` then `geo`. Hidden states may carry
leading batch axes ([..., L, C]: independent sequences of the same layout, used to train on
several scenes per step); a cache without them is shared by every sequence. Grouping instead of
scattering by index is exact: within a step the groups either form a non-causal block (image
tokens), where attention does not depend on token order, or only `und` tokens are present (text,
causal). It also keeps shapes static for export.

Parameter names follow the official checkpoint (`language_model.` prefix stripped).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from g2vlm_ros.model import kernels
from g2vlm_ros.model.config import LAYER_SCALE_INIT, TextConfig
from g2vlm_ros.model.fused import FusedLinears
from g2vlm_ros.model.rope import apply_rope


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():  # no RMSNormalization before opset 23
            # computed in fp32 and cast back before the weight, as Qwen2 does
            x32 = x.float()
            x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
            return self.weight * x32.to(x.dtype)
        # one fused kernel; Qwen2's fp32 arithmetic, but in bf16/fp16 it rounds once after the
        # weight instead of before and after it (within one rounding of the unfused form)
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


class ExpertMlp(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

        self.fused: Optional[FusedLinears] = None  # gate and up in one GEMM (see fuse)

    def fuse(self) -> None:
        """Points gate_proj/up_proj at one concatenated weight (no copy kept; see FusedLinears)."""
        if self.fused is None or not self.fused.intact():
            self.fused = FusedLinears([self.gate_proj, self.up_proj])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None and self.fused.usable():
            if kernels.available(x):  # SiLU and product in one pass over the packed GEMM output
                return self.down_proj(kernels.silu_mul(self.fused.packed(x)))
            gate, up = self.fused(x)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class LayerScale(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((width,), LAYER_SCALE_INIT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


@dataclass
class TokenGroup:
    """New tokens of one expert in a step: hidden states [..., L, C] and rotary cos/sin [L, head_dim]."""

    hidden: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """Attention of q [..., H, Lq, D] over k, v [..., KV, Lk, D] with H = KV * repeats (GQA).

    Without copies of k and v: the `repeats` query heads that share a key/value head are folded
    into the query axis ([..., KV, repeats * Lq, D]), which is exact because every query row
    attends independently; a causal mask is tiled the same way. Causal masks are bottom-right
    aligned: new token i sees every cached key and the new tokens up to i.
    """
    *lead, heads, new, dim = q.shape
    kv_heads, total = k.shape[-3], k.shape[-2]
    repeats = heads // kv_heads
    folded = q.reshape(*lead, kv_heads, repeats * new, dim)
    mask = None
    if causal:
        mask = torch.ones(new, total, dtype=torch.bool, device=q.device).tril(diagonal=total - new)
        mask = mask.repeat(repeats, 1)
    # a leading batch axis: without it PyTorch's fused (flash / memory-efficient) kernels refuse
    # the call and it falls back to the fp32 math kernel, ~30x slower for long image blocks
    if not lead:
        out = F.scaled_dot_product_attention(folded[None], k[None], v[None], attn_mask=mask)[0]
    else:
        out = F.scaled_dot_product_attention(folded, k, v, attn_mask=mask)
    return out.reshape(*lead, heads, new, dim)


class MoTAttention(nn.Module):
    """Per-expert projections and q/k norms around one shared attention."""

    def __init__(self, config: TextConfig):
        super().__init__()
        width, head_dim = config.hidden_size, config.head_dim
        self.heads, self.kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, head_dim
        for suffix in ("", "_moe_geo"):
            setattr(self, f"q_proj{suffix}", nn.Linear(width, self.heads * head_dim, bias=True))
            setattr(self, f"k_proj{suffix}", nn.Linear(width, self.kv_heads * head_dim, bias=True))
            setattr(self, f"v_proj{suffix}", nn.Linear(width, self.kv_heads * head_dim, bias=True))
            setattr(self, f"o_proj{suffix}", nn.Linear(self.heads * head_dim, width, bias=False))
            setattr(self, f"q_norm{suffix}", RMSNorm(head_dim, config.rms_norm_eps))
            setattr(self, f"k_norm{suffix}", RMSNorm(head_dim, config.rms_norm_eps))
        self.fused: dict[str, FusedLinears] = {}  # per expert suffix: q, k, v in one GEMM (see fuse)

    def fuse(self) -> None:
        """Points each expert's q/k/v projections at one concatenated weight (see FusedLinears)."""
        for suffix in ("", "_moe_geo"):
            if suffix not in self.fused or not self.fused[suffix].intact():
                self.fused[suffix] = FusedLinears([getattr(self, f"{name}{suffix}")
                                                   for name in ("q_proj", "k_proj", "v_proj")])

    def _fused(self, suffix: str) -> Optional[FusedLinears]:
        fused = self.fused.get(suffix)
        return fused if fused is not None and fused.usable() else None

    def _project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, suffix: str):
        """x [..., L, C] -> q [..., heads, L, D], k and v [..., kv_heads, L, D] with q/k norm and rotary applied."""
        *lead, length, _ = x.shape
        fused = self._fused(suffix)
        if fused is not None:
            q, k, v = fused(x)
        else:
            q, k, v = (getattr(self, f"{name}{suffix}")(x) for name in ("q_proj", "k_proj", "v_proj"))
        q = q.view(*lead, length, self.heads, self.head_dim).transpose(-3, -2)
        k = k.view(*lead, length, self.kv_heads, self.head_dim).transpose(-3, -2)
        v = v.view(*lead, length, self.kv_heads, self.head_dim).transpose(-3, -2)
        q = getattr(self, f"q_norm{suffix}")(q)
        k = getattr(self, f"k_norm{suffix}")(k)
        q = apply_rope(q.float(), cos, sin).to(x.dtype)
        k = apply_rope(k.float(), cos, sin).to(x.dtype)
        return q, k, v

    def _project_fused_kernel(self, groups: list, past: Optional[tuple]):
        """The unbatched CUDA path: one GEMM and one kernel per expert write q, k and v into
        buffers laid out for attention and for the cache (no splits, casts or concatenations)."""
        first = groups[0][0].hidden
        new = sum(group.hidden.shape[-2] for group, _ in groups)
        cached = past[0].shape[-2] if past is not None else 0
        q = first.new_empty(self.heads, new, self.head_dim)
        k = first.new_empty(self.kv_heads, cached + new, self.head_dim)
        v = torch.empty_like(k)
        if past is not None:
            k[:, :cached].copy_(past[0])
            v[:, :cached].copy_(past[1])
        offset = 0
        for group, suffix in groups:
            packed = self.fused[suffix].packed(group.hidden)
            q_norm, k_norm = getattr(self, f"q_norm{suffix}"), getattr(self, f"k_norm{suffix}")
            kernels.qkv_norm_rope(packed, q, k, v, q_norm.weight, k_norm.weight, group.cos, group.sin,
                                  offset, cached + offset, q_norm.eps)
            offset += group.hidden.shape[-2]
        return q, k, v

    def forward(self, und: Optional[TokenGroup], geo: Optional[TokenGroup], past: Optional[tuple], causal: bool):
        """Returns (und_out [..., Lu, C], geo_out [..., Lg, C], (keys, values) [..., kv_heads, Lpast + Lu + Lg, D])."""
        groups = [(g, suffix) for g, suffix in ((und, ""), (geo, "_moe_geo")) if g is not None]
        first = groups[0][0].hidden
        if (first.dim() == 2 and kernels.available(first) and (past is None or past[0].dim() == 3)
                and all(self._fused(suffix) is not None for _, suffix in groups)):
            q, k, v = self._project_fused_kernel(groups, past)
        else:
            parts = [self._project(g.hidden, g.cos, g.sin, suffix) for g, suffix in groups]
            q = torch.cat([p[0] for p in parts], dim=-2)
            lead = q.shape[:-3]
            # a cache without the batch axes is shared by every sequence of the batch
            past = tuple(t.expand(*lead, *t.shape[-3:]) for t in past) if past is not None else None
            k = torch.cat(([past[0]] if past is not None else []) + [p[1] for p in parts], dim=-2)
            v = torch.cat(([past[1]] if past is not None else []) + [p[2] for p in parts], dim=-2)
        lead = q.shape[:-3]
        out = grouped_attention(q, k, v, causal)
        out = out.transpose(-3, -2).reshape(*lead, q.shape[-2], self.heads * self.head_dim)
        und_len = und.hidden.shape[-2] if und is not None else 0
        und_out = self.o_proj(out[..., :und_len, :]) if und is not None else None
        geo_out = self.o_proj_moe_geo(out[..., und_len:, :]) if geo is not None else None
        return und_out, geo_out, (k, v)


class MoTDecoderLayer(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        width, eps = config.hidden_size, config.rms_norm_eps
        self.self_attn = MoTAttention(config)
        self.mlp = ExpertMlp(config)
        self.mlp_moe_geo = ExpertMlp(config)
        self.input_layernorm = RMSNorm(width, eps)
        self.input_layernorm_moe_geo = RMSNorm(width, eps)
        self.post_attention_layernorm = RMSNorm(width, eps)
        self.post_attention_layernorm_moe_geo = RMSNorm(width, eps)
        self.ls1 = LayerScale(width)
        self.ls2 = LayerScale(width)

    def forward(self, und: Optional[TokenGroup], geo: Optional[TokenGroup], past: Optional[tuple], causal: bool):
        """Returns the updated groups and this step's (keys, values) including `past`."""
        normed_und = TokenGroup(self.input_layernorm(und.hidden), und.cos, und.sin) if und is not None else None
        normed_geo = (TokenGroup(self.input_layernorm_moe_geo(geo.hidden), geo.cos, geo.sin)
                      if geo is not None else None)
        und_attn, geo_attn, kv = self.self_attn(normed_und, normed_geo, past, causal)
        if und is not None:
            hidden = und.hidden + und_attn
            hidden = hidden + self.mlp(self.post_attention_layernorm(hidden))
            und = TokenGroup(hidden, und.cos, und.sin)
        if geo is not None:
            # residual + layer scale in one kernel each (x + attn * gamma)
            hidden = torch.addcmul(geo.hidden, geo_attn, self.ls1.gamma)
            hidden = torch.addcmul(hidden, self.mlp_moe_geo(self.post_attention_layernorm_moe_geo(hidden)),
                                   self.ls2.gamma)
            geo = TokenGroup(hidden, geo.cos, geo.sin)
        return und, geo, kv

    def fuse(self) -> None:
        self.self_attn.fuse()
        self.mlp.fuse()
        self.mlp_moe_geo.fuse()


class MoTModel(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(MoTDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.norm_moe_geo = RMSNorm(config.hidden_size, config.rms_norm_eps)


class KVCache:
    """Keys/values of every layer for the tokens seen so far ([..., kv_heads, L, D] each)."""

    def __init__(self, layers: Optional[list[tuple[torch.Tensor, torch.Tensor]]] = None):
        self.layers = layers or []

    def __len__(self) -> int:
        return 0 if not self.layers else int(self.layers[0][0].shape[-2])

    def get(self, index: int) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        return self.layers[index] if self.layers else None


class MoTLanguageModel(nn.Module):
    """The language stack with both experts; `forward_step` runs one prefill/decoding step."""

    def __init__(self, config: TextConfig):
        super().__init__()
        self.config = config
        self.model = MoTModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def fuse_projections(self) -> None:
        """One GEMM for q/k/v and one for gate/up per expert and layer in inference (idempotent;
        call again after a dtype or device conversion; see FusedLinears)."""
        for layer in self.model.layers:
            layer.fuse()

    def forward_step(self, und: Optional[TokenGroup], geo: Optional[TokenGroup], cache: KVCache,
                     causal: bool) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], KVCache]:
        """Runs all layers over new tokens that attend to `cache`; returns final-normed und/geo
        hidden states and the cache extended by the new tokens (und group first, then geo)."""
        new_layers = []
        for index, layer in enumerate(self.model.layers):
            und, geo, kv = layer(und, geo, cache.get(index), causal)
            new_layers.append(kv)
        und_out = self.model.norm(und.hidden) if und is not None else None
        geo_out = self.model.norm_moe_geo(geo.hidden) if geo is not None else None
        return und_out, geo_out, KVCache(new_layers)
