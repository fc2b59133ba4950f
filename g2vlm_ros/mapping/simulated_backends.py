"""Simulated G2VLM backends for the mapping evaluation: exact or noisy window geometry in a random gauge.

G2VLM answers each window in its own frame (the first view's optical frame) and its own unit (up to scale). The
mapping core must not depend on that particular choice, so a simulated window is expressed in a random similarity
gauge on top of it: x_window = s * R @ x_first_view + t, with s log-uniform in [0.3, 3], R uniform and t up to a
few units. "perfect" gives the exact geometry in that gauge (chaining must then be exact up to float rounding);
"noisy" perturbs each view's pose relative to the first view (rotation about a random axis, RMS 1 deg; translation
RMS 2 % of that view's baseline), each pixel's depth (2 % RMS) and replaces a few % of the pixels by outliers
(depth times a factor between e^-1 and e^1), independently in every window, as a model answers every window anew.
Descriptors for loop closure are the map's appearance fallback (loop_closure.image_descriptor) of the rendered
view, what the node uses for a backend that provides none.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from g2vlm_ros.mapping.loop_closure import image_descriptor
from g2vlm_ros.mapping.simulation import SimulatedSequence


@dataclass(frozen=True)
class WindowGeometry:
    """A backend's answer for one window of N views, in the window's frame and unit."""

    camera_to_window: np.ndarray  # [N,4,4] float64, orthonormal rotation, translation in window units
    local_points: np.ndarray  # [N,h,w,3] float32, each camera's optical frame, window units
    colors: np.ndarray  # [N,h,w,3] uint8
    descriptors: np.ndarray  # [N,D] float32 global descriptors (loop closure)
    confidence: Optional[np.ndarray] = None  # [N,h,w] float32 in [0,1]


@dataclass(frozen=True)
class NoiseModel:
    rotation_deg: float = 1.0  # RMS rotation error of each view relative to the window's first view
    translation_fraction: float = 0.02  # RMS translation error relative to that view's baseline
    depth_fraction: float = 0.02  # RMS multiplicative depth error per pixel
    outlier_fraction: float = 0.03  # pixels whose depth is replaced by depth * e^U(-1, 1)


NO_NOISE = NoiseModel(0.0, 0.0, 0.0, 0.0)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform on SO(3) (QR of a Gaussian matrix with the sign fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def axis_angle(vector: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation vector (rad) -> [3,3]."""
    angle = float(np.linalg.norm(vector))
    if angle < 1e-15:
        return np.eye(3)
    k = vector / angle
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + math.sin(angle) * cross + (1.0 - math.cos(angle)) * cross @ cross


class SimulatedBackend:
    """Answers windows of a SimulatedSequence like a geometry model: `run(frame_indices) -> WindowGeometry`."""

    def __init__(self, sequence: SimulatedSequence, noise: NoiseModel = NO_NOISE, seed: int = 0,
                 gauge: bool = True, name: str = "simulated"):
        self.sequence = sequence
        self.noise = noise
        self.gauge = gauge
        self.name = name
        self._rng = np.random.default_rng(seed)
        self._descriptors: dict[int, np.ndarray] = {}

    def run(self, frame_indices: list[int]) -> WindowGeometry:
        rng, noise = self._rng, self.noise
        poses = self.sequence.camera_to_world[frame_indices]
        first_inverse = np.linalg.inv(poses[0])
        relative = np.einsum("ij,njk->nik", first_inverse, poses)  # camera -> first view's optical frame
        for view in range(1, len(relative)):
            if noise.rotation_deg > 0:
                error = rng.normal(0.0, math.radians(noise.rotation_deg) / math.sqrt(3.0), 3)
                relative[view, :3, :3] = axis_angle(error) @ relative[view, :3, :3]
            baseline = float(np.linalg.norm(relative[view, :3, 3]))
            if noise.translation_fraction > 0:
                relative[view, :3, 3] += rng.normal(0.0, noise.translation_fraction * baseline / math.sqrt(3.0), 3)
        points = self.sequence.local_points[frame_indices].astype(np.float64)
        if noise.depth_fraction > 0:
            points *= 1.0 + rng.normal(0.0, noise.depth_fraction, points.shape[:-1])[..., None]
        if noise.outlier_fraction > 0:
            outliers = rng.random(points.shape[:-1]) < noise.outlier_fraction
            points[outliers] *= np.exp(rng.uniform(-1.0, 1.0, int(outliers.sum())))[:, None]
        if self.gauge:
            scale = math.exp(rng.uniform(math.log(0.3), math.log(3.0)))
            rotation, translation = random_rotation(rng), rng.uniform(-3.0, 3.0, 3)
            # x_window = s * R @ x_first + t: poses keep an orthonormal rotation R @ Rc and move to s * R @ tc + t.
            relative[:, :3, :3] = np.einsum("ij,njk->nik", rotation, relative[:, :3, :3])
            relative[:, :3, 3] = scale * relative[:, :3, 3] @ rotation.T + translation
            points *= scale
        return WindowGeometry(camera_to_window=relative, local_points=points.astype(np.float32),
                              colors=self.sequence.colors[frame_indices],
                              descriptors=np.stack([self._descriptor(index) for index in frame_indices]))

    def _descriptor(self, index: int) -> np.ndarray:
        if index not in self._descriptors:
            self._descriptors[index] = image_descriptor(self.sequence.colors[index])
        return self._descriptors[index]


def perfect_backend(sequence: SimulatedSequence, seed: int = 0) -> SimulatedBackend:
    return SimulatedBackend(sequence, NO_NOISE, seed, name="perfect")


def noisy_backend(sequence: SimulatedSequence, seed: int = 0, noise: NoiseModel = NoiseModel()) -> SimulatedBackend:
    return SimulatedBackend(sequence, noise, seed, name="noisy")
