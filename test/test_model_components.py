"""Unit tests per model component: shapes, masks, token layout, rotary, heads, intrinsics solver."""
import math

import numpy as np
import pytest
import torch

from g2vlm_ros.geometry.intrinsics import solve_intrinsics
from g2vlm_ros.model import G2VLM, tiny_config
from g2vlm_ros.model.config import ConfigError, DinoConfig, TextConfig
from g2vlm_ros.model.dino import Attention, DinoEncoder
from g2vlm_ros.model.g2vlm import ImageBlockLayout
from g2vlm_ros.model.heads import PixelHead, orthonormalize
from g2vlm_ros.model.mot import KVCache, MoTAttention, MoTLanguageModel, TokenGroup
from g2vlm_ros.model.preprocess import preprocess, target_size
from g2vlm_ros.model.rope import RoPE2D, mrope_cos_sin, patch_grid_positions

torch.manual_seed(0)


def test_config_refuses_architectures_the_official_code_cannot_run():
    with pytest.raises(ConfigError, match="head_dim 64"):
        TextConfig(hidden_size=128, num_attention_heads=2).validate()
    with pytest.raises(ConfigError, match="multiple of num_key_value_heads"):
        TextConfig(hidden_size=384, num_attention_heads=3, num_key_value_heads=2).validate()
    with pytest.raises(ConfigError, match="SwiGLU"):
        DinoConfig(use_swiglu_ffn=True).validate()


def test_image_block_layout_matches_the_official_position_rule():
    # 2 views of a 2x3 grid after a 6-token prompt: start marker, patches from start+1 with
    # (t, h, w) = base + (0, row, col), end marker at base + max(grid_h, grid_w)
    layout = ImageBlockLayout.build(first_position=6, views=2, grid_h=2, grid_w=3)
    assert layout.positions_und.tolist() == [[6, 10, 11, 15]] * 3
    assert layout.positions_geo[:, :6].tolist() == [[7] * 6, [7, 7, 7, 8, 8, 8], [7, 8, 9, 7, 8, 9]]
    assert layout.positions_geo[:, 6:].tolist() == [[12] * 6, [12, 12, 12, 13, 13, 13], [12, 13, 14, 12, 13, 14]]
    assert layout.next_position == 16


def test_mrope_reduces_to_1d_rope_for_text_and_splits_sections_by_axis():
    text = torch.arange(5).expand(3, -1)
    cos, _ = mrope_cos_sin(text, 128, 10000.0)
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, 128, 2).float() / 128)
    expected = torch.cat([torch.outer(torch.arange(5).float(), inv_freq)] * 2, dim=-1).cos()
    torch.testing.assert_close(cos, expected)
    # only the height position differs: only the height channels (16..39 in each half) change
    a, _ = mrope_cos_sin(torch.tensor([[3], [3], [3]]), 128, 10000.0)
    b, _ = mrope_cos_sin(torch.tensor([[3], [9], [3]]), 128, 10000.0)
    changed = (a != b)[0].nonzero().flatten().tolist()
    assert set(changed) <= set(range(16, 40)) | set(range(80, 104)) and changed


def test_2d_rope_rotates_rows_with_the_row_and_columns_with_the_column():
    rope = RoPE2D(100.0)
    tokens = torch.randn(1, 2, 6, 8)
    positions = patch_grid_positions(1, 2, 3)
    assert positions[0].tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    rotated = rope(tokens, positions)
    torch.testing.assert_close(rotated[:, :, 0], tokens[:, :, 0])  # position (0, 0): identity
    torch.testing.assert_close(rotated[:, :, 1, :4], tokens[:, :, 1, :4])  # row 0: first half untouched
    assert not torch.allclose(rotated[:, :, 1, 4:], tokens[:, :, 1, 4:])
    torch.testing.assert_close(rotated.norm(dim=-1), tokens.norm(dim=-1))  # rotations keep norms


def test_dino_attention_segments_straddle_views_and_trailing_rows_get_no_context():
    config = DinoConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    attention = Attention(config)
    patches, views, extra = 6, 2, 5  # P patches + CLS + 4 registers per view
    flat = torch.randn(views * (patches + extra), 16)
    out = attention(flat, segment_length=patches, segments=views)
    # rows past views*P get zero context: the output is the dense layer's bias
    torch.testing.assert_close(out[views * patches:], attention.output.dense.bias.expand(views * extra, -1))
    # segment 0 = flat rows 0..5: changing row 7 (segment 1) leaves it alone, changes rows 6..11
    changed = flat.clone()
    changed[7] += 1.0
    out2 = attention(changed, segment_length=patches, segments=views)
    torch.testing.assert_close(out2[:patches], out[:patches])
    assert not torch.allclose(out2[patches:2 * patches], out[patches:2 * patches])


def test_dino_encoder_output_shape_and_cross_view_leak_of_the_official_segmentation():
    encoder = DinoEncoder(DinoConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2))
    images = torch.randn(2, 3, 42, 56)  # 3x4 = 12 patches per view, 17 tokens with CLS and registers
    tokens = encoder(images)
    assert tokens.shape == (2, 12, 16)
    other = images.clone()
    other[1] += 1.0
    changed = encoder(other)
    # flat rows 0..11 (segment 0) hold view 0's CLS, registers and patches 0..6: untouched by view 1
    torch.testing.assert_close(changed[0, :7], tokens[0, :7])
    # rows 12..23 (segment 1) hold view 0's patches 7..11 and view 1's first tokens: they see view 1
    assert not torch.allclose(changed[0, 7:], tokens[0, 7:])


def test_position_embeddings_are_resampled_to_the_patch_grid():
    encoder = DinoEncoder(DinoConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=56))
    table = encoder.embeddings.patch_position_embeddings(4, 4)
    assert table is encoder.embeddings.position_embeddings  # 4x4 grid = the table: unchanged
    assert encoder.embeddings.patch_position_embeddings(2, 3).shape == (1, 7, 16)


def test_grouped_kv_attention_equals_per_head_reference():
    config = TextConfig(vocab_size=10, hidden_size=512, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2)
    attention = MoTAttention(config)
    hidden = torch.randn(5, 512)
    cos, sin = mrope_cos_sin(torch.arange(5).expand(3, -1), 128, 1e6)
    out, _, (keys, values) = attention(TokenGroup(hidden, cos, sin), None, None, causal=False)
    q, k, v = attention._project(hidden, cos, sin, "")
    assert keys.shape == (2, 5, 128)
    heads = []
    for head in range(4):
        kv = head // 2  # query heads 0,1 share KV head 0; 2,3 share KV head 1
        weights = torch.softmax(q[head] @ k[kv].T / math.sqrt(128), dim=-1)
        heads.append(weights @ v[kv])
    torch.testing.assert_close(out, attention.o_proj(torch.cat(heads, dim=-1)), rtol=1e-5, atol=1e-6)


def test_kv_cache_steps_equal_one_causal_pass():
    config = tiny_config(num_heads=2, num_kv_heads=1).text
    model = MoTLanguageModel(config).eval()
    embeddings = torch.randn(7, config.hidden_size)

    def group(start, stop):
        cos, sin = mrope_cos_sin(torch.arange(start, stop).expand(3, -1), 128, config.rope_theta)
        return TokenGroup(embeddings[start:stop], cos, sin)

    with torch.no_grad():
        whole, _, _ = model.forward_step(group(0, 7), None, KVCache(), causal=True)
        first, _, cache = model.forward_step(group(0, 4), None, KVCache(), causal=True)
        second, _, cache = model.forward_step(group(4, 6), None, cache, causal=True)
        third, _, cache = model.forward_step(group(6, 7), None, cache, causal=True)
    torch.testing.assert_close(torch.cat((first, second, third)), whole, rtol=1e-5, atol=1e-5)
    assert len(cache) == 7


def test_non_causal_block_is_invariant_to_token_order():
    """The MoT grouping (markers first, then patches) relies on this."""
    config = tiny_config().text
    model = MoTLanguageModel(config).eval()
    hidden = torch.randn(6, config.hidden_size)
    cos, sin = mrope_cos_sin(torch.randint(0, 20, (3, 6)), 128, config.rope_theta)
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        _, out, _ = model.forward_step(None, TokenGroup(hidden, cos, sin), KVCache(), causal=False)
        _, shuffled, _ = model.forward_step(None, TokenGroup(hidden[order], cos[order], sin[order]), KVCache(),
                                            causal=False)
    torch.testing.assert_close(shuffled, out[order], rtol=1e-5, atol=1e-5)


def test_orthonormalize_gives_rotations_and_keeps_rotations():
    matrices = torch.randn(16, 3, 3)
    rotations = orthonormalize(matrices)
    identity = torch.eye(3).expand(16, -1, -1)
    torch.testing.assert_close(rotations @ rotations.transpose(1, 2), identity, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.det(rotations), torch.ones(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(orthonormalize(rotations), rotations, atol=1e-5, rtol=0)


def test_pixel_head_puts_each_token_tile_at_its_patch():
    head = PixelHead(in_dim=2, patch_size=2, channels=1)
    with torch.no_grad():
        head.proj.weight.zero_()
        head.proj.bias.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))  # tile [[0, 1], [2, 3]]
        head.proj.weight[:, 0] = 10.0  # plus 10 x the token's first feature
    tokens = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]])  # a 1x2 patch grid
    out = head(tokens, height=2, width=4)[0, ..., 0]
    assert out.tolist() == [[0, 1, 10, 11], [2, 3, 12, 13]]


def pinhole_points(fx, fy, cx, cy, height, width, depth=2.0):
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    z = depth + 0.1 * np.sin(u) * np.cos(v)  # not a plane
    return torch.from_numpy(np.stack(((u - cx) / fx * z, (v - cy) / fy * z, z), axis=-1)[None])


def test_intrinsics_solver_recovers_a_known_pinhole_camera():
    points = pinhole_points(500.0, 480.0, 9.5, 7.5, 16, 20)
    k = solve_intrinsics(points)[0].numpy()
    np.testing.assert_allclose(k, [[500, 0, 9.5], [0, 480, 7.5], [0, 0, 1]], rtol=1e-9)
    off_centre = pinhole_points(300.0, 310.0, 12.0, 5.0, 16, 20)
    k = solve_intrinsics(off_centre, principal_point="solve")[0].numpy()
    np.testing.assert_allclose(k, [[300, 0, 12], [0, 310, 5], [0, 0, 1]], rtol=1e-9)


def test_intrinsics_solver_ignores_invalid_pixels_and_refuses_empty_maps():
    points = pinhole_points(400.0, 400.0, 9.5, 7.5, 16, 20).clone()
    points[0, :4, :4] = float("nan")
    points[0, 10, 10, 2] = -1.0  # behind the camera
    np.testing.assert_allclose(solve_intrinsics(points)[0, 0, 0].item(), 400.0, rtol=1e-9)
    empty = torch.full((1, 4, 4, 3), float("nan"))
    assert torch.isnan(solve_intrinsics(empty)).all()
    weights = torch.zeros(1, 16, 20)
    weights[0, 8, 2:] = 1.0
    np.testing.assert_allclose(solve_intrinsics(points, weights)[0, 0, 0].item(), 400.0, rtol=1e-9)


def test_preprocess_follows_the_official_size_policy():
    assert target_size(640, 480) == (518, 392)
    assert target_size(1920, 1080) == (518, 294)
    frames = [np.zeros((480, 640, 3), np.uint8), np.full((240, 320, 3), 255, np.uint8)]
    images = preprocess(frames)
    assert images.shape == (2, 3, 392, 518) and images.dtype == torch.float32
    assert images[0].max() == 0 and images[1].min() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        preprocess([np.zeros((4, 4), np.uint8)])


@pytest.mark.parametrize("views", [1, 2, 3, 4])
def test_reconstruct_shapes_for_one_to_four_views(views):
    model = G2VLM(tiny_config(num_heads=2, num_kv_heads=1)).eval()
    torch.nn.init.normal_(model.dino2llm.weight, std=0.02)
    images = torch.rand(views, 3, 56, 70)
    out = model.reconstruct(images, prefix_token_ids=[10, 11],
                            special_token_ids={"bos_token_id": 1, "eos_token_id": 2, "start_of_image": 3,
                                               "end_of_image": 4})
    for key in ("local_points", "points", "global_points"):
        assert out[key].shape == (views, 56, 70, 3) and torch.isfinite(out[key]).all()
    assert out["camera_poses"].shape == (views, 4, 4) and out["depth"].shape == (views, 56, 70)
    assert out["intrinsics"].shape == (views, 3, 3)
    assert (out["depth"] > 0).all()  # z = exp(.)
    rotation, translation = out["camera_poses"][:, :3, :3], out["camera_poses"][:, None, None, :3, 3]
    expected = torch.einsum("nij,nhwj->nhwi", rotation, out["local_points"]) + translation
    torch.testing.assert_close(out["points"], expected)


def test_a_batch_of_scenes_equals_each_scene_run_alone():
    """Training runs B scenes in one pass ([B,N,3,H,W]); nothing may leak between them (DINO
    segmentation, shared attention, first-view cross attention)."""
    model = G2VLM(tiny_config(num_heads=2, num_kv_heads=1)).eval()
    for parameter in model.parameters():  # non-trivial weights everywhere, dino2llm included
        torch.nn.init.normal_(parameter, std=0.05) if parameter.ndim > 1 else None
    special = {"bos_token_id": 1, "eos_token_id": 2, "start_of_image": 3, "end_of_image": 4}
    scenes = torch.rand(3, 2, 3, 42, 56)
    with torch.no_grad():
        cache = model.prefix_cache([10, 11], special)
        tokens, _, _ = model.encode_geometry_tokens(scenes, cache, special)
        batched = model.decode_geometry_raw(tokens, 42, 56)
        for index in range(3):
            alone_tokens, _, _ = model.encode_geometry_tokens(scenes[index], cache, special)
            alone = model.decode_geometry_raw(alone_tokens, 42, 56)
            for key, value in alone.items():
                # batched and single GEMMs round differently, and exp(z) turns that into absolute errors that grow
                # with the output's size (local points reach 1e5 with random weights): tolerate rounding relative to
                # each output's scale; a leak between scenes would change values by their own size
                scale = float(value.abs().max())
                torch.testing.assert_close(batched[key][index], value, rtol=1e-4, atol=1e-5 * max(scale, 1.0))


def test_orthonormalize_gradient_is_exact_and_stays_finite_near_rotations():
    from g2vlm_ros.model.heads import _SpecialPolar

    generator = torch.Generator().manual_seed(3)
    # well-conditioned matrices (distinct singular values, both determinant signs): finite differences agree
    matrices = torch.randn(4, 3, 3, generator=generator, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(_SpecialPolar.apply, (matrices,))
    # at rotations all singular values are 1: autograd through the SVD gives NaN for some of 64
    # (and errors of 1e-2 at 1e-4 from them); the polar derivative stays finite and exact
    rotations = orthonormalize(torch.randn(64, 3, 3, generator=generator)).detach()
    target = orthonormalize(torch.randn(64, 3, 3, generator=generator))
    gradients = []
    for dtype in (torch.float32, torch.float64):
        rotation = rotations.to(dtype).clone().requires_grad_()
        (orthonormalize(rotation) - target.to(dtype)).pow(2).sum().backward()
        gradients.append(rotation.grad)
    assert torch.isfinite(gradients[0]).all()
    torch.testing.assert_close(gradients[0], gradients[1].float(), atol=1e-4, rtol=1e-4)


def test_the_heads_stay_in_fp32_under_a_training_autocast():
    """Training runs the network under bf16 autocast. The heads must not: bf16's spacing at the camera
    positions a model predicts (15-24 units from its origin) is 1/16-1/8 unit, coarser than many steps between
    views, so the pose losses would read those steps as zero (a huge direction gradient) or reversed."""
    model = G2VLM(tiny_config(num_heads=2, num_kv_heads=1)).eval()
    special = {"bos_token_id": 1, "eos_token_id": 2, "start_of_image": 3, "end_of_image": 4}
    with torch.no_grad():
        tokens, _, _ = model.encode_geometry_tokens(torch.rand(2, 3, 42, 56), model.prefix_cache([10, 11], special),
                                                    special)
        model.camera_head.fc_t.bias.fill_(20.0)  # cameras far from the origin, as the trained models place them
        exact = model.decode_geometry_raw(tokens, 42, 56)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model.decode_geometry_raw(tokens, 42, 56)
    assert {key: value.dtype for key, value in mixed.items()} == {key: torch.float32 for key in exact}
    step, mixed_step = (raw["translation"][1] - raw["translation"][0] for raw in (exact, mixed))
    # the decoders still run in bf16 (their rounding stays), but the step is not quantised to 1/8 unit steps
    assert 0 < (mixed_step - step).norm() < 0.25 * step.norm()
