"""The embedded demo model on a rendered walk, for the mapping evaluation (slow on a CPU: keep the walk short).

The walk is one procedural room of g2vlm_ros.training.scenes, rendered with textures and lights like the demo
model's training data: the room's camera path played forwards, then backwards (the camera keeps looking the way
it walked first, so it walks backwards), then forwards again (a revisit). It becomes a SimulatedSequence (true
poses, exact local points from the rendered depth) with the images kept for the model. Torch is imported only here.
"""
from __future__ import annotations

import numpy as np

from g2vlm_ros.mapping.loop_closure import image_descriptor
from g2vlm_ros.mapping.simulated_backends import WindowGeometry
from g2vlm_ros.mapping.simulation import SimulatedSequence, WalkSettings
from g2vlm_ros.playback.frames import SYNTHETIC_SEED

MAP_PIXELS = (48, 64)  # (h, w) of the points handed to the map, as in the simulated walk


def render_demo_walk(views: int = 8, passes: int = 3, seed: int = SYNTHETIC_SEED, height: int = 384,
                     width: int = 512) -> tuple[SimulatedSequence, np.ndarray]:
    """-> the walk (modes "forward" / "backward") and its images [F,H,W,3] uint8."""
    import torch

    from g2vlm_ros.training.scene_render import render
    from g2vlm_ros.training.scenes import sample_scene

    if views < 2 or passes < 1:
        raise ValueError(f"a demo walk needs at least 2 views and 1 pass, got {views} views, {passes} passes")
    scene = render([sample_scene(seed, 0, views)], views, height, width, torch.device("cpu"))
    images = (scene.images[0].permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    depth = scene.depth[0].numpy()
    intrinsics = scene.intrinsics[0, 0].numpy().astype(np.float64)
    order, modes = [0], ["forward"]
    for walk in range(passes):
        steps = range(1, views) if walk % 2 == 0 else range(views - 2, -1, -1)
        order += list(steps)
        modes += ["forward" if walk % 2 == 0 else "backward"] * len(steps)
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    rays = np.stack([(u - intrinsics[0, 2]) / intrinsics[0, 0], (v - intrinsics[1, 2]) / intrinsics[1, 1],
                     np.ones_like(u)], axis=-1)
    local_points = (rays[None] * depth[..., None]).astype(np.float32)
    poses = scene.camera_to_world[0].numpy().astype(np.float64)[order]
    settings = WalkSettings(width=width, height=height, seed=seed)
    walked = float(np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1).sum())
    sequence = SimulatedSequence(
        settings=settings, camera_to_world=poses, local_points=local_points[order], colors=images[order],
        intrinsics=intrinsics, stamps_ns=np.arange(1, len(order) + 1, dtype=np.int64) * settings.frame_period_ns,
        modes=modes, distance_walked_m=walked)
    return sequence, images[order]


class DemoModelBackend:
    """The embedded demo model (torch backend, CPU) answering windows of a rendered walk."""

    name = "demo"

    def __init__(self, images: np.ndarray, device: str = "cpu"):
        from g2vlm_ros.backends.registry import BackendRequest, create_backend

        self.images = images
        self.backend = create_backend(BackendRequest(backend="torch", device=device))
        self.calls = 0

    def run(self, frame_indices: list[int]) -> WindowGeometry:
        result = self.backend.run([self.images[index] for index in frame_indices])
        self.calls += 1
        height, width = result.local_points.shape[1:3]
        rows = np.linspace(0, height - 1, MAP_PIXELS[0]).round().astype(int)
        cols = np.linspace(0, width - 1, MAP_PIXELS[1]).round().astype(int)
        grid = np.ix_(rows, cols)
        points = result.local_points.float().cpu().numpy()[:, grid[0], grid[1]]
        colors = result.colors.cpu().numpy()[:, grid[0], grid[1]]
        confidence = None
        if result.confidence is not None:
            confidence = result.confidence.float().cpu().numpy()[:, grid[0], grid[1]]
        poses = result.camera_to_world.double().cpu().numpy()
        if result.descriptors is not None:  # the model's own (pooled DINO tokens), as the node hands them over
            descriptors = result.descriptors.float().cpu().numpy()
        else:
            descriptors = np.stack([image_descriptor(self.images[index]) for index in frame_indices])
        return WindowGeometry(camera_to_window=poses, local_points=points.astype(np.float32),
                              colors=colors.astype(np.uint8), confidence=confidence, descriptors=descriptors)
