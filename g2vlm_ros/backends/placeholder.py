"""A geometry-free placeholder backend for exercising the ROS I/O in tests and demos.

It does NOT run G2VLM and its output is not geometry: depth is a function of pixel brightness
(depth = 1 + luminance, in relative units), cameras sit on a line along x, confidence equals the
luminance. Because every output value is predictable from the input image, tests can check that
pixels, headers and frames travel through the node unchanged. It is selected only by the explicit
backend name "placeholder" (formerly "test_pattern", still accepted with a warning), never by "auto",
and the node logs a warning when it is in use.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from g2vlm_ros.backends.backend import GeometryBackend, GeometryResult, check_rgb_images
from g2vlm_ros.backends.registry import PLACEHOLDER_BACKEND
from g2vlm_ros.geometry.pinhole import backproject_depth, intrinsics_from_fov, resize_nearest, transform_points

LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601
CAMERA_SPACING = 0.1  # relative units between consecutive views along world x
HORIZONTAL_FOV_RAD = np.deg2rad(60.0)


class PlaceholderBackend(GeometryBackend):
    """Predictable, image-derived outputs; see the module docstring. Not a model."""

    name = PLACEHOLDER_BACKEND
    precision = "fp32"
    is_placeholder = True

    def __init__(self, downsample: int = 4):
        if downsample < 1:
            raise ValueError("downsample must be >= 1")
        self.downsample = downsample

    def run(self, images: Sequence[np.ndarray]) -> GeometryResult:
        check_rgb_images(images)
        height = max(1, images[0].shape[0] // self.downsample)
        width = max(1, images[0].shape[1] // self.downsample)
        intrinsics = intrinsics_from_fov(width, height, HORIZONTAL_FOV_RAD)
        views = len(images)
        depth = np.empty((views, height, width), np.float32)
        confidence = np.empty_like(depth)
        local = np.empty((views, height, width, 3), np.float32)
        world = np.empty_like(local)
        colors = np.empty((views, height, width, 3), np.uint8)
        poses = np.tile(np.eye(4, dtype=np.float32), (views, 1, 1))
        for index, image in enumerate(images):
            colors[index] = resize_nearest(image, width, height)
            luminance = colors[index].astype(np.float32) @ LUMA_WEIGHTS / 255.0
            depth[index] = 1.0 + luminance
            confidence[index] = luminance
            poses[index, 0, 3] = CAMERA_SPACING * index
            local[index] = backproject_depth(depth[index], intrinsics)
            world[index] = transform_points(poses[index], local[index])
        return GeometryResult(
            depth=torch.from_numpy(depth),
            local_points=torch.from_numpy(local),
            world_points=torch.from_numpy(world),
            camera_to_world=torch.from_numpy(poses),
            intrinsics=torch.from_numpy(np.repeat(intrinsics[None], views, axis=0)),
            colors=torch.from_numpy(colors),
            confidence=torch.from_numpy(confidence),
            metric=False,
        )
