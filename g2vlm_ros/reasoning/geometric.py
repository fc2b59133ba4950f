"""Answers the question forms of `grammar.py` from a perception window's geometry (no ROS, no model).

Every number comes from the same window the node published: the newest frame of each camera, its
predicted points (model units) and the window's metric scale. Lengths are in metres only when the
window has a metric scale; otherwise the unit is "relative" and the answer says so. Points are
returned in the window's world frame (the node's `world_frame`), scaled like the cloud.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

from g2vlm_ros.geometry.rotations import rotation_angle_deg
from g2vlm_ros.reasoning.grammar import BoxRef, ParsedQuestion, PixelRef, parse_question
from g2vlm_ros.reasoning.question import Answer, QuestionError

FREE_REGION = 0.2  # central fraction of the image (width and height) that counts as "straight ahead"
FREE_PERCENTILE = 5.0  # robust nearest obstacle: ignores a few stray pixels


@dataclass
class WindowGeometry:
    """What the answerer reads of one window: numpy copies, so a question never holds GPU tensors."""

    cameras: list[str]  # camera of each view
    stamps_ns: list[int]
    image_sizes: list[tuple[int, int]]  # (width, height) of each view's source image
    depth: np.ndarray  # [N,H,W] model units
    local_points: np.ndarray  # [N,H,W,3]
    world_points: np.ndarray  # [N,H,W,3]
    camera_to_world: np.ndarray  # [N,4,4]
    metres_per_unit: Optional[float]  # None: relative units
    scale_note: str = ""

    @classmethod
    def from_snapshot(cls, snapshot) -> WindowGeometry:
        """From the node's Snapshot (window frames, GeometryResult, ScaleEstimate)."""
        frames, result, scale = snapshot.window.frames, snapshot.result, snapshot.scale

        def host(tensor):
            return tensor.detach().float().cpu().numpy()

        note = "" if not scale.valid else f"scale {scale.metres_per_unit:.4g} m per model unit from {scale.source}"
        return cls([f.camera for f in frames], [f.stamp_ns for f in frames],
                   [(f.rgb.shape[1], f.rgb.shape[0]) for f in frames], host(result.depth), host(result.local_points),
                   host(result.world_points), host(result.camera_to_world).astype(np.float64),
                   scale.metres_per_unit if scale.valid else None, note)

    @property
    def scale(self) -> float:
        return self.metres_per_unit or 1.0

    @property
    def unit(self) -> str:
        return "m" if self.metres_per_unit is not None else "relative"

    def newest_view(self, camera: str) -> int:
        views = [i for i, name in enumerate(self.cameras) if name == camera]
        if not views:
            raise QuestionError(f"camera '{camera}' is not in the latest window")
        return max(views, key=lambda i: self.stamps_ns[i])

    def model_pixel(self, view: int, x: float, y: float) -> tuple[int, int]:
        """Source-image pixel -> nearest pixel of the model's working resolution (pixel centres aligned)."""
        width, height = self.image_sizes[view]
        if not (0 <= x <= width - 1 and 0 <= y <= height - 1):
            raise QuestionError(f"pixel ({x:g}, {y:g}) is outside camera '{self.cameras[view]}' ({width}x{height})")
        model_height, model_width = self.depth.shape[1:]
        column = int(round((x + 0.5) * model_width / width - 0.5))
        row = int(round((y + 0.5) * model_height / height - 0.5))
        return min(max(row, 0), model_height - 1), min(max(column, 0), model_width - 1)


@dataclass(frozen=True)
class Located:
    """A pixel's geometry: world point and camera-frame point, already scaled."""

    ref: PixelRef
    view: int
    world: np.ndarray
    local: np.ndarray

    def describe(self) -> str:
        return f"({self.ref.x:g}, {self.ref.y:g}) in {self.ref.camera}"


def locate(geometry: WindowGeometry, ref: PixelRef) -> Located:
    view = geometry.newest_view(ref.camera)
    row, column = geometry.model_pixel(view, ref.x, ref.y)
    world, local = geometry.world_points[view, row, column], geometry.local_points[view, row, column]
    if not (np.isfinite(world).all() and np.isfinite(local).all() and local[2] > 0):
        raise QuestionError(f"the model has no valid geometry at pixel {ref.x:g}, {ref.y:g} of '{ref.camera}'")
    return Located(ref, view, world.astype(np.float64) * geometry.scale, local.astype(np.float64) * geometry.scale)


def _number(value: float, unit: str) -> str:
    return f"{value:.3f} m" if unit == "m" else f"{value:.3f} (relative units, no metric scale)"


def _answer(text: str, value: float, geometry: WindowGeometry, facts: list[str], points) -> Answer:
    if geometry.scale_note:
        facts.append(geometry.scale_note)
    elif geometry.unit == "relative":
        facts.append("no metric scale: lengths are in the model's relative units")
    return Answer(answer=text, reasoning="; ".join(facts), value=float(value), unit=geometry.unit,
                  points=np.asarray(points, dtype=np.float64).reshape(-1, 3))


def _box_edges(geometry: WindowGeometry, box: BoxRef, horizontal: bool) -> tuple[Located, Located]:
    x0, x1 = sorted((box.x0, box.x1))
    y0, y1 = sorted((box.y0, box.y1))
    if horizontal:
        y = (y0 + y1) / 2
        return (locate(geometry, PixelRef(x0, y, box.camera)), locate(geometry, PixelRef(x1, y, box.camera)))
    x = (x0 + x1) / 2
    return locate(geometry, PixelRef(x, y0, box.camera)), locate(geometry, PixelRef(x, y1, box.camera))


class GeometricAnswerer:
    """The node's always-available answerer: parse (grammar.py), then measure (this module).

    The window's arrays are copied to the host once per window, not once per question: a burst of
    questions then costs the node little more than parsing.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._cached: tuple[object, Optional[WindowGeometry]] = (None, None)

    def geometry(self, snapshot) -> WindowGeometry:
        with self._lock:
            cached_snapshot, geometry = self._cached
            if cached_snapshot is not snapshot:
                geometry = WindowGeometry.from_snapshot(snapshot)
                self._cached = (snapshot, geometry)
            return geometry

    def answer(self, question: str, cameras: Sequence[str], snapshot, timeout_s: float) -> Answer:
        parsed = parse_question(question, cameras)  # refuse ungrounded questions before touching the geometry
        return answer_parsed(parsed, self.geometry(snapshot))


def answer_parsed(parsed: ParsedQuestion, geometry: WindowGeometry) -> Answer:
    unit, form = geometry.unit, parsed.form
    if form in ("depth", "range"):
        point = locate(geometry, parsed.points[0])
        value = point.local[2] if form == "depth" else float(np.linalg.norm(point.local))
        what = "depth" if form == "depth" else "distance from the camera"
        return _answer(f"The {what} at {point.describe()} is {_number(value, unit)}.", value, geometry,
                       [f"{what} of the model's point at {point.describe()}: {_number(value, unit)}"], [point.world])
    if form in ("between", "closer", "farther", "height"):
        first, second = (locate(geometry, ref) for ref in parsed.points)
        if form == "between":
            value = float(np.linalg.norm(first.world - second.world))
            return _answer(f"{first.describe()} and {second.describe()} are {_number(value, unit)} apart.", value,
                           geometry, [f"3-D distance between the two points: {_number(value, unit)}"],
                           [first.world, second.world])
        if form == "height":
            up = -geometry.camera_to_world[first.view, :3, 1]  # image up (-y) of the first point's camera
            value = float(np.dot(first.world - second.world, up))
            relation = "higher" if value >= 0 else "lower"
            return _answer(f"{first.describe()} is {_number(abs(value), unit)} {relation} than {second.describe()}.",
                           value, geometry, [f"height along the up axis (-y) of camera {first.ref.camera}: "
                                             f"{_number(value, unit)}"], [first.world, second.world])
        ranges = [float(np.linalg.norm(p.local)) for p in (first, second)]
        pick = int(np.argmin(ranges)) if form == "closer" else int(np.argmax(ranges))
        chosen = (first, second)[pick]
        word = "closer" if form == "closer" else "farther"
        return _answer(f"{chosen.describe()} is {word} ({_number(ranges[pick], unit)} vs "
                       f"{_number(ranges[1 - pick], unit)}).", ranges[pick], geometry,
                       [f"distances from their cameras: {_number(ranges[0], unit)} and {_number(ranges[1], unit)}"],
                       [first.world, second.world])
    if form == "free":
        view = geometry.newest_view(parsed.camera)
        height, width = geometry.depth.shape[1:]
        rows = slice(int(height * (1 - FREE_REGION) / 2), max(int(height * (1 + FREE_REGION) / 2), 1))
        columns = slice(int(width * (1 - FREE_REGION) / 2), max(int(width * (1 + FREE_REGION) / 2), 1))
        region = geometry.depth[view, rows, columns]
        valid = region[np.isfinite(region) & (region > 0)]
        if valid.size == 0:
            raise QuestionError(f"camera '{parsed.camera}' has no valid depth straight ahead")
        value = float(np.percentile(valid, FREE_PERCENTILE)) * geometry.scale
        centre = geometry.camera_to_world[view].copy()
        centre[:3, 3] *= geometry.scale
        obstacle = centre[:3, :3] @ np.array([0.0, 0.0, value]) + centre[:3, 3]
        return _answer(f"Straight ahead of {parsed.camera} the space is free for {_number(value, unit)}.", value,
                       geometry, [f"{FREE_PERCENTILE:g}th percentile depth over the central "
                                  f"{FREE_REGION * 100:g}% of the image ({valid.size} pixels)"], [obstacle])
    if form == "moved":
        views = sorted((i for i, name in enumerate(geometry.cameras) if name == parsed.camera),
                       key=lambda i: geometry.stamps_ns[i])
        if len(views) < 2:
            raise QuestionError(f"camera '{parsed.camera}' has one frame in the latest window; motion needs "
                                "window_size >= 2")
        start, end = geometry.camera_to_world[views[0]], geometry.camera_to_world[views[-1]]
        value = float(np.linalg.norm(end[:3, 3] - start[:3, 3])) * geometry.scale
        seconds = (geometry.stamps_ns[views[-1]] - geometry.stamps_ns[views[0]]) * 1e-9
        turn = rotation_angle_deg(start[:3, :3].T @ end[:3, :3])
        return _answer(f"Camera {parsed.camera} moved {_number(value, unit)} over the last {seconds:.2f} s.", value,
                       geometry, [f"{len(views)} keyframes; translation {_number(value, unit)}, rotation "
                                  f"{turn:.1f} degrees"], [start[:3, 3] * geometry.scale, end[:3, 3] * geometry.scale])
    box = parsed.box
    horizontal = _box_edges(geometry, box, horizontal=True)
    vertical = _box_edges(geometry, box, horizontal=False)
    width = float(np.linalg.norm(horizontal[0].world - horizontal[1].world))
    tall = float(np.linalg.norm(vertical[0].world - vertical[1].world))
    label = f"the box [{box.x0:g}, {box.y0:g}, {box.x1:g}, {box.y1:g}] in {box.camera}"
    facts = [f"width between the left and right edge midpoints {_number(width, unit)}",
             f"height between the top and bottom edge midpoints {_number(tall, unit)}"]
    corners = [p.world for p in horizontal + vertical]
    if form == "width":
        return _answer(f"{label} is {_number(width, unit)} wide.", width, geometry, facts, corners)
    if form == "tall":
        return _answer(f"{label} is {_number(tall, unit)} tall.", tall, geometry, facts, corners)
    return _answer(f"{label} is {_number(width, unit)} wide and {_number(tall, unit)} tall.", max(width, tall),
                   geometry, facts, corners)
