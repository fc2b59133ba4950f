"""The part every model backend shares: frames -> device batch -> network -> post-processing."""
from __future__ import annotations

import abc
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from g2vlm_ros.backends.backend import GeometryBackend, GeometryResult, check_rgb_images
from g2vlm_ros.backends.preprocess import prepare_images
from g2vlm_ros.backends.window_post import confidence_source, eager_post


class BucketCache:
    """What a backend builds per input size (bucket), least recently used first out.

    Bounded because every bucket holds size-dependent constants (positional tables, CUDA graph
    buffers, runtime sessions): windows of changing size, such as those an out-of-memory shrinks
    one keyframe at a time, would otherwise keep them all."""

    def __init__(self, capacity: int = 4):
        self.capacity = capacity
        self._items: OrderedDict = OrderedDict()

    def get(self, bucket):
        item = self._items.get(bucket)
        if item is not None:
            self._items.move_to_end(bucket)
        return item

    def put(self, bucket, item) -> None:
        self._items[bucket] = item
        self._items.move_to_end(bucket)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class NetworkBackend(GeometryBackend):
    """A backend whose network maps a preprocessed batch to the geometry heads' raw outputs
    (see `G2VLM.decode_geometry_raw`); `run` adds preprocessing and post-processing around it,
    both on `input_device`."""

    input_device: torch.device = torch.device("cpu")

    @abc.abstractmethod
    def raw_outputs(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """batch [N,3,H,W] float32 in [0,1] on `input_device` -> raw outputs by name."""

    def run(self, images: Sequence[np.ndarray]) -> GeometryResult:
        check_rgb_images(images)
        batch, colors = prepare_images(images, self.input_device)
        with torch.no_grad():
            raw = self.raw_outputs(batch)
            outputs = eager_post(raw)
        return GeometryResult.from_outputs(outputs, colors, confidence_source(raw))
