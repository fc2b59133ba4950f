"""The part every model backend shares: frames -> device batch -> network -> post-processing."""
from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np
import torch

from g2vlm_ros.model.g2vlm import Reconstruction
from g2vlm_ros.runtime.backend import GeometryBackend, GeometryResult, check_rgb_images
from g2vlm_ros.runtime.preprocess import prepare_images


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
            reconstruction = Reconstruction.from_raw(self.raw_outputs(batch))
        return GeometryResult.from_reconstruction(reconstruction, colors)
