"""The Triton kernels of g2vlm_ros.model.kernels against the PyTorch code they replace, on fresh
random inputs (slots past the query poisoned with NaN). Runs only where CUDA is available."""
import pytest
import torch
import torch.nn.functional as F

from g2vlm_ros.model import kernels

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and kernels.triton is not None),
                                reason="needs CUDA and Triton")


def test_silu_mul() -> None:
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for rows, columns in ((1, 8960), (7, 300), (4144, 8960)):
            packed = torch.randn(rows, 2 * columns, device="cuda", dtype=dtype) * 3
            gate, up = packed.split(columns, dim=-1)
            reference = F.silu(gate) * up
            ours = kernels.silu_mul(packed)
            differ = (ours != reference).float().mean().item()
            error = ((ours.double() - reference.double()).abs().max() / reference.double().abs().max()).item()
            print(f"silu_mul {dtype} {rows}x{columns}: elements differing {differ:.2e}, max rel error {error:.2e}")
            assert error < (1e-6 if dtype == torch.float32 else 1e-2)


def test_decode_attention() -> None:
    for dtype in (torch.bfloat16, torch.float32):
        for heads, kv_heads, dim, capacity, slot in ((12, 2, 128, 2048, 1849), (12, 2, 128, 2048, 0),
                                                     (12, 2, 128, 256, 255), (4, 2, 64, 4096, 3000),
                                                     (16, 16, 32, 512, 100)):
            q = torch.randn(heads, 1, dim, device="cuda", dtype=dtype)
            keys = torch.randn(kv_heads, capacity, dim, device="cuda", dtype=dtype)
            values = torch.randn(kv_heads, capacity, dim, device="cuda", dtype=dtype)
            keys[:, slot + 1:] = float("nan")  # slots past the query must never be read into the result
            values[:, slot + 1:] = float("nan")
            slot_tensor = torch.tensor([slot], device="cuda")
            scale = dim ** -0.5
            group = heads // kv_heads
            k64, v64 = keys[:, :slot + 1].double(), values[:, :slot + 1].double()
            folded = q.double().reshape(kv_heads, group, dim)
            reference = torch.softmax(folded @ k64.transpose(1, 2) * scale, -1) @ v64
            reference = reference.reshape(heads, dim)
            ours = kernels.decode_attention(q, keys, values, slot_tensor, scale)
            assert torch.isfinite(ours).all()
            error = ((ours.double() - reference).abs().max() / reference.abs().max()).item()
            print(f"decode_attention {dtype} H{heads} KV{kv_heads} D{dim} cap {capacity} slot {slot}: "
                  f"max rel error {error:.2e}")
            assert error < (1e-5 if dtype == torch.float32 else 2e-2)


def test_add_rms_norm() -> None:
    for dtype in (torch.bfloat16, torch.float32):
        hidden = torch.randn(1, 1536, device="cuda", dtype=dtype)
        delta = torch.randn(1, 1536, device="cuda", dtype=dtype)
        weight = torch.randn(1536, device="cuda", dtype=dtype)
        summed = hidden + delta
        reference = F.rms_norm(summed, (1536,), weight, 1e-6)
        ours = kernels.add_rms_norm(hidden, delta, weight, 1e-6)
        assert torch.equal(hidden, summed)
        error = ((ours.double() - reference.double()).abs().max() / reference.double().abs().max()).item()
        differ = (ours != reference).float().mean().item()
        print(f"add_rms_norm {dtype}: elements differing {differ:.2e}, max rel error {error:.2e}")
        assert error < (1e-5 if dtype == torch.float32 else 1e-2)

