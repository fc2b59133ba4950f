"""Camera images -> model input on the backend's device.

On the CPU this is the official policy exactly (`g2vlm_ros.model.preprocess`, PIL Lanczos). On a
GPU the uint8 frames are uploaded once and resized there with antialiased bicubic interpolation.
On a real 640x480 frame that differs from Lanczos by 0.7 grey levels on average and up to 14 at
sharp edges (test_backends.py bounds it). It saves the host resize and a float upload per frame.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from g2vlm_ros.model.config import PATCH_SIZE
from g2vlm_ros.model.preprocess import preprocess as official_preprocess
from g2vlm_ros.model.preprocess import target_size


def prepare_images(images: Sequence[np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB uint8 frames -> (model input [N,3,H,W] float32 in [0,1], colours [N,H,W,3] uint8), on `device`."""
    batch = official_preprocess(images) if device.type == "cpu" else resize_on_device(images, device)
    colors = (batch * 255.0).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return batch, colors


def resize_on_device(images: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """The official sizes, resampled by torch on `device` (antialiased bicubic instead of Lanczos)."""
    width, height = target_size(images[0].shape[1], images[0].shape[0])
    height, width = height // PATCH_SIZE * PATCH_SIZE, width // PATCH_SIZE * PATCH_SIZE
    resized = []
    for image in images:
        writable = image if image.flags.writeable and image.flags.c_contiguous else np.array(image, order="C")
        frame = torch.from_numpy(writable).to(device, non_blocking=True)
        frame = frame.permute(2, 0, 1)[None].float() / 255.0
        resized.append(F.interpolate(frame, (height, width), mode="bicubic", align_corners=False, antialias=True))
    return torch.cat(resized).clamp_(0.0, 1.0)
