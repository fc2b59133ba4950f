"""The Qwen2-VL vision tower and its preprocessing against the `transformers` implementation (test oracle).

`transformers` is imported only here, never by the package; the tests that need it skip without it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from g2vlm_ros.model.config import G2VLMConfig, VisionConfig
from g2vlm_ros.model.vision import QwenVisionTower
from g2vlm_ros.model.vision_preprocess import smart_resize, vision_inputs

SHARED = Path(__file__).resolve().parents[2] / "shared"
TINY = SHARED / "parity" / "tiny_recon"
FRAMES = SHARED / "data" / "arkitscenes"

# head_dim 16: the 2D rotary splits it into 4 frequencies per axis.
SMALL = VisionConfig(depth=2, embed_dim=64, hidden_size=48, mlp_ratio=2.0, num_heads=4)
PATCH_DIM = 3 * 2 * 14 * 14


def reference_tower(config: VisionConfig):
    """transformers' Qwen2-VL vision model with the same dimensions, fp32, eval mode."""
    pytest.importorskip("transformers")
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

    hf_config = Qwen2VLVisionConfig(
        depth=config.depth, embed_dim=config.embed_dim, hidden_size=config.hidden_size, hidden_act=config.hidden_act,
        mlp_ratio=int(config.mlp_ratio) if float(config.mlp_ratio).is_integer() else config.mlp_ratio,  # 5.x: int
        num_heads=config.num_heads, in_channels=config.in_channels,
        patch_size=config.patch_size, spatial_merge_size=config.spatial_merge_size,
        temporal_patch_size=config.temporal_patch_size)
    hf_config._attn_implementation = "eager"
    return Qwen2VisionTransformerPretrainedModel(hf_config).float().eval()


def reference_output(model, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
    out = model(pixel_values, grid_thw=grid_thw)
    return out.pooler_output if hasattr(out, "pooler_output") else out  # older transformers return the tensor


def random_weights(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial values everywhere (norm weights and biases included), scaled to keep activations O(1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            values = torch.randn(parameter.shape, generator=generator)
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name.endswith("ln_q.weight"):
                parameter.copy_(1 + 0.2 * values)
            elif parameter.ndim == 1:
                parameter.copy_(0.1 * values)
            else:
                parameter.copy_(values / parameter[0].numel() ** 0.5)


def errors(ours: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    abs_err = (ours - reference).abs().max().item()
    return abs_err, abs_err / reference.abs().max().item()


GRIDS = {
    "one image": [[1, 8, 12]],
    "two images": [[1, 6, 10], [1, 4, 4]],
    "clip and image": [[2, 4, 6], [1, 6, 4]],  # t=2: each frame is its own attention segment
}


@pytest.mark.parametrize("grids", GRIDS.values(), ids=GRIDS.keys())
def test_tower_matches_transformers(grids):
    reference = reference_tower(SMALL)
    random_weights(reference, seed=0)
    tower = QwenVisionTower(SMALL).eval()
    assert sorted(tower.state_dict()) == sorted(reference.state_dict())  # the same names: no key mapping
    tower.load_state_dict(reference.state_dict(), strict=True)

    grid_thw = torch.tensor(grids, dtype=torch.int64)
    pixel_values = torch.randn(int(grid_thw.prod(dim=1).sum()), PATCH_DIM, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = tower(pixel_values, grid_thw)
        expected = reference_output(reference, pixel_values, grid_thw)
    assert ours.shape == (pixel_values.shape[0] // 4, SMALL.hidden_size)
    abs_err, rel_err = errors(ours, expected)
    print(f"{grids}: max abs error {abs_err:.2e}, relative to max |output| {rel_err:.2e}")
    assert abs_err < 1e-5 and rel_err < 1e-5


def test_images_do_not_attend_to_each_other():
    tower = QwenVisionTower(SMALL).eval()
    random_weights(tower, seed=2)
    generator = torch.Generator().manual_seed(3)
    a, b = torch.randn(48, PATCH_DIM, generator=generator), torch.randn(16, PATCH_DIM, generator=generator)
    with torch.no_grad():
        joint = tower(torch.cat([a, b]), torch.tensor([[1, 6, 8], [1, 4, 4]]))
        alone = torch.cat([tower(a, torch.tensor([[1, 6, 8]])), tower(b, torch.tensor([[1, 4, 4]]))])
    torch.testing.assert_close(joint, alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_follows_fp32(dtype):
    tower = QwenVisionTower(SMALL).eval()
    random_weights(tower, seed=4)
    grid_thw = torch.tensor([[1, 6, 8]])
    pixel_values = torch.randn(48, PATCH_DIM, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = tower(pixel_values, grid_thw)
        half = tower.to(dtype)(pixel_values, grid_thw)
    assert half.dtype == dtype
    assert errors(half.float(), full)[1] < 5e-2


def test_rejects_inconsistent_grid():
    tower = QwenVisionTower(SMALL)
    with pytest.raises(ValueError):
        tower(torch.zeros(40, PATCH_DIM), torch.tensor([[1, 6, 8]]))


# ------------------------------------------------------------------ preprocessing


def test_smart_resize_examples():
    assert smart_resize(768, 768) == (756, 756)
    assert smart_resize(480, 640) == (476, 644)
    assert smart_resize(2000, 3000) == (812, 1204)  # above max_pixels: shrunk
    assert smart_resize(30, 40) == (56, 84)  # below min_pixels: grown
    with pytest.raises(ValueError):
        smart_resize(20, 100)  # the official processor refuses sides below the factor


def test_smart_resize_matches_transformers():
    pytest.importorskip("transformers")
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as reference

    sides = [28, 29, 41, 42, 55, 97, 224, 480, 518, 640, 768, 1000, 1080, 1920, 4032]
    for height in sides:
        for width in sides:
            if max(height, width) / min(height, width) <= 200:
                assert smart_resize(height, width) == reference(height, width, 28, 56 * 56, 28 * 28 * 1280)


def real_frames(count: int) -> list[np.ndarray]:
    if not FRAMES.is_dir():
        pytest.skip(f"{FRAMES} is absent")
    paths = sorted(FRAMES.glob("*.jpg"))[:count]
    if len(paths) < count:
        pytest.skip(f"fewer than {count} frames in {FRAMES}")
    return [np.asarray(Image.open(path).convert("RGB")) for path in paths]


def reference_processor():
    pytest.importorskip("transformers")
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as Processor
    except ImportError:  # transformers 4.x: the slow processor is the PIL one
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor as Processor
    return Processor(min_pixels=56 * 56, max_pixels=28 * 28 * 1280, patch_size=14, merge_size=2,
                     temporal_patch_size=2)


def test_preprocessing_matches_transformers():
    processor = reference_processor()
    frames = real_frames(2)
    pixel_values, grid_thw = vision_inputs(frames)

    # The official QwenVL2ImageTransform: PIL resize to 768x768 (resample=3, bicubic), then the processor.
    resized = [Image.fromarray(frame).resize((768, 768), 3) for frame in frames]
    expected = processor(images=resized, return_tensors="pt")

    assert grid_thw.dtype == torch.int64 and pixel_values.dtype == torch.float32
    assert grid_thw.tolist() == expected["image_grid_thw"].tolist() == [[1, 54, 54]] * 2
    assert pixel_values.shape == expected["pixel_values"].shape == (2 * 54 * 54, PATCH_DIM)
    max_err = (pixel_values - expected["pixel_values"].float()).abs().max().item()
    print(f"preprocessing max abs error {max_err:.2e}")
    assert max_err < 1e-6


def test_preprocessing_options_and_checks():
    frame = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    pixel_values, grid_thw = vision_inputs([frame], size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert grid_thw.tolist() == [[1, 16, 16]]
    assert pixel_values.shape == (256, PATCH_DIM)
    assert -1.0 <= pixel_values.min() and pixel_values.max() <= 1.0
    frames_of_patch = pixel_values.view(256, 3, 2, 196)
    assert torch.equal(frames_of_patch[:, :, 0], frames_of_patch[:, :, 1])  # a still image is two equal frames
    _, small = vision_inputs([frame], size=224, max_pixels=112 * 112)
    assert small.tolist() == [[1, 8, 8]]
    with pytest.raises(ValueError):
        vision_inputs([frame.astype(np.float32)])
    with pytest.raises(ValueError):
        vision_inputs([frame[..., 0]])


def test_real_frame_through_tower_matches_transformers():
    """End to end on a real frame: our preprocessing + tower vs the oracle tower on the same inputs."""
    config = SMALL
    reference = reference_tower(config)
    random_weights(reference, seed=6)
    tower = QwenVisionTower(config).eval()
    tower.load_state_dict(reference.state_dict(), strict=True)
    pixel_values, grid_thw = vision_inputs(real_frames(1))
    with torch.no_grad():
        ours = tower(pixel_values, grid_thw)
        expected = reference_output(reference, pixel_values, grid_thw)
    assert ours.shape == (54 * 54 // 4, config.hidden_size)
    abs_err, rel_err = errors(ours, expected)
    print(f"real frame: max abs error {abs_err:.2e}, relative {rel_err:.2e}")
    assert abs_err < 1e-5 and rel_err < 1e-5


# ------------------------------------------------------------------ checkpoint


def test_loads_tiny_checkpoint():
    if not (TINY / "model.safetensors").is_file():
        pytest.skip(f"{TINY} is absent")
    from safetensors import safe_open

    prefix = "vit_model."
    with safe_open(str(TINY / "model.safetensors"), framework="pt") as checkpoint:
        state = {key[len(prefix):]: checkpoint.get_tensor(key).float()
                 for key in checkpoint.keys() if key.startswith(prefix)}
    config = G2VLMConfig.from_folder(TINY).vision
    tower = QwenVisionTower(config).eval()
    tower.load_state_dict(state, strict=True)
    assert tower.patch_embed.proj.weight.shape == (config.embed_dim, 3, 2, 14, 14)

    grid_thw = torch.tensor([[1, 4, 6]])
    pixel_values = torch.randn(24, PATCH_DIM, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        out = tower(pixel_values, grid_thw)
    assert out.shape == (6, config.hidden_size) and torch.isfinite(out).all()
