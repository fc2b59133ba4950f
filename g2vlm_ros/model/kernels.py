"""Fused GPU kernels (Triton) for the language stack's element-wise work, with exact fallbacks.

`qkv_norm_rope` replaces, per expert and layer, the split of the fused QKV projection, the
per-head q/k RMSNorm, the rotary embedding (with its fp32 up- and down-casts) and the
concatenation of the token groups and the cached prefix: one kernel reads the projection rows and
writes q, k and v straight into their slices of the attention's input buffers. It rounds where the
unfused bf16/fp16 path rounds (after the weighted normalisation, after the rotation), so it
computes the same function as the PyTorch code it replaces.

Only used on CUDA when Triton is importable; the CPU path (and the parity tests) keep the PyTorch
code in `mot.py`.
"""
from __future__ import annotations

from typing import Union

import torch

try:  # Triton ships with CUDA builds of PyTorch; CPU-only installs go without
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None


def available(x: torch.Tensor) -> bool:
    """True when the fused kernels can run on tensors like `x`."""
    return triton is not None and x.is_cuda and x.dtype in (torch.float32, torch.float16, torch.bfloat16)


if triton is not None:

    @triton.jit
    def _qkv_norm_rope_kernel(qkv, q_out, k_out, v_out, q_weight, k_weight, cos, sin,
                              length, q_heads, kv_heads, q_offset, kv_offset, kv_offset_ptr,
                              stride_row, stride_q_head, stride_kv_head, stride_table,
                              eps, HALF: tl.constexpr, BLOCK_L: tl.constexpr, OFFSET_IN_MEMORY: tl.constexpr):
        """Program (token block, head): head < q_heads is a query head, then kv_heads key heads,
        then kv_heads value heads; rows [block*BLOCK_L, ...) of the projection output. With
        OFFSET_IN_MEMORY the cache offset is read from kv_offset_ptr (a decode step in a CUDA
        graph, whose slot advances on the device)."""
        block, head = tl.program_id(0), tl.program_id(1)
        if OFFSET_IN_MEMORY:
            kv_offset = tl.load(kv_offset_ptr).to(tl.int32)
        rows = block * BLOCK_L + tl.arange(0, BLOCK_L)
        cols = tl.arange(0, HALF)
        row_ok = rows < length
        mask = row_ok[:, None]
        base = qkv + rows[:, None] * stride_row + head * (2 * HALF)
        first = tl.load(base + cols[None, :], mask=mask, other=0.0)
        second = tl.load(base + HALF + cols[None, :], mask=mask, other=0.0)
        out_dtype = first.dtype
        if head >= q_heads + kv_heads:  # value head: a plain copy into the cache layout
            dest = v_out + (head - q_heads - kv_heads) * stride_kv_head + (kv_offset + rows)[:, None] * (2 * HALF)
            tl.store(dest + cols[None, :], first, mask=mask)
            tl.store(dest + HALF + cols[None, :], second, mask=mask)
        else:
            if head < q_heads:
                w_a, w_b = tl.load(q_weight + cols), tl.load(q_weight + HALF + cols)
                dest = q_out + head * stride_q_head + (q_offset + rows)[:, None] * (2 * HALF)
            else:
                w_a, w_b = tl.load(k_weight + cols), tl.load(k_weight + HALF + cols)
                dest = k_out + (head - q_heads) * stride_kv_head + (kv_offset + rows)[:, None] * (2 * HALF)
            a, b = first.to(tl.float32), second.to(tl.float32)
            inverse = tl.rsqrt((tl.sum(a * a, axis=1) + tl.sum(b * b, axis=1)) / (2 * HALF) + eps)
            # as the unfused path (F.rms_norm): normalise and weight in fp32, round once; the
            # rotation then reads the rounded values in fp32 and rounds its result
            a = (a * inverse[:, None] * w_a.to(tl.float32)[None, :]).to(out_dtype).to(tl.float32)
            b = (b * inverse[:, None] * w_b.to(tl.float32)[None, :]).to(out_dtype).to(tl.float32)
            table = rows[:, None] * stride_table + cols[None, :]
            cos_a, cos_b = tl.load(cos + table, mask=mask, other=0.0), tl.load(cos + table + HALF, mask=mask, other=0.0)
            sin_a, sin_b = tl.load(sin + table, mask=mask, other=0.0), tl.load(sin + table + HALF, mask=mask, other=0.0)
            rotated_a = (a * cos_a - b * sin_a).to(out_dtype)
            rotated_b = (b * cos_b + a * sin_b).to(out_dtype)
            tl.store(dest + cols[None, :], rotated_a, mask=mask)
            tl.store(dest + HALF + cols[None, :], rotated_b, mask=mask)


def qkv_norm_rope(qkv: torch.Tensor, q_out: torch.Tensor, k_out: torch.Tensor, v_out: torch.Tensor,
                  q_weight: torch.Tensor, k_weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  q_offset: int, kv_offset: Union[int, torch.Tensor], eps: float) -> None:
    """qkv [L, (H + 2 KV) * D] (one expert's fused projection, rows contiguous) -> rows
    [q_offset, q_offset + L) of q_out [H, Lq, D] and rows [kv_offset, kv_offset + L) of
    k_out / v_out [KV, Lk, D], with q/k RMSNorm (weights [D]) and rotary cos/sin [L, D] (fp32).
    kv_offset may be a one-element integer tensor on the device, read by the kernel."""
    length = qkv.shape[0]
    heads, kv_heads, dim = q_out.shape[0], k_out.shape[0], q_out.shape[-1]
    for name, tensor in (("q_out", q_out), ("k_out", k_out), ("v_out", v_out)):
        if not tensor.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    if qkv.stride(-1) != 1 or qkv.shape[-1] != (heads + 2 * kv_heads) * dim or dim % 2:
        raise ValueError(f"qkv {tuple(qkv.shape)} does not match {heads} + 2 x {kv_heads} heads of {dim}")
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    block_l = 16
    grid = (triton.cdiv(length, block_l), heads + 2 * kv_heads)
    in_memory = isinstance(kv_offset, torch.Tensor)
    _qkv_norm_rope_kernel[grid](qkv, q_out, k_out, v_out, q_weight, k_weight, cos, sin,
                                length, heads, kv_heads, q_offset, 0 if in_memory else kv_offset,
                                kv_offset if in_memory else qkv, qkv.stride(0), q_out.stride(0), k_out.stride(0),
                                cos.stride(0), eps, HALF=dim // 2, BLOCK_L=block_l, OFFSET_IN_MEMORY=in_memory)
