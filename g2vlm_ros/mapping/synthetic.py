"""Synthetic windows with a known truth, for the mapping tests and the mapping benchmark.

A camera rig walks an ellipse inside a box room; each synchronized set is rendered exactly (ray-box
intersection per pixel: local points in the camera's optical frame). Windows are assembled like
`pipeline/windowing.py` does (the last K keyframe sets, or the last K-1 plus a newer non-keyframe set) and each
window is expressed in its own frame (its first view's optical frame) and, optionally, in a random similarity
gauge (rotation, translation, scale: what an up-to-scale model may return). Noise can be added per window: pose
noise, multiplicative depth noise and outlier pixels. `map_truth` is every view's pose in the map frame the
first window defines, so a chained trajectory can be compared with it directly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from g2vlm_ros.geometry.rotations import matrix_from_translation_quaternion
from g2vlm_ros.mapping.alignment import Sim3
from g2vlm_ros.mapping.world_map import ViewObservation


@dataclass(frozen=True)
class BoxRoom:
    """An axis-aligned room in an optical world frame (y down): floor at y = floor_y, ceiling at ceiling_y."""

    half_width: float = 3.0  # x
    half_depth: float = 4.0  # z
    floor_y: float = 1.2
    ceiling_y: float = -1.4

    @property
    def low(self) -> np.ndarray:
        return np.array([-self.half_width, self.ceiling_y, -self.half_depth])

    @property
    def high(self) -> np.ndarray:
        return np.array([self.half_width, self.floor_y, self.half_depth])


def render_points(room: BoxRoom, camera_to_world: np.ndarray, grid: tuple[int, int] = (24, 32),
                  focal: float = 0.8) -> np.ndarray:
    """Local points [h,w,3] float32 (camera frame) where each pixel's ray meets the room's walls.

    The pixel grid spans normalized image coordinates [-1, 1] * w/h-scaled / focal, i.e. a pinhole camera.
    """
    height, width = grid
    u = (np.arange(width) + 0.5) / width * 2.0 - 1.0
    v = ((np.arange(height) + 0.5) / height * 2.0 - 1.0) * height / width
    directions = np.stack(np.broadcast_arrays(u[None, :] / focal, v[:, None] / focal, np.ones((height, width))), -1)
    world_directions = directions @ camera_to_world[:3, :3].T
    origin = camera_to_world[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = np.where(world_directions > 0, room.high, room.low)
        distances = np.where(world_directions != 0, (bound - origin) / world_directions, np.inf)
    depth = distances.min(-1)
    return (directions * depth[..., None]).astype(np.float32)


def colors_of(room: BoxRoom, camera_to_world: np.ndarray, points: np.ndarray) -> np.ndarray:
    """A colour per point from its world height and side, so clouds can be told apart when looked at."""
    world = points.reshape(-1, 3) @ camera_to_world[:3, :3].T + camera_to_world[:3, 3]
    height = (world[:, 1] - room.ceiling_y) / (room.floor_y - room.ceiling_y)
    colors = np.stack([255 * height, 128 + 100 * np.sign(world[:, 0]), 255 * (1 - height)], -1)
    return colors.clip(0, 255).astype(np.uint8).reshape(points.shape)


def ellipse_walk(count: int, radii: tuple[float, float] = (1.8, 2.6), turns: float = 1.0,
                 backwards: bool = False) -> np.ndarray:
    """[count,4,4] camera_to_world poses along an ellipse, looking along the path (or back, when backwards)."""
    angles = np.linspace(0.0, 2.0 * np.pi * turns, count, endpoint=False)
    poses = np.tile(np.eye(4), (count, 1, 1))
    for index, angle in enumerate(angles):
        position = np.array([radii[0] * np.cos(angle), 0.1 * np.sin(3 * angle), radii[1] * np.sin(angle)])
        tangent = np.array([-radii[0] * np.sin(angle), 0.0, radii[1] * np.cos(angle)])
        forward = -tangent if backwards else tangent
        forward /= np.linalg.norm(forward)
        down = np.array([0.0, 1.0, 0.0])
        right = np.cross(down, forward)
        poses[index, :3, :3] = np.stack([right, down, forward], 1)
        poses[index, :3, 3] = position
    return poses


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    return matrix_from_translation_quaternion(np.zeros(3), rng.normal(size=4))[:3, :3]


def small_rotation(rng: np.random.Generator, sigma_deg: float) -> np.ndarray:
    axis_angle = rng.normal(scale=np.radians(sigma_deg), size=3)
    angle = np.linalg.norm(axis_angle)
    if angle == 0:
        return np.eye(3)
    axis = axis_angle / angle
    skew = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * skew + (1 - np.cos(angle)) * skew @ skew


@dataclass
class SyntheticSequence:
    windows: list[list[ViewObservation]]
    stamps: list[int]  # each window's newest stamp
    gauges: list[Sim3]  # world (first view of the window) -> window coordinates, per window
    map_truth: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)  # key -> camera_to_map (exact)
    world_truth: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)  # key -> camera_to_world


def synthetic_sequence(poses: np.ndarray, window_size: int = 3, cameras: int = 1, keyframe_every: int = 1,
                       gauge: bool = True, metric: bool = False, grid: tuple[int, int] = (24, 32),
                       pose_noise_deg: float = 0.0, pose_noise_fraction: float = 0.0, depth_noise: float = 0.0,
                       outlier_fraction: float = 0.0, seed: int = 0, room: Optional[BoxRoom] = None,
                       period_ns: int = 500_000_000) -> SyntheticSequence:
    """Windows over the walk `poses` [S,4,4] (camera 0's camera_to_world per set).

    Every `keyframe_every`-th set is a keyframe; the others end a window as its non-keyframe newest set. Extra
    cameras look sideways (90 degrees yaw each) from 0.1 to the right. Gauges are random similarities (scale
    fixed to 1 when metric); noise is drawn independently for every window, so a keyframe differs between the
    windows that share it, as model output does.
    """
    rng = np.random.default_rng(seed)
    room = room or BoxRoom()
    rig = []
    for camera in range(cameras):
        yaw = np.radians(90.0 * camera)
        mount = np.eye(4)
        mount[:3, :3] = [[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]]
        mount[0, 3] = 0.1 * camera
        rig.append(mount)
    names = [f"cam{camera}" for camera in range(cameras)]
    world_truth, rendered = {}, {}
    for index, pose in enumerate(poses):
        for camera, name in enumerate(names):
            key = (name, index * period_ns + camera * 1_000)  # cameras of one set a microsecond apart
            world_truth[key] = pose @ rig[camera]
            points = render_points(room, world_truth[key], grid)
            rendered[key] = (points, colors_of(room, world_truth[key], points))
    sequence = SyntheticSequence([], [], [], world_truth=world_truth)
    keyframe_sets: list[int] = []
    for index in range(len(poses)):
        is_keyframe = index % keyframe_every == 0
        if is_keyframe:
            keyframe_sets.append(index)
            sets = keyframe_sets[-window_size:]
        else:
            sets = keyframe_sets[-(window_size - 1):] + [index] if window_size > 1 else [index]
        if len(sets) < window_size:
            continue
        keys = [(name, set_index * period_ns + camera * 1_000)
                for camera, name in enumerate(names) for set_index in sets]
        gauge_sim3 = Sim3(1.0 if metric or not gauge else float(np.exp(rng.uniform(-1.0, 1.0))),
                          random_rotation(rng) if gauge else np.eye(3),
                          rng.normal(scale=2.0, size=3) if gauge else np.zeros(3))
        world_to_first = np.linalg.inv(world_truth[keys[0]])
        views = []
        for key in keys:
            pose = gauge_sim3.apply_pose(world_to_first @ world_truth[key])
            points, colors = rendered[key]
            points = points.astype(np.float64) * gauge_sim3.scale
            if pose_noise_deg or pose_noise_fraction:
                baseline = np.linalg.norm(pose[:3, 3] - gauge_sim3.translation)
                pose[:3, :3] = small_rotation(rng, pose_noise_deg) @ pose[:3, :3]
                pose[:3, 3] += rng.normal(scale=pose_noise_fraction * baseline / np.sqrt(3), size=3)
            if depth_noise:
                points *= 1.0 + rng.normal(scale=depth_noise, size=points.shape[:2] + (1,))
            if outlier_fraction:
                wrong = rng.random(points.shape[:2]) < outlier_fraction
                points[wrong] *= rng.uniform(0.3, 3.0, size=(int(wrong.sum()), 1))
            views.append(ViewObservation(key, key[1] // period_ns in keyframe_sets, pose, points.astype(np.float32),
                                         np.ones(points.shape[:2], np.float32), colors))
        sequence.windows.append(views)
        sequence.stamps.append(max(key[1] for key in keys))
        sequence.gauges.append(gauge_sim3)
    if sequence.windows:
        first_views = sequence.windows[0]
        world_to_first = np.linalg.inv(world_truth[first_views[0].key])
        first_gauge = sequence.gauges[0]
        sequence.map_truth = {key: first_gauge.apply_pose(world_to_first @ pose) for key, pose in world_truth.items()}
    return sequence
