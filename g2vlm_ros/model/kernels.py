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


if triton is not None:

    @triton.jit
    def _silu_mul_kernel(packed, out, columns, stride_row, BLOCK: tl.constexpr):
        """Program (row, column block): out = silu(gate) * up for packed rows [gate | up]; rounded
        where F.silu(gate) * up rounds (after the SiLU, after the product)."""
        row, block = tl.program_id(0), tl.program_id(1)
        cols = block * BLOCK + tl.arange(0, BLOCK)
        ok = cols < columns
        base = packed + row.to(tl.int64) * stride_row
        gate = tl.load(base + cols, mask=ok, other=0.0)
        up = tl.load(base + columns + cols, mask=ok, other=0.0)
        g = gate.to(tl.float32)
        silu = (g / (1.0 + tl.exp(-g))).to(gate.dtype).to(tl.float32)
        tl.store(out + row.to(tl.int64) * columns + cols, (silu * up.to(tl.float32)).to(gate.dtype), mask=ok)

    @triton.jit
    def _decode_attention_split(q, keys, values, slot_ptr, part_out, part_max, part_sum, capacity, split_size,
                                scale, GROUP: tl.constexpr, ROWS: tl.constexpr, DIM: tl.constexpr,
                                BLOCK_N: tl.constexpr, IEEE: tl.constexpr):
        """Program (kv head, split): the GROUP query heads of one key/value head over the cache
        slots [split * split_size, ...) up to and including `slot` (read from memory), as an
        online softmax; writes the unnormalised output, running maximum and sum per query head."""
        kv_head, split = tl.program_id(0), tl.program_id(1)
        length = tl.load(slot_ptr).to(tl.int32) + 1
        start = split * split_size
        end = tl.minimum(start + split_size, length)
        rows, dims = tl.arange(0, ROWS), tl.arange(0, DIM)
        row_ok = rows < GROUP
        query = tl.load(q + (kv_head * GROUP + rows)[:, None] * DIM + dims[None, :], mask=row_ok[:, None], other=0.0)
        maximum = tl.full([ROWS], float("-inf"), tl.float32)
        total = tl.zeros([ROWS], tl.float32)
        acc = tl.zeros([ROWS, DIM], tl.float32)
        head_base = kv_head.to(tl.int64) * capacity * DIM
        for block_start in range(start, end, BLOCK_N):
            cols = block_start + tl.arange(0, BLOCK_N)
            col_ok = cols < end
            offsets = head_base + cols[:, None] * DIM + dims[None, :]
            key = tl.load(keys + offsets, mask=col_ok[:, None], other=0.0)
            if IEEE:
                scores = tl.dot(query, tl.trans(key), input_precision="ieee")
            else:
                scores = tl.dot(query, tl.trans(key))
            scores = tl.where(col_ok[None, :], scores * scale, float("-inf"))
            new_max = tl.maximum(maximum, tl.max(scores, axis=1))
            alpha = tl.exp(maximum - new_max)
            weights = tl.exp(scores - new_max[:, None])
            value = tl.load(values + offsets, mask=col_ok[:, None], other=0.0)
            if IEEE:
                acc = acc * alpha[:, None] + tl.dot(weights, value, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(weights.to(value.dtype), value)
            total = total * alpha + tl.sum(weights, axis=1)
            maximum = new_max
        part = (kv_head * tl.num_programs(1) + split) * GROUP + rows
        tl.store(part_out + part[:, None] * DIM + dims[None, :], acc, mask=row_ok[:, None])
        tl.store(part_max + part, maximum, mask=row_ok)
        tl.store(part_sum + part, total, mask=row_ok)

    @triton.jit
    def _decode_attention_combine(part_out, part_max, part_sum, out, splits, GROUP: tl.constexpr,
                                  SPLITS: tl.constexpr, DIM: tl.constexpr):
        """Program (query head): the splits' partial results merged into its output row."""
        head = tl.program_id(0)
        kv_head, row = head // GROUP, head % GROUP
        index, dims = tl.arange(0, SPLITS), tl.arange(0, DIM)
        ok = index < splits
        part = (kv_head * splits + index) * GROUP + row
        maxima = tl.load(part_max + part, mask=ok, other=float("-inf"))
        largest = tl.max(maxima, axis=0)  # split 0 always holds slot 0: finite
        weights = tl.where(ok, tl.exp(maxima - largest), 0.0)
        total = tl.sum(weights * tl.load(part_sum + part, mask=ok, other=0.0), axis=0)
        acc = tl.load(part_out + part[:, None] * DIM + dims[None, :], mask=ok[:, None], other=0.0)
        result = tl.sum(acc * weights[:, None], axis=0) / total
        tl.store(out + head * DIM + dims, result.to(out.dtype.element_ty))


if triton is not None:

    @triton.jit
    def _add_rms_norm_kernel(hidden, delta, weight, normed, width, eps, BLOCK: tl.constexpr):
        """One row: hidden += delta (rounded as the unfused add), then normed = RMSNorm(hidden) *
        weight in fp32, rounded once (as F.rms_norm)."""
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        ok = cols < width
        base = row.to(tl.int64) * width
        x = tl.load(hidden + base + cols, mask=ok, other=0.0)
        summed = (x.to(tl.float32) + tl.load(delta + base + cols, mask=ok, other=0.0).to(tl.float32)).to(x.dtype)
        tl.store(hidden + base + cols, summed, mask=ok)
        value = summed.to(tl.float32)
        inverse = tl.rsqrt(tl.sum(value * value, axis=0) / width + eps)
        w = tl.load(weight + cols, mask=ok, other=0.0).to(tl.float32)
        tl.store(normed + base + cols, (value * inverse * w).to(x.dtype), mask=ok)


def add_rms_norm(hidden: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """hidden += delta in place (the residual stream), and returns RMSNorm(hidden) * weight: one
    kernel instead of an add and a norm, for the few rows of a decode step (rows contiguous)."""
    if not (hidden.is_contiguous() and delta.is_contiguous()) or hidden.shape != delta.shape:
        raise ValueError("hidden and delta must be contiguous and of one shape")
    width = hidden.shape[-1]
    normed = torch.empty_like(hidden)
    _add_rms_norm_kernel[(hidden.numel() // width,)](hidden, delta, weight, normed, width, eps,
                                                     BLOCK=triton.next_power_of_2(width))
    return normed


def silu_mul(packed: torch.Tensor) -> torch.Tensor:
    """packed [..., 2I] = [gate | up] (rows contiguous) -> silu(gate) * up [..., I] in one pass."""
    columns = packed.shape[-1] // 2
    if packed.stride(-1) != 1 or packed.shape[-1] % 2:
        raise ValueError("packed must hold [gate | up] rows with unit column stride")
    rows = packed.reshape(-1, packed.shape[-1])
    out = packed.new_empty(*packed.shape[:-1], columns)
    if rows.shape[0]:
        block = 1024
        _silu_mul_kernel[(rows.shape[0], triton.cdiv(columns, block))](rows, out, columns, rows.stride(0),
                                                                     BLOCK=block)
    return out


def decode_attention_available(x: torch.Tensor, head_dim: int) -> bool:
    """True when `decode_attention` can run for tensors like `x` (its tiles need a power-of-two head_dim)."""
    return available(x) and head_dim >= 16 and head_dim & (head_dim - 1) == 0


DECODE_BLOCK = 64  # cache slots per inner step of the decode attention
DECODE_MAX_SPLITS = 64


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, slot: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """One query token's attention over a static cache: q [H, 1, D], keys/values [KV, capacity, D],
    slot a one-element device tensor (the query's own slot: slots 0..slot are attended, later ones
    are not). Returns [H, D] in q's dtype. Split over the cache (flash-decoding: partial softmax
    per split, then one merge), so a few thousand slots spread over the GPU; computed in fp32
    (bf16/fp16 products are exact in fp32; fp32 inputs use IEEE products, no TF32)."""
    heads, dim = q.shape[0], q.shape[-1]
    kv_heads, capacity = keys.shape[0], keys.shape[1]
    group = heads // kv_heads
    if not (q.is_contiguous() and keys.is_contiguous() and values.is_contiguous()) or heads % kv_heads:
        raise ValueError("q, keys and values must be contiguous with heads a multiple of kv_heads")
    split_size = DECODE_BLOCK * triton.cdiv(capacity, DECODE_BLOCK * DECODE_MAX_SPLITS)
    splits = triton.cdiv(capacity, split_size)
    part_out = torch.empty(kv_heads, splits, group, dim, device=q.device, dtype=torch.float32)
    part_max = torch.empty(kv_heads, splits, group, device=q.device, dtype=torch.float32)
    part_sum = torch.empty_like(part_max)
    _decode_attention_split[(kv_heads, splits)](
        q, keys, values, slot, part_out, part_max, part_sum, capacity, split_size, scale, GROUP=group,
        ROWS=max(16, triton.next_power_of_2(group)), DIM=dim, BLOCK_N=DECODE_BLOCK,
        IEEE=q.dtype == torch.float32)
    out = q.new_empty(heads, dim)
    _decode_attention_combine[(heads,)](part_out, part_max, part_sum, out, splits, GROUP=group,
                                        SPLITS=triton.next_power_of_2(splits), DIM=dim)
    return out
