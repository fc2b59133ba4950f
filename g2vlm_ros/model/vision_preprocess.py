"""Image preprocessing for the Qwen2-VL vision tower (G2VLM's semantic path).

Reproduces the official `QwenVL2ImageTransform(768, 768, 14)`: every image is first resized to
`size` x `size` with PIL bicubic (aspect ratio is not kept), then goes through the Qwen2-VL image
processor:

1. `smart_resize` picks the nearest height and width that are multiples of patch_size * merge_size
   (28) with the pixel count inside [min_pixels, max_pixels]; when that differs from the input
   (768 -> 756, so always with the default size) the image is resized again with PIL bicubic;
2. rescale by 1/255 (in float64, then float32), normalise with the OpenAI CLIP mean/std (float32);
3. the single frame is repeated `temporal_patch_size` times and cut into flat patches
   [C * temporal_patch_size * 14 * 14], ordered so that each 2x2 block of neighbouring patches is
   4 consecutive rows (the order the tower's patch merger expects).

Assumed settings, Qwen2-VL's standard processor configuration: patch_size 14, merge_size 2,
temporal_patch_size 2, min_pixels 56*56, max_pixels 28*28*1280, rescale 1/255, OPENAI_CLIP_MEAN/STD,
bicubic resampling. The official code reads the processor configuration from the released
checkpoint (`preprocessor_config.json` of InternRobotics/G2VLM-2B-MoT); when that file is present
in the checkpoint folder its min_pixels, max_pixels, image_mean and image_std override these, and
a caller passes them as the keyword arguments of `vision_inputs`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 1280
RESCALE_FACTOR = 1 / 255
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SEMANTIC_IMAGE_SIZE = 768  # QwenVL2ImageTransform(768, 768, 14) in the official loader


def smart_resize(height: int, width: int, factor: int = PATCH_SIZE * MERGE_SIZE, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(height, width) rounded to multiples of `factor`, rescaled into [min_pixels, max_pixels] keeping aspect."""
    if height < factor or width < factor:
        raise ValueError(f"image {height}x{width} is smaller than the factor {factor}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio of {height}x{width} is above 200")
    new_h, new_w = round(height / factor) * factor, round(width / factor) * factor
    if new_h * new_w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        new_h, new_w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif new_h * new_w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        new_h, new_w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return new_h, new_w


def _patchify(chw: np.ndarray) -> np.ndarray:
    """[C, H, W] float32 -> [H/14 * W/14, C * T * 14 * 14], rows in 2x2 merge-block order."""
    c, h, w = chw.shape
    p, m, t = PATCH_SIZE, MERGE_SIZE, TEMPORAL_PATCH_SIZE
    blocks = chw.reshape(c, h // (p * m), m, p, w // (p * m), m, p)
    # -> (block row, block col, row in block, col in block, C, py, px)
    blocks = blocks.transpose(1, 4, 2, 5, 0, 3, 6)
    # A still image is a clip of `t` identical frames; the frame axis sits between C and the pixels.
    frames = np.broadcast_to(blocks[:, :, :, :, :, None], (*blocks.shape[:5], t, p, p))
    return frames.reshape((h // p) * (w // p), c * t * p * p)


def vision_inputs(images: Sequence[np.ndarray], size: int = SEMANTIC_IMAGE_SIZE, *,
                  min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
                  mean: Sequence[float] = OPENAI_CLIP_MEAN,
                  std: Sequence[float] = OPENAI_CLIP_STD) -> tuple[torch.Tensor, torch.Tensor]:
    """Tower inputs for a list of HxWx3 uint8 RGB images.

    Returns pixel_values float32 [sum of patches, 3 * 2 * 14 * 14] (images concatenated in order)
    and grid_thw int64 [num_images, 3], one (1, h/14, w/14) row per image.
    """
    mean32 = np.asarray(mean, dtype=np.float32)
    std32 = np.asarray(std, dtype=np.float32)
    rows, grids = [], []
    for index, image in enumerate(images):
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image {index}: expected HxWx3 uint8 RGB, got {image.dtype} {image.shape}")
        pil = Image.fromarray(image).resize((size, size), resample=Image.Resampling.BICUBIC)
        height, width = smart_resize(size, size, min_pixels=min_pixels, max_pixels=max_pixels)
        if (height, width) != (size, size):
            pil = pil.resize((width, height), resample=Image.Resampling.BICUBIC)
        # Rescale in float64 before dropping to float32, then normalise in float32, as the official
        # processor does, so the values are bit-identical to it.
        pixels = (np.asarray(pil).astype(np.float64) * RESCALE_FACTOR).astype(np.float32)
        pixels = (pixels - mean32) / std32
        rows.append(_patchify(np.ascontiguousarray(pixels.transpose(2, 0, 1))))
        grids.append((1, height // PATCH_SIZE, width // PATCH_SIZE))
    if not rows:
        raise ValueError("no images")
    pixel_values = torch.from_numpy(np.concatenate(rows, axis=0))
    return pixel_values, torch.tensor(grids, dtype=torch.int64)
