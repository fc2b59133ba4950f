"""Camera images -> model input on the backend's device.

On the CPU this is the official policy exactly (`g2vlm_ros.model.preprocess`, PIL Lanczos). On a
GPU the uint8 frames are uploaded once and resized there with antialiased bicubic interpolation.
On a real 640x480 frame that differs from Lanczos by 0.7 grey levels on average and up to 14 at
sharp edges (test_backends.py bounds it). It saves the host resize and a float upload per frame.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Optional

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


class PinnedStaging:
    """A page-locked host buffer per frame-batch shape, reused across windows: each frame is copied
    into it and goes to the device in an asynchronous copy that overlaps the host's copy of the next
    frame (a pageable upload is staged and synchronous per frame). Before the buffer is refilled, the
    previous copies out of it must be done."""

    def __init__(self):
        self.buffer: Optional[torch.Tensor] = None
        self.copied: Optional[torch.cuda.Event] = None

    def upload(self, images: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
        shape = (len(images), *images[0].shape)
        if self.buffer is None or tuple(self.buffer.shape) != shape:
            self.buffer, self.copied = torch.empty(shape, dtype=torch.uint8, pin_memory=True), None
        if self.copied is not None:
            self.copied.synchronize()
        frames = torch.empty(shape, dtype=torch.uint8, device=device)
        host = self.buffer.numpy()
        for index, image in enumerate(images):
            np.copyto(host[index], image)
            frames[index].copy_(self.buffer[index], non_blocking=True)
        self.copied = torch.cuda.Event()
        self.copied.record(torch.cuda.current_stream(device))
        return frames


_STAGING = threading.local()  # one staging buffer per thread (each backend worker has its own)


def resize_on_device(images: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """The official sizes, resampled by torch on `device` (antialiased bicubic instead of Lanczos).
    Frames of one size (a window) go up in one copy and are resized as one batch."""
    width, height = target_size(images[0].shape[1], images[0].shape[0])
    height, width = height // PATCH_SIZE * PATCH_SIZE, width // PATCH_SIZE * PATCH_SIZE
    if device.type == "cuda" and len({image.shape for image in images}) == 1:
        if not hasattr(_STAGING, "staging"):
            _STAGING.staging = PinnedStaging()
        batches = [_STAGING.staging.upload(images, device)]
    else:
        batches = [torch.from_numpy(np.ascontiguousarray(image))[None].to(device) for image in images]
    resized = [F.interpolate(frames.permute(0, 3, 1, 2).float() / 255.0, (height, width), mode="bicubic",
                             align_corners=False, antialias=True) for frames in batches]
    return (resized[0] if len(resized) == 1 else torch.cat(resized)).clamp_(0.0, 1.0)
