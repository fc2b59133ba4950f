"""A window's raw network outputs -> the geometry a GeometryResult holds, split where it must touch the host.

Two steps are 3x3 and 4x4 linear algebra: the rotation nearest to each raw pose (an SVD) and the inverse
of the first camera's pose, which anchors the window to that camera. They take microseconds on the host
and milliseconds of solver launches and device syncs on a GPU, so they run on the host in float64
(`host_poses`). Everything after them (world points, depth, intrinsics, the anchoring, the head-agreement
confidence) needs only those poses and never waits for the device (`finish_window`).

`eager_post` runs `finish_window` as it is. `CapturedPost` captures it once per input size as a CUDA
graph that reads the network graph's static outputs: a few dozen small kernels, each of which costs a
launch on the host while the GPU waits, become one replay, and its outputs come back as one copy.
Both run the same functions, so they give the same numbers.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from g2vlm_ros.deploy.export import DESCRIPTOR_OUTPUT
from g2vlm_ros.geometry.window_frame import anchor_to_first_camera, head_agreement_confidence
from g2vlm_ros.model.g2vlm import Reconstruction

Outputs = dict[str, torch.Tensor]
NORMALIZE_EPS = 1e-12  # as torch.nn.functional.normalize in heads.orthonormalize


def host_poses(rotation_raw: torch.Tensor, translation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw pose outputs [N,3,3], [N,3] (any device) -> camera-to-world [N,4,4] and the first camera's
    world-to-camera [1,4,4], float32 on the host. The rotation is `heads.orthonormalize` (rows normalised,
    then the nearest rotation by SVD) and the inverse that of the float32 pose, both in float64
    (test_window_post compares them). In numpy because this runs between two graph replays while the GPU
    waits: 27-46 us for 1-8 views against 115-164 us with orthonormalize and torch's inverse (one CPU thread)."""
    rows = rotation_raw.detach().cpu().numpy().astype(np.float64)
    rows /= np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), NORMALIZE_EPS)
    u, _, vh = np.linalg.svd(np.swapaxes(rows, -1, -2))
    v = np.swapaxes(vh, -1, -2)
    v[..., 2] *= np.linalg.det(v @ np.swapaxes(u, -1, -2))[..., None]  # a proper rotation: det +1
    poses = np.zeros((rows.shape[0], 4, 4))
    poses[:, :3, :3] = v @ np.swapaxes(u, -1, -2)
    poses[:, :3, 3] = translation.detach().cpu().numpy()
    poses[:, 3, 3] = 1.0
    poses = poses.astype(np.float32)
    first_inverse = np.linalg.inv(poses[:1].astype(np.float64)).astype(np.float32)
    return torch.from_numpy(poses), torch.from_numpy(first_inverse)


def confidence_source(raw: Outputs) -> str:
    """Where `finish_window`'s confidence comes from (GeometryResult.confidence_source)."""
    return "head" if raw.get("conf") is not None else "head_agreement"


def finish_window(raw: Outputs, camera_poses: torch.Tensor, first_inverse: torch.Tensor) -> Outputs:
    """The device part: raw outputs and the host's poses (on the raw outputs' device) -> depth, local_points,
    world_points and camera_to_world (in the first camera's frame), intrinsics, and confidence and descriptors
    where available. No step waits for the device: a CUDA graph can capture it."""
    reconstruction = Reconstruction.from_raw_and_poses(raw, camera_poses)
    camera_to_world, world_points = anchor_to_first_camera(camera_poses, reconstruction.points, first_inverse)
    confidence = reconstruction.confidence
    if confidence is None:
        confidence = head_agreement_confidence(world_points, reconstruction.global_points, reconstruction.depth)
    outputs = {"depth": reconstruction.depth, "local_points": reconstruction.local_points,
               "world_points": world_points, "camera_to_world": camera_to_world,
               "intrinsics": reconstruction.intrinsics, "confidence": confidence,
               "descriptors": raw.get(DESCRIPTOR_OUTPUT)}
    return {name: tensor for name, tensor in outputs.items() if tensor is not None}


def eager_post(raw: Outputs) -> Outputs:
    """Host poses, then `finish_window` launched op by op (CPU devices, CUDA graphs off, exported graphs)."""
    poses, first_inverse = host_poses(raw["rotation_raw"], raw["translation"])
    device = raw["local_points"].device
    return finish_window(raw, poses.to(device), first_inverse.to(device))


class CapturedPost:
    """`finish_window` captured as a CUDA graph over fixed raw-output buffers (a network graph's static
    outputs, which must stay alive as long as this object). Each call solves the poses on the host, uploads
    them into the graph's pose buffers, replays it and returns a copy of its outputs (the next replay
    overwrites them), all views of one buffer."""

    def __init__(self, raw: Outputs, device: torch.device):
        self.raw = raw
        views = raw["rotation_raw"].shape[0]
        # poses go device -> host -> device through page-locked buffers: one wait for the raw pose, none after.
        # Refilling them is safe: the wait of the next call comes after this call's uploads in the stream.
        self._rotation_host = torch.empty(views, 3, 3, pin_memory=True)
        self._translation_host = torch.empty(views, 3, pin_memory=True)
        self._poses_host = torch.empty(views + 1, 4, 4, pin_memory=True)
        self._poses = torch.eye(4, device=device).repeat(views + 1, 1, 1)  # identity until the first window
        self._copied = torch.cuda.Event()
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.no_grad():  # lazy initialisation outside the capture
            finish_window(raw, self._poses[1:], self._poses[:1])
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            outputs = finish_window(raw, self._poses[1:], self._poses[:1])
            self._layout = [(name, tuple(tensor.shape), tensor.numel()) for name, tensor in outputs.items()]
            self._flat = torch.cat([tensor.float().reshape(-1) for tensor in outputs.values()])

    def __call__(self, raw: Optional[Outputs] = None) -> Outputs:
        """raw: the buffers given at construction, filled by the network graph's replay (the default)."""
        if raw is not None and raw is not self.raw:
            raise ValueError("CapturedPost reads the buffers it was captured with")
        self._rotation_host.copy_(self.raw["rotation_raw"], non_blocking=True)
        self._translation_host.copy_(self.raw["translation"], non_blocking=True)
        self._copied.record()
        self._copied.synchronize()
        poses, first_inverse = host_poses(self._rotation_host, self._translation_host)
        self._poses_host[0], self._poses_host[1:] = first_inverse[0], poses
        self._poses.copy_(self._poses_host, non_blocking=True)
        self.graph.replay()
        flat, outputs, offset = self._flat.clone(), {}, 0
        for name, shape, count in self._layout:
            outputs[name] = flat[offset:offset + count].view(shape)
            offset += count
        return outputs
