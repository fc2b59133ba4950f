"""The interface every inference backend implements, and the result it returns."""
from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch


class BackendUnavailableError(RuntimeError):
    """A backend cannot be created here (missing weights, package, device or implementation)."""


class InvalidInputError(ValueError):
    """The images handed to a backend violate its contract (count, shape, dtype)."""


@dataclass
class GeometryResult:
    """Geometry for one window of N views, at the backend's working resolution (H, W).

    Tensors stay on the backend's device (a GPU backend's post-processing runs there too).
    Frames: `local_points` are in each camera's optical frame (x right, y down, z forward);
    `world_points` and `camera_to_world` are in the model's world frame. Units are the model's:
    G2VLM is up to scale, so lengths are relative unless `metric` is True.
    """

    depth: torch.Tensor  # [N,H,W] float32, z of local_points; NaN where invalid
    local_points: torch.Tensor  # [N,H,W,3] float32
    world_points: torch.Tensor  # [N,H,W,3] float32
    camera_to_world: torch.Tensor  # [N,4,4] float32
    intrinsics: torch.Tensor  # [N,3,3], for the (H, W) working resolution
    colors: torch.Tensor  # [N,H,W,3] uint8: the input images at the working resolution
    confidence: Optional[torch.Tensor] = None  # [N,H,W] float32 in [0,1]; None: none available
    metric: bool = False
    # where `confidence` comes from: "head" (the checkpoint's confidence head), "head_agreement"
    # (posed local points vs global points, g2vlm_ros.geometry.window_frame) or "none"
    confidence_source: str = "none"
    # [N,D] float32, unit L2 norm: one global descriptor per view for loop closure (mean-pooled DINO patch
    # tokens, see deploy.export.pooled_descriptors); None where the backend cannot provide it (exported graphs,
    # placeholder): the map then falls back to mapping.loop_closure.image_descriptor
    descriptors: Optional[torch.Tensor] = None

    @classmethod
    def from_outputs(cls, outputs: dict[str, torch.Tensor], colors: torch.Tensor,
                     confidence_source: str) -> GeometryResult:
        """From a window's finished outputs (backends.window_post: the world frame is the first view's
        optical frame) and the resized inputs."""
        confidence = outputs.get("confidence")
        return cls(depth=outputs["depth"], local_points=outputs["local_points"],
                   world_points=outputs["world_points"], camera_to_world=outputs["camera_to_world"],
                   intrinsics=outputs["intrinsics"], colors=colors, confidence=confidence,
                   confidence_source=confidence_source if confidence is not None else "none",
                   descriptors=outputs.get("descriptors"))

    @property
    def num_views(self) -> int:
        return int(self.depth.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the working resolution."""
        return int(self.depth.shape[2]), int(self.depth.shape[1])

    def validate(self) -> None:
        """Raises ValueError when the arrays disagree on N, H or W."""
        n, h, w = self.depth.shape
        expected = {
            "local_points": (n, h, w, 3),
            "world_points": (n, h, w, 3),
            "camera_to_world": (n, 4, 4),
            "intrinsics": (n, 3, 3),
            "colors": (n, h, w, 3),
        }
        if self.confidence is not None:
            expected["confidence"] = (n, h, w)
        for name, shape in expected.items():
            actual = tuple(getattr(self, name).shape)
            if actual != shape:
                raise ValueError(f"GeometryResult.{name} has shape {actual}, expected {shape}")
        if self.descriptors is not None:
            self._validate_descriptors(n)

    def _validate_descriptors(self, views: int) -> None:
        shape = tuple(self.descriptors.shape)
        if len(shape) != 2 or shape[0] != views or shape[1] < 1:
            raise ValueError(f"GeometryResult.descriptors has shape {shape}, expected ({views}, D)")
        if self.descriptors.dtype != torch.float32:
            raise ValueError(f"GeometryResult.descriptors is {self.descriptors.dtype}, expected float32")
        norms = torch.linalg.vector_norm(self.descriptors, dim=1)
        if not bool(torch.all(torch.abs(norms - 1.0) <= 1e-3)):
            raise ValueError("GeometryResult.descriptors must have unit L2 norm per view")


class GeometryBackend(abc.ABC):
    """Runs the geometry path on a window of RGB images.

    `run` takes N uint8 RGB images [H_i,W_i,3] (sizes may differ per view) and returns a
    GeometryResult. Implementations are used from one worker thread at a time.
    """

    #: short identifier shown in diagnostics, e.g. "torch", "onnxruntime", "tensorrt"
    name: str = "abstract"
    #: numeric precision of the computation, e.g. "fp32", "bf16"
    precision: str = "fp32"
    #: True only for backends that do not compute real geometry (test fixtures)
    is_placeholder: bool = False

    @abc.abstractmethod
    def run(self, images: Sequence[np.ndarray]) -> GeometryResult:
        ...

    def describe(self) -> str:
        return f"{self.name} ({self.precision})"

    def details(self) -> dict[str, str]:
        """Extra facts for diagnostics (device, engine keys, providers); empty by default."""
        return {}

    def release_caches(self) -> None:  # noqa: B027 - optional hook; backends without caches keep it
        """Drops what is kept per input size (graphs, constants, sessions) to free memory, e.g. after an
        out-of-memory; it is rebuilt when that size comes again."""

    def close(self) -> None:  # noqa: B027 - optional hook; backends without device memory keep it
        """Releases device memory; the backend is unusable afterwards."""


def check_rgb_images(images: Sequence[np.ndarray]) -> None:
    """Raises InvalidInputError unless `images` is a non-empty list of uint8 [H,W,3] arrays."""
    if len(images) == 0:
        raise InvalidInputError("a window needs at least one image")
    for index, image in enumerate(images):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InvalidInputError(
                f"view {index}: expected uint8 RGB [H,W,3], got {image.dtype} {tuple(image.shape)}"
            )
        if image.shape[0] < 2 or image.shape[1] < 2:
            raise InvalidInputError(f"view {index}: image {image.shape[1]}x{image.shape[0]} is too small")
