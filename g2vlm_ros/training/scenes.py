"""Procedural indoor scenes, ray-cast analytically, as exact supervision for G2VLM's geometry outputs.

G2VLM predicts per-pixel depth / points and camera poses. To train a small model (on a GPU) and to evaluate it (on
a CPU) we need unlimited multi-view data whose geometry is known exactly. `render_scenes` makes it: every batch
item is a closed box-shaped room with textured floor, walls and ceiling, 2-6 textured boxes and spheres, two
directional lights, and `views` cameras moving along a smooth trajectory inside the room. Each pixel's ray (through
the pixel centre) is intersected analytically with the room and the objects; the nearest hit gives depth, world
point, surface normal (for Lambertian shading) and a procedural texture colour. No rasterisation, no sampling
error: back-projecting `depth` with `intrinsics` and `camera_to_world` gives `points` up to float32 rounding.

World frame (metres): y points DOWN (gravity along +y), so a level camera has the identity rotation in the
OpenCV / ROS optical convention (x right, y down, z forward) and yaw is a rotation about y. The floor is the plane
y = 0, the ceiling y = -room_height, the walls x = +-half_x and z = +-half_z; a point's height above the floor is -y.

Randomness: each item's scene is drawn by a CPU `torch.Generator` seeded from (seed, item index) only, so item i is
the same whatever the batch size, resolution or device, and CPU and CUDA renders agree up to float rounding. The
scene does depend on `views` (the trajectory and the objects' placement around it) and on `motion`: with "forward"
(the default, used by the held-out evaluation and the demo walk) every camera walks the way it looks; with "mixed"
(training) an item may instead walk backwards, sideways, in time-reversed order or turn back half-way (WALKS);
"mostly_forward" draws the same walks in a robot's proportions (ROBOT_WALKS).
The walk is drawn by a second generator seeded from (seed, index) as well, so a "mixed" item whose walk is
"forward" is exactly the "forward" item, and every other item differs from it only in its camera path and what
depends on it (the objects are placed around the cameras). The parameters are drawn and
arranged on the CPU in float64 (cheap, a few hundred numbers per item); the per-pixel work is vectorised torch over
batch * views * pixels on the requested device, with a Python loop over at most 12 object slots.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
import torch

MAX_OBJECTS = 6
WALL_MARGIN = 0.4  # cameras keep at least this far (m) from the walls, so no view is a blank wall close-up
OBJECT_CLEARANCE = 0.5  # and at least this far from every object's surface (the brief asks for ~0.3 m or more)
CEILING_MARGIN = 0.3
MIN_HEIGHT, MAX_HEIGHT = 0.5, 1.8  # camera height above the floor (m)
_MASK64 = (1 << 64) - 1
_MAX_RAYS_PER_CHUNK = 1 << 24  # ~16.8 M rays per cast, a few GiB of temporaries
MOTIONS = ("forward", "mixed", "mostly_forward")
# Walks of motion="mixed" and their probabilities. A model trained only on forward walks learns "the camera moves
# the way it looks" and predicts forward motion for a robot that backs up; these teach it to read the motion from
# the views. forward: the camera looks the way it walks; backward: it looks against its motion; sideways: it looks
# 90 degrees left or right of it; reversed: a forward walk's views in reverse order (backwards, turning the other
# way); turnaround: forwards, then back the way it came from a random view on (a robot reversing out of a dead end).
WALKS = {"forward": 0.3, "backward": 0.2, "sideways": 0.2, "reversed": 0.15, "turnaround": 0.15}
# motion="mostly_forward": the same walks in a robot's proportions. In "mixed", backward motion (backward, reversed,
# the second half of turnaround) outweighs forward motion, so where two views barely tell the direction (a short
# step in a large room) a model trained on it guesses backwards; robots mostly drive forwards, and so does this mix.
ROBOT_WALKS = {"forward": 0.5, "backward": 0.15, "sideways": 0.15, "reversed": 0.1, "turnaround": 0.1}
_WALK_MIXES = {"mixed": WALKS, "mostly_forward": ROBOT_WALKS}
_WALK_SALT = 0x5A17E5  # the walk's generator: seeded from (seed, index) too, but unrelated to the scene's
_WALK_JITTER_DEG = 20.0  # non-forward walks look up to this far off their nominal direction (diagonal motion)

# Surface slots. Geometry table rows: 0 = room, 1..6 = box slots, 7..12 = sphere slots. Texture table rows: 0..5 =
# room faces in the order x-, x+, y- (ceiling), y+ (floor), z-, z+; then 6..11 box slots, 12..17 sphere slots.
_GEOM_ROWS = 1 + 2 * MAX_OBJECTS
_TEX_ROWS = 6 + 2 * MAX_OBJECTS
_KIND_ROOM, _KIND_BOX, _KIND_SPHERE = 0.0, 1.0, 2.0
_ROOM_FACE_ROLES = ("wall", "wall", "ceiling", "floor", "wall", "wall")
# An unused slot holds an object far below the floor: it is outside the room, so the room's own hit is always
# nearer and the slot can never win. This keeps the cast free of per-slot masks.
_PARKED_CENTER = (0.0, 1000.0, 0.0)

# Geometry fields (columns of the geometry table).
_G_CX, _G_CY, _G_CZ, _G_COS, _G_SIN, _G_HX, _G_HY, _G_HZ, _G_KIND = range(9)
_GEOM_FIELDS = 9
# Texture fields: colour A, colour B, blend weights of (checker, stripes, noise), checker 1/cell and offsets,
# stripe wave vector and phase, 4 noise waves (wave vector, phase), 2 detail waves (wave vector, phase), detail amp.
_T_A, _T_B, _T_W = 0, 3, 6
_T_CHECK = 9  # 1/cell, off_x, off_y, off_z
_T_STRIPE = 13  # k_x, k_y, k_z, phase
_NOISE_WAVES = 4
_T_NOISE = 17  # NOISE_WAVES x (k_x, k_y, k_z, phase)
_DETAIL_WAVES = 2
_T_DETAIL = _T_NOISE + 4 * _NOISE_WAVES  # DETAIL_WAVES x (k_x, k_y, k_z, phase)
_T_DETAIL_AMP = _T_DETAIL + 4 * _DETAIL_WAVES
_TEX_FIELDS = _T_DETAIL_AMP + 1


@dataclass
class SceneBatch:
    """Rendered views with exact geometry. B items, V views each, H x W pixels."""

    images: torch.Tensor  # [B, V, 3, H, W] float32 in [0, 1]
    depth: torch.Tensor  # [B, V, H, W] float32, z of the hit in the camera frame (m), > 0 and finite
    points: torch.Tensor  # [B, V, H, W, 3] float32 world coordinates of each pixel's surface point
    intrinsics: torch.Tensor  # [B, V, 3, 3] pinhole K, pixel centres at integer coordinates
    camera_to_world: torch.Tensor  # [B, V, 4, 4] optical convention (x right, y down, z forward)

    def to(self, device: torch.device | str) -> SceneBatch:
        return SceneBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


@dataclass
class SceneSpec:
    """The random parameters of one item (float64 numpy), in the world frame described in the module docstring."""

    room_half: np.ndarray  # [3] half extents (half_x, room_height / 2, half_z); the room centre is (0, -height/2, 0)
    box_centers: np.ndarray  # [nb, 3]
    box_halves: np.ndarray  # [nb, 3] half extents in the box frame
    box_yaws: np.ndarray  # [nb] rotation about the world y axis (box frame -> world)
    sphere_centers: np.ndarray  # [ns, 3]
    sphere_radii: np.ndarray  # [ns]
    camera_to_world: np.ndarray  # [V, 4, 4]
    focal_scale: float  # fx = fy = focal_scale * W, i.e. 1 / (2 tan(hfov / 2))
    light_dirs: np.ndarray  # [2, 3] unit directions the light travels in (key light first)
    light_intensity: np.ndarray  # [2]
    ambient: float
    textures: np.ndarray  # [_TEX_ROWS, _TEX_FIELDS] (unused object slots are zeros)

    @property
    def room_height(self) -> float:
        return float(2.0 * self.room_half[1])


def render_scenes(batch: int, views: int, height: int, width: int, seed: int,
                  device: torch.device | str = "cpu", motion: str = "forward") -> SceneBatch:
    """Renders `batch` random rooms, `views` views each, at height x width pixels on `device`.

    motion: "forward" (cameras walk the way they look), "mixed" (see WALKS) or "mostly_forward" (ROBOT_WALKS)."""
    if batch < 1 or views < 1 or height < 1 or width < 1:
        raise ValueError("batch, views, height and width must be positive")
    specs = [sample_scene(seed, index, views, motion) for index in range(batch)]
    # Whole items at a time, at most _MAX_RAYS_PER_CHUNK rays: the cast keeps a few dozen per-ray temporaries
    # alive, which would otherwise take tens of GiB for a large training batch on a GPU.
    step = max(1, _MAX_RAYS_PER_CHUNK // (views * height * width))
    from g2vlm_ros.training.scene_render import render  # the caster needs this module's tables: imported late

    parts = [render(specs[i:i + step], views, height, width, torch.device(device)) for i in range(0, batch, step)]
    if len(parts) == 1:
        return parts[0]
    return SceneBatch(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(SceneBatch)})


# ----------------------------------------------------------------------------------------------------------------
# Random scene parameters (CPU, float64)


def _item_seed(seed: int, index: int) -> int:
    """Mixes (seed, index) into a 63-bit generator seed (splitmix64), so neighbouring seeds give unrelated items."""
    x = (seed * 0x9E3779B97F4A7C15 + (index + 1) * 0xD1B54A32D192ED03) & _MASK64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK64
    x ^= x >> 31
    return x & ((1 << 63) - 1)


class _Random:
    """Numpy-flavoured front end over a CPU torch.Generator (the brief fixes torch as the random source).

    Uniforms are drawn from the generator in blocks and handed out one by one: a scene takes a few hundred draws,
    and one torch call per draw would make parameter sampling, not rendering, the bottleneck on a GPU.
    """

    _BLOCK = 1024

    def __init__(self, seed: int):
        self._generator = torch.Generator(device="cpu")
        self._generator.manual_seed(seed)
        self._buffer = np.empty(0)
        self._next = 0

    def _draw(self, count: int) -> np.ndarray:
        if self._next + count > len(self._buffer):
            fresh = torch.rand(max(self._BLOCK, count), generator=self._generator, dtype=torch.float64).numpy()
            self._buffer = np.concatenate([self._buffer[self._next:], fresh])
            self._next = 0
        out = self._buffer[self._next:self._next + count]
        self._next += count
        return out

    def uniform(self, low=0.0, high=1.0, size=None):
        """A float for scalar bounds without size, else an array of `size` (default: the bounds' shape)."""
        if size is None:
            if isinstance(low, float | int) and isinstance(high, float | int):
                return low + (high - low) * float(self._draw(1)[0])
            size = np.broadcast(low, high).shape
            if size == ():  # numpy scalars
                return float(low + (high - low) * self._draw(1)[0])
        x = self._draw(int(np.prod(size))).reshape(size)
        return np.asarray(low) + (np.asarray(high) - np.asarray(low)) * x

    def integer(self, low: int, high: int) -> int:
        """Uniform in [low, high], both inclusive."""
        return low + min(int(self.uniform() * (high - low + 1)), high - low)

    def unit(self, zero_axis: int | None = None) -> np.ndarray:
        """Uniform random 3-D direction; with zero_axis, uniform in the plane perpendicular to that axis."""
        u, w = self._draw(2)
        angle = 2.0 * math.pi * u
        if zero_axis is None:  # Archimedes: z uniform in [-1, 1] gives a uniform point on the sphere
            z = 2.0 * w - 1.0
            r = math.sqrt(max(0.0, 1.0 - z * z))
            return np.array([r * math.cos(angle), r * math.sin(angle), z])
        v = np.zeros(3)
        v[[a for a in range(3) if a != zero_axis]] = (math.cos(angle), math.sin(angle))
        return v


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    # Maps the optical z axis (forward) to (sin a, 0, cos a): yaw a turns the camera from +z towards +x.
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


class Walk(NamedTuple):
    """How an item's cameras move along their path (see WALKS)."""

    kind: str
    look: float  # yaw of the view direction relative to the direction of motion (rad)
    turn_back: int  # the first step that goes back the way it came (views - 1 or more: none)


def sample_walk(seed: int, index: int, views: int, motion: str = "forward") -> Walk:
    """The walk of item `index` of `render_scenes(..., seed, motion=motion)` with `views` views."""
    if motion not in MOTIONS:
        raise ValueError(f"motion must be one of {MOTIONS}, got {motion!r}")
    if motion == "forward":
        return Walk("forward", 0.0, views)
    rng = _Random(_item_seed(seed ^ _WALK_SALT, index))
    walks = _WALK_MIXES[motion]
    bounds = np.cumsum(list(walks.values()))
    kind = list(walks)[min(int(np.searchsorted(bounds, rng.uniform() * bounds[-1], side="right")), len(walks) - 1)]
    if kind == "turnaround" and views < 3:  # two views cannot go and come back: the same motion as backward
        kind = "backward"
    if kind == "forward":
        return Walk(kind, 0.0, views)
    turn_back = rng.integer(1, views - 2) if kind == "turnaround" else views
    nominal = {"backward": math.pi, "sideways": math.copysign(0.5 * math.pi, rng.uniform() - 0.5)}.get(kind, 0.0)
    return Walk(kind, nominal + math.radians(rng.uniform(-_WALK_JITTER_DEG, _WALK_JITTER_DEG)), turn_back)


def sample_scene(seed: int, index: int, views: int, motion: str = "forward") -> SceneSpec:
    """The random parameters of item `index` of `render_scenes(..., seed, motion=motion)` with `views` views."""
    walk = sample_walk(seed, index, views, motion)
    rng = _Random(_item_seed(seed, index))
    half_x = 0.5 * rng.uniform(3.0, 8.0)
    half_z = 0.5 * rng.uniform(3.0, 8.0)
    room_height = rng.uniform(2.4, 3.5)
    camera_to_world = _sample_cameras(rng, views, half_x, half_z, room_height, walk)
    boxes, spheres = _sample_objects(rng, camera_to_world, half_x, half_z, room_height)
    focal_scale = 0.5 / math.tan(0.5 * math.radians(rng.uniform(50.0, 90.0)))

    # Key light from above at 20-55 degrees off vertical; fill light travelling sideways or upwards, so walls and
    # the ceiling are not only lit by the ambient term.
    key_tilt, key_az = math.radians(rng.uniform(20.0, 55.0)), rng.uniform(0.0, 2.0 * math.pi)
    fill_tilt, fill_az = math.radians(rng.uniform(80.0, 150.0)), rng.uniform(0.0, 2.0 * math.pi)
    light_dirs = np.array([[math.sin(t) * math.cos(a), math.cos(t), math.sin(t) * math.sin(a)]
                           for t, a in ((key_tilt, key_az), (fill_tilt, fill_az))])
    light_intensity = np.array([rng.uniform(0.55, 0.8), rng.uniform(0.15, 0.3)])
    ambient = rng.uniform(0.3, 0.45)

    textures = np.zeros((_TEX_ROWS, _TEX_FIELDS))
    for face, role in enumerate(_ROOM_FACE_ROLES):
        textures[face] = _sample_texture(rng, role, plane_normal_axis=face // 2)
    for slot in range(len(boxes)):
        textures[6 + slot] = _sample_texture(rng, "object", None)
    for slot in range(len(spheres)):
        textures[6 + MAX_OBJECTS + slot] = _sample_texture(rng, "object", None)

    return SceneSpec(
        room_half=np.array([half_x, 0.5 * room_height, half_z]),
        box_centers=np.array([b[0] for b in boxes]).reshape(-1, 3),
        box_halves=np.array([b[1] for b in boxes]).reshape(-1, 3),
        box_yaws=np.array([b[2] for b in boxes]),
        sphere_centers=np.array([s[0] for s in spheres]).reshape(-1, 3),
        sphere_radii=np.array([s[1] for s in spheres]),
        camera_to_world=camera_to_world, focal_scale=focal_scale, light_dirs=light_dirs,
        light_intensity=light_intensity, ambient=ambient, textures=textures)


def _sample_cameras(rng: _Random, views: int, half_x: float, half_z: float, room_height: float,
                    walk: Walk | None = None) -> np.ndarray:
    """A smooth trajectory inside the room, at least WALL_MARGIN from the walls -> camera_to_world [V, 4, 4].

    walk: how the cameras move along the path (sample_walk); None: forwards."""
    # Shape first, relative to a start at the origin heading along +z: forward steps of 0.1-0.4 m around a
    # per-trajectory speed, a slow lateral drift and a steady turn of a few degrees per view, each with jitter.
    # The walk's kind only changes how these are used, so the draws (and everything after) stay in step.
    kind, look, turn_back = walk if walk is not None else Walk("forward", 0.0, views)
    steps = np.clip(rng.uniform(0.1, 0.4) * rng.uniform(0.8, 1.2, views), 0.1, 0.4)
    drift = rng.uniform(-0.06, 0.06) + rng.uniform(-0.02, 0.02, views)
    turns = math.radians(rng.uniform(-5.0, 5.0)) + np.radians(rng.uniform(-1.5, 1.5, views))
    back = np.arange(views) >= turn_back
    rel = np.zeros((views, 2))  # (x, z)
    headings = np.zeros(views)
    position, heading = np.zeros(2), 0.0
    for i in range(views):
        rel[i], headings[i] = position, heading
        forward = np.array([math.sin(heading), math.cos(heading)])
        right = np.array([math.cos(heading), -math.sin(heading)])
        if back[i]:
            position = position - steps[i] * forward - drift[i] * right
        else:
            position = position + steps[i] * forward + drift[i] * right
        heading += turns[i]
    if kind == "reversed":
        rel, headings = rel[::-1].copy(), headings[::-1].copy()
    headings = headings + look  # the view direction; the motion keeps the path's direction

    # Then place it: random overall yaws and start points, keeping the path's bounding box inside the safe
    # rectangle. Of a dozen candidates the one whose cameras see farthest before a wall wins (capped at 4 m, so
    # that any open view is as good as another), which keeps the views from being close-ups of a wall. Long paths
    # in small rooms may not fit at all; they are shrunk to fit (steps below 0.1 m, the only way to stay inside).
    limit = np.array([half_x - WALL_MARGIN, half_z - WALL_MARGIN])
    room = np.array([half_x, half_z])
    best = None
    for _ in range(12):
        yaw = rng.uniform(-math.pi, math.pi)
        c, s = math.cos(yaw), math.sin(yaw)
        placed = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1]], axis=1)
        extent = placed.max(axis=0) - placed.min(axis=0)
        scale = float(min(1.0, *(2.0 * limit / np.maximum(extent, 1e-9))))
        placed = placed * scale
        low, high = placed.min(axis=0), placed.max(axis=0)
        xz = placed + rng.uniform(-limit - low, limit - high)
        forward = np.stack([np.sin(headings + yaw), np.cos(headings + yaw)], axis=1)
        with np.errstate(divide="ignore"):  # a heading along one axis never exits through the other: inf
            exits = np.where(forward >= 0, room - xz, room + xz) / np.abs(forward)
        score = (scale, float(min(4.0, exits.min())))
        if best is None or score > best[0]:
            best = (score, yaw, xz)
    _, yaw, xz = best

    top = min(MAX_HEIGHT, room_height - CEILING_MARGIN)
    heights = np.clip(rng.uniform(MIN_HEIGHT, top) + np.cumsum(rng.uniform(-0.03, 0.03, views)), MIN_HEIGHT, top)
    # Negative pitch looks down (towards +y); the bias shows more floor and objects than ceiling.
    pitch = np.clip(math.radians(rng.uniform(-15.0, 8.0)) + np.cumsum(np.radians(rng.uniform(-1.0, 1.0, views))),
                    math.radians(-20.0), math.radians(12.0))
    roll = np.clip(math.radians(rng.uniform(-4.0, 4.0)) + np.cumsum(np.radians(rng.uniform(-0.7, 0.7, views))),
                   math.radians(-6.0), math.radians(6.0))

    poses = np.tile(np.eye(4), (views, 1, 1))
    for i in range(views):
        poses[i, :3, :3] = _rot_y(headings[i] + yaw) @ _rot_x(pitch[i]) @ _rot_z(roll[i])
        poses[i, :3, 3] = (xz[i, 0], -heights[i], xz[i, 1])
    return poses


def _sample_objects(rng: _Random, poses: np.ndarray, half_x: float, half_z: float, room_height: float):
    """2-6 non-overlapping boxes / spheres, each at least OBJECT_CLEARANCE from every camera.

    Returns (boxes, spheres): lists of (center, half_extents, yaw) and (center, radius). Rejection sampling; after
    a while the sizes shrink towards their minimum so crowded trajectories in small rooms still get two objects.
    """
    cameras = poses[:, :3, 3]
    count = rng.integer(2, MAX_OBJECTS)
    boxes, spheres, footprints = [], [], []  # footprints: (x, z, radius) of the bounding circle on the floor
    for attempt in range(600):
        if len(boxes) + len(spheres) >= count:
            break
        shrink = 0.98 ** max(0, attempt - 50)
        is_box = rng.uniform() < 0.55
        if is_box:
            half = 0.5 * (0.3 + 1.2 * shrink * rng.uniform(0.0, 1.0, 3))
            yaw = rng.uniform(0.0, 0.5 * math.pi)
            radius = math.hypot(half[0], half[2])
        else:
            radius = 0.2 + 0.6 * shrink * rng.uniform()
        if radius + 0.02 >= min(half_x, half_z):
            continue
        bound_x, bound_z = half_x - radius - 0.02, half_z - radius - 0.02
        if rng.uniform() < 0.6:
            # Most objects go 1-3 m ahead of a random camera, so that the views actually show them.
            camera = rng.integer(0, len(cameras) - 1)
            forward = poses[camera, :3, 2][[0, 2]]
            forward = forward / max(np.linalg.norm(forward), 1e-9)
            ahead, side = rng.uniform(1.0, 3.0), rng.uniform(-1.0, 1.0)
            x = float(np.clip(cameras[camera, 0] + ahead * forward[0] + side * forward[1], -bound_x, bound_x))
            z = float(np.clip(cameras[camera, 2] + ahead * forward[1] - side * forward[0], -bound_z, bound_z))
        else:
            x, z = rng.uniform(-bound_x, bound_x), rng.uniform(-bound_z, bound_z)
        if any(math.hypot(x - fx, z - fz) < radius + fr + 0.05 for fx, fz, fr in footprints):
            continue
        if is_box:
            center = np.array([x, -half[1], z])  # standing on the floor (y = 0, y down)
            local = (cameras - center) @ _rot_y(yaw)  # row-vector form of R^T (p - c)
            distance = np.linalg.norm(np.maximum(np.abs(local) - half, 0.0), axis=1)
        else:
            free = room_height - 2.0 * radius - CEILING_MARGIN  # room for a gap under a floating sphere
            gap = rng.uniform(0.15, free) if rng.uniform() < 0.4 and free > 0.3 else 0.0
            center = np.array([x, -(radius + gap), z])
            distance = np.linalg.norm(cameras - center, axis=1) - radius
        if distance.min() < OBJECT_CLEARANCE:
            continue
        footprints.append((x, z, radius))
        if is_box:
            boxes.append((center, half, yaw))
        else:
            spheres.append((center, radius))
    return boxes, spheres


def _sample_colour(rng: _Random, low: float, high: float) -> np.ndarray:
    return rng.uniform(low, high, 3)


def _sample_texture(rng: _Random, role: str, plane_normal_axis: int | None) -> np.ndarray:
    """One surface's texture parameters (see the _T_* layout). Room faces get waves in their own plane."""
    t = np.zeros(_TEX_FIELDS)
    if role == "floor":
        colour_range, kinds, cell = (0.15, 0.85), (0.45, 0.35, 0.2), (0.3, 0.9)
    elif role == "ceiling":
        colour_range, kinds, cell = (0.6, 0.95), (0.35, 0.15, 0.5), (0.4, 1.0)
    elif role == "wall":
        colour_range, kinds, cell = (0.35, 0.95), (0.25, 0.35, 0.4), (0.25, 0.8)
    else:
        colour_range, kinds, cell = (0.1, 0.95), (0.35, 0.35, 0.3), (0.1, 0.35)
    a = _sample_colour(rng, *colour_range)
    # The second colour is a darker shade of the first or an unrelated colour; retry until the contrast is visible.
    for _ in range(8):
        b = a * rng.uniform(0.3, 0.65) if rng.uniform() < 0.5 else _sample_colour(rng, 0.05, 0.95)
        if np.abs(a - b).mean() > 0.15:
            break
    t[_T_A:_T_A + 3], t[_T_B:_T_B + 3] = a, b

    # Blend weights: one dominant pattern, plus some noise on top of checkers and stripes for unique local detail.
    choice = rng.uniform()
    kind = 0 if choice < kinds[0] else (1 if choice < kinds[0] + kinds[1] else 2)
    weights = np.zeros(3)
    weights[kind] = 1.0
    if kind != 2:
        weights[2] = rng.uniform(0.0, 0.35)
    t[_T_W:_T_W + 3] = weights / weights.sum()

    t[_T_CHECK] = 1.0 / rng.uniform(*cell)
    # Offsets in [0.2, 0.8] cells: the texture coordinate across a planar face is set to 0, which then sits well
    # inside a cell, so rounding can never flip the parity of a whole face.
    t[_T_CHECK + 1:_T_CHECK + 4] = rng.uniform(0.2, 0.8, 3)
    t[_T_STRIPE:_T_STRIPE + 3] = rng.unit(plane_normal_axis) / rng.uniform(0.5 * cell[0], 0.5 * cell[1])
    t[_T_STRIPE + 3] = rng.uniform(0.2, 0.8)
    for wave in range(_NOISE_WAVES):
        start = _T_NOISE + 4 * wave
        t[start:start + 3] = rng.unit(plane_normal_axis) * 2.0 * math.pi * rng.uniform(0.4, 2.5)
        t[start + 3] = rng.uniform(0.0, 2.0 * math.pi)
    for wave in range(_DETAIL_WAVES):
        start = _T_DETAIL + 4 * wave
        t[start:start + 3] = rng.unit(plane_normal_axis) * 2.0 * math.pi * rng.uniform(2.0, 5.0)
        t[start + 3] = rng.uniform(0.0, 2.0 * math.pi)
    t[_T_DETAIL_AMP] = rng.uniform(0.04, 0.1)
    return t
