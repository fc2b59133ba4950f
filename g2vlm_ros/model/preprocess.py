"""The official input policy of the geometry path.

Every view is resized (PIL Lanczos) to 518 pixels wide; the height follows the FIRST view's
aspect ratio, rounded to the nearest multiple of 14, so all views share one size. Values go to
[0, 1]; a final bilinear (antialiased) resize snaps both sides down to multiples of 14, which is
the identity when they already are. A 640x480 camera gives 518x392 (37x28 patches). The ResNet
mean/std normalisation for DINO happens inside the model, so these tensors stay displayable.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from g2vlm_ros.model.config import DINO_INPUT_WIDTH, PATCH_SIZE

RESNET_MEAN = (0.485, 0.456, 0.406)
RESNET_STD = (0.229, 0.224, 0.225)


def target_size(width: int, height: int, target_width: int = DINO_INPUT_WIDTH) -> tuple[int, int]:
    """(width, height) the official policy resizes a width x height image to."""
    return target_width, int(round(height * (target_width / width) / PATCH_SIZE)) * PATCH_SIZE


def preprocess(images: Sequence[np.ndarray], target_width: int = DINO_INPUT_WIDTH) -> torch.Tensor:
    """HxWx3 uint8 RGB arrays -> float32 tensor [N,3,H,W] in [0,1], H and W multiples of 14."""
    if len(images) == 0:
        raise ValueError("preprocess needs at least one image")
    for index, image in enumerate(images):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image {index}: expected uint8 RGB [H,W,3], got {image.dtype} {image.shape}")
    width, height = target_size(images[0].shape[1], images[0].shape[0], target_width)
    if height < PATCH_SIZE:
        raise ValueError(f"image aspect ratio too wide: height would be {height} px")
    tensors = []
    for image in images:
        resized = Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS)
        tensors.append(torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1))
    batch = torch.stack(tensors)
    snapped = (height // PATCH_SIZE * PATCH_SIZE, width // PATCH_SIZE * PATCH_SIZE)
    return F.interpolate(batch, snapped, mode="bilinear", align_corners=False, antialias=True)


def resnet_statistics(device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """ResNet mean and std as [3,1,1] tensors."""
    return (torch.tensor(RESNET_MEAN, dtype=dtype, device=device)[:, None, None],
            torch.tensor(RESNET_STD, dtype=dtype, device=device)[:, None, None])


def normalize_for_dino(images: torch.Tensor,
                       statistics: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """(images - mean) / std; pass precomputed `statistics` where no host-to-device copy may happen
    (CUDA graph capture)."""
    mean, std = statistics or resnet_statistics(images.device, images.dtype)
    return (images - mean) / std
