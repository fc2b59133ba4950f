"""From a backend's GeometryResult to what the outputs carry: scaled, masked, resampled arrays (no ROS types).

Per camera, for its newest frame in the window: depth at the source image's size (metres with a metric
scale, map units without; invalid pixels NaN as REP 118 asks), the confidence map, the model's intrinsics
scaled to the source image and the camera's pose. Per window: every view's pose, the first camera's views in
time order and one point cloud of every view (strided, confidence-filtered, voxel-downsampled). With a
Placement (the window's place in the persistent map), poses and the cloud are in the map frame and lengths in
map units; depth images stay in each camera's frame.
Heavy work stays on the result's device (the GPU for GPU backends); only final arrays move to the host.
When a metric scale source has no scale for a window, `withhold_geometry` drops poses and points: they are
never published in unknown units.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from g2vlm_ros.geometry.pinhole import resize_nearest, scale_intrinsics
from g2vlm_ros.pipeline.frame import Frame, newest_per_camera

if TYPE_CHECKING:  # torch is imported where results are processed: a node without a torch backend starts faster
    from g2vlm_ros.backends.backend import GeometryResult
    from g2vlm_ros.mapping.world_map import Placement


@dataclass(frozen=True)
class OutputPolicy:
    metres_per_unit: Optional[float]  # None: no metric scale, outputs stay relative
    cloud_stride: int = 1
    confidence_threshold: float = 0.0
    voxel_size: float = 0.0  # 0: no downsampling
    withhold_geometry: bool = False  # a metric source without a scale for this window


@dataclass
class CameraOutput:
    index: int  # the view in the window
    frame: Frame
    depth: np.ndarray  # [H,W] float32 at the source image's size; NaN where invalid
    confidence: Optional[np.ndarray]  # [H,W] float32 in [0,1], or None for checkpoints without one
    model_intrinsics: np.ndarray  # [3,3] the model's K scaled to the source image (when the camera has none)
    camera_to_world: np.ndarray  # [4,4] float64, scaled; in the map frame when the window was placed


@dataclass
class Cloud:
    points: np.ndarray  # [M,3] float32, map frame (window frame when not placed), scaled
    colors: np.ndarray  # [M,3] uint8
    confidence: Optional[np.ndarray]  # [M] float32


@dataclass
class WindowOutputs:
    frames: list[Frame]
    cameras: list[CameraOutput]  # each camera's newest frame
    camera_to_world: np.ndarray  # [N,4,4] float64, scaled, every view
    path: list[int]  # the first camera's views in time order
    cloud: Optional[Cloud]  # None when geometry is withheld
    metric: bool  # depth and translations in metres
    withhold_geometry: bool
    placement: Optional[Placement] = None  # the window's place in the map; None: not mapped

    @property
    def newest_stamp_ns(self) -> int:
        return max(self.frames[camera.index].stamp_ns for camera in self.cameras)


def window_outputs(frames: list[Frame], result: GeometryResult, policy: OutputPolicy, first_camera: str,
                   placement: Optional[Placement] = None) -> WindowOutputs:
    """`placement` (of the window as scaled by the policy) puts poses and cloud into the map frame, lengths in
    map units."""
    scale = policy.metres_per_unit or 1.0
    poses = result.camera_to_world.detach().double().cpu().numpy()
    poses[:, :3, 3] *= scale
    window_to_map = None
    if placement is not None:
        poses = np.asarray(placement.camera_to_map, np.float64)
        window_to_map = np.asarray(placement.window_to_map.matrix(), np.float64)
        scale *= float(placement.window_to_map.scale)  # lengths of this window in map units (depth)
    cameras = [_camera_output(frames[index], index, result, scale, poses[index])
               for index in newest_per_camera(frames).values()]
    path = sorted((i for i, frame in enumerate(frames) if frame.camera == first_camera),
                  key=lambda i: frames[i].stamp_ns)
    cloud = None if policy.withhold_geometry else window_cloud(result, policy.metres_per_unit or 1.0, policy,
                                                               window_to_map)
    return WindowOutputs(frames, cameras, poses, path, cloud, policy.metres_per_unit is not None,
                         policy.withhold_geometry, placement)


def _camera_output(frame: Frame, index: int, result: GeometryResult, scale: float,
                   camera_to_world: np.ndarray) -> CameraOutput:
    import torch

    width, height = frame.size
    depth = result.depth[index].float() * scale
    depth = torch.where(torch.isfinite(depth) & (depth > 0), depth, torch.nan)  # REP 118: invalid is NaN
    depth = resize_nearest(depth, width, height).cpu().numpy()
    confidence = None
    if result.confidence is not None:
        confidence = resize_nearest(result.confidence[index].float(), width, height).cpu().numpy()
    k = scale_intrinsics(result.intrinsics[index].double().cpu().numpy(), result.size, (width, height))
    return CameraOutput(index, frame, depth, confidence, k, camera_to_world)


def window_cloud(result: GeometryResult, scale: float, policy: OutputPolicy,
                 window_to_map: Optional[np.ndarray] = None) -> Cloud:
    """Every view's points, selected, moved into the map (the similarity `window_to_map` [4,4] of the scaled window)
    and downsampled there, on the result's device; only the cloud moves."""
    import torch

    from g2vlm_ros.geometry.cloud import voxel_downsample

    stride = policy.cloud_stride
    points = result.world_points[:, ::stride, ::stride].reshape(-1, 3).float() * scale
    if window_to_map is not None:  # before the voxel grid, so that voxels are the map's, the same in every window
        similarity = torch.as_tensor(window_to_map, dtype=torch.float64, device=points.device)
        points = (points.double() @ similarity[:3, :3].T + similarity[:3, 3]).float()
    colors = result.colors[:, ::stride, ::stride].reshape(-1, 3)
    keep = torch.isfinite(points).all(dim=1)
    confidence = None
    if result.confidence is not None:
        confidence = result.confidence[:, ::stride, ::stride].reshape(-1).float()
        keep &= confidence >= policy.confidence_threshold
    # one wait for the device to count the kept points, then selections that need no count (a boolean mask
    # per array would wait once per array)
    keep = keep.nonzero()[:, 0]
    points, colors = points.index_select(0, keep), colors.index_select(0, keep)
    if confidence is not None:
        confidence = confidence.index_select(0, keep)
    if policy.voxel_size > 0:
        points, colors, confidence = voxel_downsample(points, colors, confidence, policy.voxel_size)
    return Cloud(points.cpu().numpy(), colors.cpu().numpy(), None if confidence is None else confidence.cpu().numpy())
