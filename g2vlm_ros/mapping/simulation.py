"""A long synthetic camera walk with loops through a floor plan of rooms, with exact geometry, for scoring the map.

The mapping core (WorldMap) must turn a stream of up-to-scale windows into one trajectory. To score it we need a
walk whose every pose and pixel depth is known exactly, that is long (hundreds of metres), that moves forwards,
backwards and sideways (a camera that walks backwards is where a model confuses the direction of motion) and that
comes back to places it saw before (loop closure). Rendering real images for that is slow; here each view is only
ray-cast analytically against axis-aligned boxes, at a few thousand pixels, so a 230 m walk takes about a second.

World frame (metres), as in g2vlm_ros.training.scenes: y points DOWN (gravity along +y), the floor is y = 0, a
level camera looking along +z has the identity rotation in the optical convention (x right, y down, z forward),
and yaw turns the camera from +z towards +x.

The floor plan: a hall around a central block, so the free space is a ring corridor; walls across the corridor with
wide doorways split it into four rooms, and furniture stands against the walls. The walk follows the ring's centre
line (rounded at the corners), lap after lap, in legs that each walk forwards, backwards or sideways, clockwise or
anticlockwise; between legs the camera turns on the spot. Windows are formed by the node's own WindowAssembler
(g2vlm_ros.pipeline.windowing) with keyframes from the true motion, as the node does with odometry from TF.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from g2vlm_ros.pipeline.windowing import WindowAssembler, WindowPolicy

CAMERA = "sim_camera"
HALL_MIN, HALL_MAX = np.array([-12.0, -3.0, -8.0]), np.array([12.0, 0.0, 8.0])  # x, y (ceiling..floor), z
CENTRE_HALF = (9.0, 5.25)  # the ring corridor's centre line: a rectangle of these half sizes (x, z) ...
CORNER_RADIUS = 2.0  # ... with rounded corners
# Solid boxes (min corner, max corner): the central block, four walls across the corridor with doorways about 2.9 m
# wide on the centre line, and furniture against the walls (at least 1.4 m from the centre line everywhere).
SOLID_BOXES = (
    ((-6.0, -3.0, -2.5), (6.0, 0.0, 2.5)),  # central block
    ((-0.1, -3.0, 2.5), (0.1, 0.0, 3.8)), ((-0.1, -3.0, 6.7), (0.1, 0.0, 8.0)),  # wall and doorway at x = 0, z > 0
    ((-0.1, -3.0, -3.8), (0.1, 0.0, -2.5)), ((-0.1, -3.0, -8.0), (0.1, 0.0, -6.7)),  # ... and z < 0
    ((6.0, -3.0, -0.1), (7.55, 0.0, 0.1)), ((10.45, -3.0, -0.1), (12.0, 0.0, 0.1)),  # wall at z = 0, x > 0
    ((-7.55, -3.0, -0.1), (-6.0, 0.0, 0.1)), ((-12.0, -3.0, -0.1), (-10.45, 0.0, 0.1)),  # ... and x < 0
    ((3.0, -0.9, 7.2), (5.0, 0.0, 8.0)), ((-9.0, -1.8, 7.4), (-7.5, 0.0, 8.0)),  # furniture
    ((-4.0, -0.75, -8.0), (-1.5, 0.0, -7.1)), ((7.0, -1.2, -8.0), (8.0, 0.0, -7.3)),
    ((11.0, -0.8, 3.0), (12.0, 0.0, 5.5)), ((-12.0, -2.0, -5.0), (-11.3, 0.0, -3.8)),
    ((2.0, -1.0, -3.3), (3.5, 0.0, -2.5)), ((-3.5, -0.6, 2.5), (-1.5, 0.0, 3.2)),
    ((6.0, -0.9, -5.5), (6.8, 0.0, -4.0)), ((-6.8, -1.5, 3.5), (-6.0, 0.0, 4.5)),
)
MODE_YAW = {"forward": 0.0, "backward": math.pi, "sideways_left": -0.5 * math.pi, "sideways_right": 0.5 * math.pi}
# Leg plan of one lap per row: (direction, mode) for each of four legs; +1 walks anticlockwise seen from above.
LAP_PLAN = (
    ((+1, "forward"), (+1, "forward"), (+1, "forward"), (+1, "forward")),
    ((+1, "backward"), (+1, "sideways_left"), (+1, "forward"), (+1, "backward")),
    ((-1, "forward"), (-1, "sideways_right"), (-1, "backward"), (-1, "forward")),
    ((-1, "backward"), (-1, "forward"), (-1, "sideways_left"), (-1, "forward")),
)


@dataclass(frozen=True)
class WalkSettings:
    distance_m: float = 230.0  # total distance walked (four laps of the 57 m ring are 228 m)
    step_m: float = 0.2  # between frames (a camera at 5 Hz walking 1 m/s)
    frame_period_ns: int = 200_000_000
    turn_step_deg: float = 10.0  # per frame while turning on the spot between legs
    width: int = 64
    height: int = 48
    horizontal_fov_deg: float = 70.0
    camera_height_m: float = 1.4
    seed: int = 0


@dataclass
class SimulatedFrame:
    """What WindowAssembler needs from a frame (camera, stamp_ns, thumbnail), plus its index in the sequence."""

    camera: str
    stamp_ns: int
    index: int
    thumbnail: Optional[np.ndarray] = None


@dataclass
class SimulatedSequence:
    """F frames: true poses, per-view exact local points (camera frame, metres) and colours."""

    settings: WalkSettings
    camera_to_world: np.ndarray  # [F,4,4] float64, world frame as in the module docstring
    local_points: np.ndarray  # [F,h,w,3] float32, z = depth (m)
    colors: np.ndarray  # [F,h,w,3] uint8
    intrinsics: np.ndarray  # [3,3]
    stamps_ns: np.ndarray  # [F] int64
    modes: list[str]  # [F] leg mode: forward | backward | sideways_left | sideways_right | turn
    distance_walked_m: float

    @property
    def frames(self) -> list[SimulatedFrame]:
        return [SimulatedFrame(CAMERA, int(stamp), index) for index, stamp in enumerate(self.stamps_ns)]

    def key(self, index: int) -> tuple[str, int]:
        return CAMERA, int(self.stamps_ns[index])


@dataclass(frozen=True)
class SimulatedWindow:
    frame_indices: list[int]  # time order; the last is the newest set
    newest_is_keyframe: bool


def rotation_y(angle: float) -> np.ndarray:
    """Yaw: turns the optical z axis (forward) towards +x, about the gravity axis."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rotation_x(angle: float) -> np.ndarray:
    """Pitch: a negative angle looks down (towards +y)."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rotation_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# ----------------------------------------------------------------------------------------------------------------
# The walk


def _centre_line(spacing_m: float = 0.01) -> np.ndarray:
    """Dense (x, z) points of the ring's centre line, anticlockwise seen from above (looking down +y), closed."""
    half_x, half_z = CENTRE_HALF
    corners = ((half_x - CORNER_RADIUS, -half_z + CORNER_RADIUS, -0.5 * math.pi),
               (half_x - CORNER_RADIUS, half_z - CORNER_RADIUS, 0.0),
               (-half_x + CORNER_RADIUS, half_z - CORNER_RADIUS, 0.5 * math.pi),
               (-half_x + CORNER_RADIUS, -half_z + CORNER_RADIUS, math.pi))
    vertices = []
    for cx, cz, start in corners:
        for angle in np.linspace(start, start + 0.5 * math.pi, 64):
            vertices.append((cx + CORNER_RADIUS * math.cos(angle), cz + CORNER_RADIUS * math.sin(angle)))
    vertices.append(vertices[0])
    vertices = np.array(vertices)
    lengths = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(vertices, axis=0), axis=1))]
    samples = np.arange(0.0, lengths[-1], spacing_m)
    return np.stack([np.interp(samples, lengths, vertices[:, 0]), np.interp(samples, lengths, vertices[:, 1])], 1)


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


def plan_walk(settings: WalkSettings) -> tuple[np.ndarray, list[str], float]:
    """-> camera_to_world [F,4,4], per-frame mode, distance walked (m)."""
    line = _centre_line()
    spacing = float(np.linalg.norm(line[1] - line[0]))
    count = len(line)
    perimeter = count * spacing
    leg_length = perimeter / 4.0
    position_index = 0.0  # along the line, in samples (fractional)
    yaw: Optional[float] = None
    poses, modes = [], []
    walked = 0.0
    rng = np.random.default_rng(settings.seed)
    wobble_phase = rng.uniform(0.0, 2.0 * math.pi, 4)

    def pose(index: float, camera_yaw: float, along: float) -> np.ndarray:
        # Smooth head motion while walking: yaw +-8 deg, pitch -5 +- 4 deg, roll +-2 deg, height +-0.1 m.
        i = int(round(index)) % count
        pitch = math.radians(-5.0 + 4.0 * math.sin(along / 3.1 + wobble_phase[0]))
        roll = math.radians(2.0 * math.sin(along / 4.3 + wobble_phase[1]))
        wobble = math.radians(8.0 * math.sin(along / 2.3 + wobble_phase[2]))
        matrix = np.eye(4)
        matrix[:3, :3] = rotation_y(camera_yaw + wobble) @ rotation_x(pitch) @ rotation_z(roll)
        height = settings.camera_height_m + 0.1 * math.sin(along / 5.7 + wobble_phase[3])
        matrix[:3, 3] = (line[i, 0], -height, line[i, 1])
        return matrix

    leg = 0
    while walked < settings.distance_m - 1e-9:
        direction, mode = LAP_PLAN[(leg // 4) % len(LAP_PLAN)][leg % 4]
        leg_steps = int(round(min(leg_length, settings.distance_m - walked) / settings.step_m))
        if leg_steps == 0:  # less than half a step left
            break
        for step in range(leg_steps + 1):
            i = int(round(position_index)) % count
            tangent = line[(i + direction) % count] - line[(i - direction) % count]
            target = _wrap(math.atan2(tangent[0], tangent[1]) + MODE_YAW[mode])
            if yaw is not None and step == 0:
                # Turn on the spot to the leg's heading (the wobble is continuous, so only the base yaw turns).
                turn = _wrap(target - yaw)
                turns = int(math.ceil(abs(math.degrees(turn)) / settings.turn_step_deg))
                for k in range(1, turns):
                    poses.append(pose(position_index, yaw + turn * k / turns, walked))
                    modes.append("turn")
            if step > 0 or yaw is None:
                poses.append(pose(position_index, target, walked))
                modes.append(mode)
            yaw = target
            if step < leg_steps:
                position_index += direction * settings.step_m / spacing
                walked += settings.step_m
        leg += 1
    poses = np.array(poses)
    return poses, modes, float(np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1).sum())


# ----------------------------------------------------------------------------------------------------------------
# Rendering: analytic ray casting of the hall (seen from inside) and the solid boxes


def intrinsics_for(settings: WalkSettings) -> np.ndarray:
    focal = 0.5 * settings.width / math.tan(0.5 * math.radians(settings.horizontal_fov_deg))
    return np.array([[focal, 0.0, 0.5 * (settings.width - 1)], [0.0, focal, 0.5 * (settings.height - 1)],
                     [0.0, 0.0, 1.0]])


def _surface_textures(seed: int, surfaces: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per surface: base colour [S,3], two wave vectors [S,2,3] and phases [S,2] of its pattern."""
    rng = np.random.default_rng(10_000 + seed)
    return (rng.uniform(0.25, 0.95, (surfaces, 3)), rng.normal(0.0, 2.5, (surfaces, 2, 3)),
            rng.uniform(0.0, 2.0 * math.pi, (surfaces, 2)))


def cast(origins: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rays origins [P,3] + t * directions [P,3] -> nearest hit t [P] (> 0) and surface id [P] (0-5 hall faces x-,
    x+,y-,y+,z-,z+; 6+ solid boxes). The origins must be inside the hall and outside every box."""
    # Axis-major [3,P] arrays (contiguous per axis) and fmin/fmax, which skip the NaN of 0 * inf where a ray runs
    # inside a slab's boundary plane: about 10x faster than nanmin over the last axis of [P,3].
    origin, direction = np.ascontiguousarray(origins.T), np.ascontiguousarray(directions.T)
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = 1.0 / direction
        exits = np.where(direction > 0, HALL_MAX[:, None] - origin, HALL_MIN[:, None] - origin) * inverse
        exits = np.where(np.isfinite(exits) & (exits > 0), exits, np.inf)
        axis = np.argmin(exits, axis=0)
        columns = np.arange(direction.shape[1])
        best_t = exits[axis, columns]
        best_id = 2 * axis + (direction[axis, columns] > 0)
        for box, (low, high) in enumerate(SOLID_BOXES):
            t1 = (np.asarray(low)[:, None] - origin) * inverse
            t2 = (np.asarray(high)[:, None] - origin) * inverse
            entry, leave = np.fmin(t1, t2), np.fmax(t1, t2)
            near = np.fmax(np.fmax(entry[0], entry[1]), entry[2])
            far = np.fmin(np.fmin(leave[0], leave[1]), leave[2])
            hit = (near <= far) & (near > 0) & (near < best_t)
            best_t = np.where(hit, near, best_t)
            best_id = np.where(hit, 6 + box, best_id)
    return best_t, best_id


def render_views(camera_to_world: np.ndarray, intrinsics: np.ndarray, size: tuple[int, int],
                 textures) -> tuple[np.ndarray, np.ndarray]:
    """Views [V,4,4] -> local points [V,h,w,3] float32 (camera frame, m) and colours [V,h,w,3] uint8."""
    width, height = size
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    rays = np.stack([(u - intrinsics[0, 2]) / intrinsics[0, 0], (v - intrinsics[1, 2]) / intrinsics[1, 1],
                     np.ones_like(u)], axis=-1).reshape(-1, 3)  # z = 1: the hit distance t is the depth
    views = len(camera_to_world)
    directions = np.einsum("vij,pj->vpi", camera_to_world[:, :3, :3], rays).reshape(-1, 3)
    origins = np.repeat(camera_to_world[:, :3, 3], len(rays), axis=0)
    depth, surface = cast(origins, directions)
    world = origins + directions * depth[:, None]
    base, waves, phases = textures
    pattern = np.sin(np.einsum("pk,pk->p", waves[surface, 0], world) + phases[surface, 0]) * np.sin(
        np.einsum("pk,pk->p", waves[surface, 1], world) + phases[surface, 1])
    shade = 0.55 + 0.45 * pattern
    colors = np.clip(base[surface] * shade[:, None] * 255.0 + 0.5, 0, 255).astype(np.uint8)
    points = (np.tile(rays, (views, 1)) * depth[:, None]).astype(np.float32)
    return points.reshape(views, height, width, 3), colors.reshape(views, height, width, 3)


def simulate_walk(settings: WalkSettings = WalkSettings()) -> SimulatedSequence:
    poses, modes, walked = plan_walk(settings)
    intrinsics = intrinsics_for(settings)
    textures = _surface_textures(settings.seed, 6 + len(SOLID_BOXES))
    size = (settings.width, settings.height)
    chunks = [render_views(poses[i:i + 64], intrinsics, size, textures) for i in range(0, len(poses), 64)]
    return SimulatedSequence(
        settings=settings, camera_to_world=poses, local_points=np.concatenate([c[0] for c in chunks]),
        colors=np.concatenate([c[1] for c in chunks]), intrinsics=intrinsics,
        stamps_ns=np.arange(1, len(poses) + 1, dtype=np.int64) * settings.frame_period_ns,
        modes=modes, distance_walked_m=walked)


# ----------------------------------------------------------------------------------------------------------------
# Windows, as the node forms them


@dataclass(frozen=True)
class WindowingSettings:
    window_size: int = 4  # K: the last K-1 keyframes plus the newest set
    keyframe_min_motion_m: float = 0.4
    keyframe_min_rotation_deg: float = 15.0


def true_motion(sequence: SimulatedSequence):
    """The assembler's motion callback from the true poses (what the node gets from odometry in TF)."""

    def motion(previous, candidate) -> tuple[float, float]:
        before = sequence.camera_to_world[previous[0].index]
        after = sequence.camera_to_world[candidate[0].index]
        relative = before[:3, :3].T @ after[:3, :3]
        angle = math.degrees(math.acos(float(np.clip((np.trace(relative) - 1.0) / 2.0, -1.0, 1.0))))
        return float(np.linalg.norm(after[:3, 3] - before[:3, 3])), angle

    return motion


def assemble_windows(sequence: SimulatedSequence,
                     settings: WindowingSettings = WindowingSettings()) -> list[SimulatedWindow]:
    """Plays the frames through the node's WindowAssembler, one poll per frame, as the node does."""
    policy = WindowPolicy(window_size=settings.window_size, keyframe_min_motion_m=settings.keyframe_min_motion_m,
                          keyframe_min_rotation_deg=settings.keyframe_min_rotation_deg)
    assembler = WindowAssembler([CAMERA], policy, motion=true_motion(sequence))
    windows = []
    for frame in sequence.frames:
        keyframes_before = assembler.stats.keyframes
        assembler.add(frame)
        window = assembler.poll()
        if window is not None:
            windows.append(SimulatedWindow([member.index for member in window.frames],
                                           assembler.stats.keyframes > keyframes_before))
    return windows


@dataclass
class WalkSummary:
    frames: int
    keyframes: int
    windows: int
    distance_m: float
    mode_distance_m: dict[str, float] = field(default_factory=dict)


def summarize(sequence: SimulatedSequence, windows: list[SimulatedWindow]) -> WalkSummary:
    steps = np.linalg.norm(np.diff(sequence.camera_to_world[:, :3, 3], axis=0), axis=1)
    by_mode: dict[str, float] = {}
    for mode, step in zip(sequence.modes[1:], steps, strict=True):
        by_mode[mode] = by_mode.get(mode, 0.0) + float(step)
    # every view but a window's newest is a keyframe; the newest is one when the assembler said so
    keyframes = {index for window in windows for index in window.frame_indices[:-1]}
    keyframes |= {window.frame_indices[-1] for window in windows if window.newest_is_keyframe}
    return WalkSummary(len(sequence.stamps_ns), len(keyframes), len(windows), sequence.distance_walked_m, by_mode)
