"""The inference fusions (one GEMM for q/k/v and gate/up, GQA without copies, the fused q/k norm
and rotary kernel) compute what the unfused model computes, and keep the checkpoint layout."""
import json
import math

import numpy as np
import pytest
import torch

from conftest import SHARED
from g2vlm_ros.model import G2VLM, kernels, load_checkpoint, save_checkpoint, tiny_config
from g2vlm_ros.model.checkpoint import randomize
from g2vlm_ros.model.mot import MoTAttention, RMSNorm, TokenGroup, grouped_attention
from g2vlm_ros.model.rope import apply_rope, mrope_cos_sin

TINY_LM = SHARED / "parity" / "tiny_lm"
SPECIAL = {"bos_token_id": 1, "eos_token_id": 2, "start_of_image": 3, "end_of_image": 4}
CUDA_TRITON = pytest.mark.skipif(not (torch.cuda.is_available() and kernels.triton is not None),
                                 reason="needs CUDA and Triton")


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours.double() - reference.double()).abs().max() / reference.double().abs().max())


@pytest.mark.skipif(not TINY_LM.is_dir(), reason="../shared/parity is not present")
def test_fused_model_reproduces_the_official_outputs_where_the_language_model_matters():
    spec, reference = json.loads((TINY_LM / "fixture.json").read_text()), np.load(TINY_LM / "recon_outputs.npz")
    model = load_checkpoint(TINY_LM, device="cpu", dtype=torch.float32).fuse_projections()
    attention = model.language_model.model.layers[0].self_attn
    assert attention._fused("_moe_geo") is not None and model.language_model.model.layers[0].mlp.fused.usable()
    out = model.reconstruct(torch.from_numpy(reference["images"][0]), prefix_token_ids=spec["prompt_token_ids"],
                            special_token_ids=spec["special_token_ids"])
    for key in ("local_points", "points", "global_points", "camera_poses"):
        error = relative_error(out[key], torch.from_numpy(reference[key][0]))
        assert error < 1e-5, f"{key}: relative error {error:.2e}"


def test_fusing_keeps_the_checkpoint_layout_and_conversions_fall_back_to_separate_layers(tmp_path):
    model = randomize(G2VLM(tiny_config(num_heads=2, num_kv_heads=1)), seed=1).eval()
    images = torch.rand(2, 3, 28, 42, generator=torch.Generator().manual_seed(0))
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    reference = model.reconstruct(images, [5, 6], SPECIAL)
    model.fuse_projections()
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[name], before[name]) for name in before)
    fused = model.language_model.model.layers[1].self_attn.fused[""]
    assert fused.weight.shape == (2 * 128 + 2 * 128, model.config.text.hidden_size) and fused.intact()
    torch.testing.assert_close(model.reconstruct(images, [5, 6], SPECIAL)["points"], reference["points"],
                               rtol=1e-5, atol=1e-6)
    # loaded back from disk, the fused model's checkpoint is the unfused one's
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "saved"))
    assert all(torch.equal(loaded.state_dict()[name], before[name]) for name in before)
    # a conversion gives every parameter new storage: the fused weights are stale and not used
    model.double()
    attention = model.language_model.model.layers[1].self_attn
    with torch.no_grad():
        assert not fused.intact() and attention._fused("") is None
    torch.testing.assert_close(model.reconstruct(images.double(), [5, 6], SPECIAL)["points"].float(),
                               reference["points"], rtol=1e-4, atol=1e-5)
    model.fuse_projections()
    with torch.no_grad():
        assert attention._fused("") is not None


def test_training_uses_the_separate_parameters_so_gradients_reach_them():
    model = randomize(G2VLM(tiny_config(num_heads=2, num_kv_heads=1)), seed=2).fuse_projections()
    layer = model.language_model.model.layers[0]
    assert not layer.self_attn.fused[""].usable()  # grad mode with trainable weights
    cache = model.prefix_cache([5], SPECIAL)
    tokens, _, _ = model.encode_geometry_tokens(torch.rand(1, 3, 28, 28), cache, SPECIAL)
    tokens.square().mean().backward()
    for linear in (layer.self_attn.k_proj_moe_geo, layer.mlp_moe_geo.up_proj):
        assert linear.weight.grad is not None and linear.weight.grad.abs().sum() > 0
    # an optimizer step on the Parameters reaches the fused weight they are views of
    with torch.no_grad():
        layer.mlp_moe_geo.up_proj.weight.add_(1.0)
    fused = layer.mlp_moe_geo.fused
    torch.testing.assert_close(fused.weight[fused.sizes[0]:], layer.mlp_moe_geo.up_proj.weight)


@pytest.mark.parametrize("causal", [False, True])
def test_grouped_attention_without_copies_equals_repeated_key_value_heads(causal):
    q, k, v = torch.randn(6, 5, 16), torch.randn(2, 9, 16), torch.randn(2, 9, 16)
    out = grouped_attention(q, k, v, causal)
    mask = torch.ones(5, 9, dtype=torch.bool).tril(diagonal=4) if causal else None
    reference = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(3, dim=0), v.repeat_interleave(3, dim=0), attn_mask=mask)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)
    weights = torch.softmax(q[4] @ k[1].T / math.sqrt(16) + (0 if mask is None else (~mask) * -1e9), dim=-1)
    torch.testing.assert_close(out[4], weights @ v[1], rtol=1e-5, atol=1e-6)  # head 4 reads KV head 1


@CUDA_TRITON
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_qkv_norm_rope_kernel_matches_the_pytorch_code(dtype):
    torch.manual_seed(0)
    heads, kv_heads, dim, length, cached = 12, 2, 128, 301, 9
    packed = torch.randn(length, (heads + 2 * kv_heads) * dim, device="cuda").to(dtype)
    q_norm, k_norm = RMSNorm(dim, 1e-6).cuda().to(dtype), RMSNorm(dim, 1e-6).cuda().to(dtype)
    with torch.no_grad():
        q_norm.weight.uniform_(0.5, 1.5)
        k_norm.weight.uniform_(0.5, 1.5)
    positions = torch.stack((torch.arange(length) + 3, torch.arange(length) % 23 + 3, torch.arange(length) // 23 + 3))
    cos, sin = mrope_cos_sin(positions.cuda(), dim, 1e6)
    q_out = torch.full((heads, length + 4, dim), float("nan"), device="cuda", dtype=dtype)
    k_out = torch.full((kv_heads, cached + length, dim), float("nan"), device="cuda", dtype=dtype)
    v_out = torch.full_like(k_out, float("nan"))
    kernels.qkv_norm_rope(packed, q_out, k_out, v_out, q_norm.weight, k_norm.weight, cos, sin, 4, cached, 1e-6)
    q, k, v = packed.split((heads * dim, kv_heads * dim, kv_heads * dim), dim=-1)
    q, k, v = (t.view(length, -1, dim).transpose(0, 1) for t in (q, k, v))
    with torch.no_grad():
        expected_q = apply_rope(q_norm(q).float(), cos, sin).to(dtype)
        expected_k = apply_rope(k_norm(k).float(), cos, sin).to(dtype)
    bound = 1e-6 if dtype == torch.float32 else 4e-3  # bf16: the fp32 rotation may round differently
    assert relative_error(q_out[:, 4:], expected_q) < bound and relative_error(k_out[:, cached:], expected_k) < bound
    assert torch.equal(v_out[:, cached:], v)
    assert torch.isnan(q_out[:, :4]).all() and torch.isnan(k_out[:, :cached]).all()  # nothing else written


@CUDA_TRITON
def test_attention_with_the_fused_kernel_equals_the_pytorch_path_on_cuda():
    from g2vlm_ros.model.config import TextConfig

    config = TextConfig(vocab_size=10, hidden_size=512, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2)
    attention = MoTAttention(config).cuda().eval()
    attention.fuse()
    cos, sin = mrope_cos_sin(torch.arange(3, 40, device="cuda").expand(3, -1), 128, 1e6)
    und = TokenGroup(torch.randn(5, 512, device="cuda"), cos[:5], sin[:5])
    geo = TokenGroup(torch.randn(32, 512, device="cuda"), cos[5:], sin[5:])
    past = (torch.randn(2, 3, 128, device="cuda"), torch.randn(2, 3, 128, device="cuda"))
    with torch.no_grad():
        fused = attention(und, geo, past, causal=False)
        available = kernels.available
        kernels.available = lambda x: False
        try:
            reference = attention(und, geo, past, causal=False)
        finally:
            kernels.available = available
    for ours, theirs in ((fused[0], reference[0]), (fused[1], reference[1]), *zip(fused[2], reference[2], strict=True)):
        assert relative_error(ours, theirs) < 1e-5

