"""Answers typed queries (query.py) and natural language (language.py) from a window's geometry, for planners.

Every value is measured on the window the node published (`value_source: "measured"`), in the unit asked for:
metres (or cm, mm, ft, in) only when the window has a metric scale; otherwise the model's relative units, said so
(`unit: "relative"`), and a request for a metric unit or a metric target frame is refused with the reason.
Heights and "up" come from gravity (gravity.py: the node's TF/IMU up vector, else a fitted floor plane), never
from a camera axis; box sizes and the corridor ahead come from measures.py. Points are returned in the target
frame (RobotFrame) when one is given, else in the window's world frame.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

from g2vlm_ros.geometry.rotations import rotation_angle_deg
from g2vlm_ros.reasoning.geometric import FREE_PERCENTILE, FREE_REGION, WindowGeometry
from g2vlm_ros.reasoning.gravity import Gravity, resolve_gravity
from g2vlm_ros.reasoning.language import parse_question
from g2vlm_ros.reasoning.measures import box_extent, corridor
from g2vlm_ros.reasoning.query import METRES_PER_UNIT, Query, query_from_json
from g2vlm_ros.reasoning.question import Answer, QuestionError
from g2vlm_ros.reasoning.robot_frame import RobotFrame

DEFAULT_CORRIDOR_M = 0.6  # a small indoor robot's width
RELATIVE_CORRIDOR = 0.4  # without a metric scale: corridor width as a fraction of the camera's height above floor
GRAVITY_POINTS = 200_000  # at most this many of the window's points go into the floor fit
STAMP_TOLERANCE = 0.1  # a time span matches a keyframe within 10 % of the span (at least 50 ms)


@dataclass(frozen=True)
class Pixel:
    x: float
    y: float
    camera: str
    view: int
    world: np.ndarray  # model units
    local: np.ndarray

    def describe(self) -> str:
        return f"({self.x:g}, {self.y:g}) in {self.camera}"


class PlannerAnswerer:
    """The SpatialAnswerer for planners and agents: JSON queries or plain language, answers in a robot frame."""

    def __init__(self, corridor_width_m: float = DEFAULT_CORRIDOR_M):
        self.corridor_width_m = corridor_width_m
        self._lock = threading.Lock()
        self._cached: tuple[object, Optional[WindowGeometry]] = (None, None)
        self._gravity_cache: dict = {}  # per window: the floor fit runs once per camera and up source

    def geometry(self, snapshot) -> WindowGeometry:
        with self._lock:
            cached_snapshot, geometry = self._cached
            if cached_snapshot is not snapshot:
                geometry = WindowGeometry.from_snapshot(snapshot)
                self._cached = (snapshot, geometry)
                self._gravity_cache = {}
            return geometry

    def answer(self, question: str, cameras: Sequence[str], snapshot, timeout_s: float,
               frame: Optional[RobotFrame] = None, now_ns: Optional[int] = None) -> Answer:
        """`now_ns`: the question's time on the window's clock, for window_age_s (NaN without it)."""
        query = to_query(question, cameras)  # refuse what cannot be grounded before touching the geometry
        return self.answer_query(query, cameras, self.geometry(snapshot), frame, now_ns)

    def answer_query(self, query: Query, cameras: Sequence[str], geometry: WindowGeometry,
                     frame: Optional[RobotFrame] = None, now_ns: Optional[int] = None) -> Answer:
        with self._lock:
            if self._cached[1] is not geometry:
                self._cached, self._gravity_cache = (None, geometry), {}
            cache = self._gravity_cache
        answer = _Measurement(query, cameras, geometry, frame, self.corridor_width_m, cache).answer()
        if now_ns is not None:
            answer.window_age_s = (now_ns - max(geometry.stamps_ns)) * 1e-9
        return answer


def to_query(question: str, cameras: Sequence[str]) -> Query:
    """A JSON object (text starting with "{") or plain language -> Query."""
    text = question.strip()
    return query_from_json(text) if text.startswith("{") else parse_question(text, cameras)


class _Measurement:
    """One query over one window: units, frames and gravity resolved once, then the form measured."""

    def __init__(self, query: Query, cameras: Sequence[str], geometry: WindowGeometry, frame: Optional[RobotFrame],
                 corridor_width_m: float, gravity_cache: Optional[dict] = None):
        if not cameras:
            raise QuestionError("no camera to answer over")
        self.query, self.geometry, self.frame = query, geometry, frame
        self.corridor_width_m = corridor_width_m
        self.camera = self._camera(query.camera, cameras, cameras[0])
        self.pixel_cameras = [self._camera(name, cameras, self.camera) for name in query.pixel_cameras] or \
            [self.camera] * len(query.pixels)
        metric = geometry.metres_per_unit
        if query.target_frame is not None and (frame is None or frame.name != query.target_frame):
            raise QuestionError(f"target_frame '{query.target_frame}' is not available here: the node resolves it "
                                "through TF (is the frame published?)")
        if frame is not None and frame.window_to_target is not None and metric is None:
            raise QuestionError(f"points in '{frame.name}' would mix metres with the model's relative units: this "
                                "window has no metric scale (scale_source) ; ask without target_frame")
        if query.unit is not None:
            if metric is None:
                raise QuestionError(f"the answer was asked in {query.unit}, but this window has no metric scale "
                                    "(see scale_source); ask without a unit for the model's relative units")
            self.factor, self.unit = metric / METRES_PER_UNIT[query.unit], query.unit
        else:
            self.factor, self.unit = geometry.scale, geometry.unit
        self.facts: list[str] = []
        self._gravity_cache = {} if gravity_cache is None else gravity_cache

    @staticmethod
    def _camera(name: Optional[str], cameras: Sequence[str], default: str) -> str:
        if name is None:
            return default
        if name not in cameras:
            raise QuestionError(f"camera '{name}' is not among the cameras of this question ({', '.join(cameras)})")
        return name

    # --- units and frames

    def fmt(self, model_value: float) -> str:
        value = model_value * self.factor
        if self.unit == "relative":
            return f"{value:.3f} (relative units, no metric scale)"
        return f"{value:.3f} {self.unit}"

    def to_model_units(self, value: float, unit: Optional[str], what: str) -> float:
        unit = unit or self.query.unit
        if unit is None:
            return value / self.geometry.scale  # metres with a metric scale, else the model's own units
        if self.geometry.metres_per_unit is None:
            raise QuestionError(f"the {what} is in {unit}, but this window has no metric scale (see scale_source)")
        return value * METRES_PER_UNIT[unit] / self.geometry.metres_per_unit

    def out_points(self, points) -> np.ndarray:
        scaled = np.asarray(points, dtype=np.float64).reshape(-1, 3) * self.geometry.scale
        return self.frame.to_target(scaled) if self.frame is not None else scaled

    # --- geometry access

    def pixel(self, index: int) -> Pixel:
        x, y = self.query.pixels[index]
        camera = self.pixel_cameras[index]
        geometry = self.geometry
        view = geometry.newest_view(camera)
        row, column = geometry.model_pixel(view, x, y)
        world, local = geometry.world_points[view, row, column], geometry.local_points[view, row, column]
        if not (np.isfinite(world).all() and np.isfinite(local).all() and local[2] > 0):
            raise QuestionError(f"the model has no valid geometry at pixel {x:g}, {y:g} of '{camera}'")
        return Pixel(x, y, camera, view, world.astype(np.float64), local.astype(np.float64))

    def view(self) -> int:
        return self.geometry.newest_view(self.camera)

    def centre(self, view: int) -> np.ndarray:
        return self.geometry.camera_to_world[view, :3, 3]

    def gravity(self) -> Gravity:
        view = self.view()
        given = self.frame.up_in_window if self.frame is not None else None
        source = self.frame.up_source if self.frame is not None else "none"
        key = (view, None if given is None else tuple(np.round(np.asarray(given, dtype=np.float64), 9)), source)
        if key not in self._gravity_cache:
            points = self.geometry.world_points.reshape(-1, 3)
            step = max(1, points.shape[0] // GRAVITY_POINTS)
            points = points[::step].astype(np.float64)
            points = points[np.isfinite(points).all(axis=1)]
            try:
                self._gravity_cache[key] = resolve_gravity(points, self.centre(view),
                                                           -self.geometry.camera_to_world[view, :3, 1], given, source)
            except QuestionError as error:
                self._gravity_cache[key] = error
        gravity = self._gravity_cache[key]
        if isinstance(gravity, QuestionError):
            raise QuestionError(str(gravity))
        self.facts.append(gravity.describe())
        return gravity

    # --- the answer

    def answer(self) -> Answer:
        form = self.query.form
        text, value, points = getattr(self, "_" + form)()
        query = self.query
        if query.threshold is not None:
            threshold = self.to_model_units(query.threshold, query.threshold_unit, "threshold")
            comparison = query.comparison or ">="
            holds = {">=": value >= threshold, ">": value > threshold, "<=": value <= threshold,
                     "<": value < threshold}[comparison]
            asked = f"(asked: {comparison} {self.fmt(threshold)})"
            text = f"{'yes' if holds else 'no'}: {text[0].lower()}{text[1:]} {asked}"
        if self.geometry.scale_note:
            self.facts.append(self.geometry.scale_note)
        elif self.unit == "relative":
            self.facts.append("no metric scale: lengths are in the model's relative units")
        return Answer(answer=text, reasoning="; ".join(dict.fromkeys(self.facts)), value=float(value * self.factor),
                      unit=self.unit, points=self.out_points(points), form=form, value_source="measured",
                      frame_id=self.frame.name if self.frame is not None else "")

    def _depth(self):
        point = self.pixel(0)
        self.facts.append(f"z of the model's point at {point.describe()} in its camera's optical frame")
        return f"The depth at {point.describe()} is {self.fmt(point.local[2])}.", point.local[2], [point.world]

    def _distance(self):
        point = self.pixel(0)
        value = float(np.linalg.norm(point.local))
        self.facts.append(f"straight-line distance from camera {point.camera} to its point at {point.describe()}")
        return f"The distance to {point.describe()} is {self.fmt(value)}.", value, [point.world]

    def _distance_between(self):
        first, second = self.pixel(0), self.pixel(1)
        value = float(np.linalg.norm(first.world - second.world))
        self.facts.append("3-D distance between the two points in the window's world frame")
        return (f"{first.describe()} and {second.describe()} are {self.fmt(value)} apart.", value,
                [first.world, second.world])

    def _closer(self, closer: bool = True):
        pair = self.pixel(0), self.pixel(1)
        ranges = [float(np.linalg.norm(p.local)) for p in pair]
        pick = int(np.argmin(ranges)) if closer else int(np.argmax(ranges))
        self.facts.append(f"distances from their cameras: {self.fmt(ranges[0])} and {self.fmt(ranges[1])}")
        return (f"{pair[pick].describe()} is {'closer' if closer else 'farther'} ({self.fmt(ranges[pick])} vs "
                f"{self.fmt(ranges[1 - pick])}).", ranges[pick], [pair[0].world, pair[1].world])

    def _farther(self):
        return self._closer(closer=False)

    def _height_difference(self):
        first, second = self.pixel(0), self.pixel(1)
        value = float((first.world - second.world) @ self.gravity().up)
        relation = "higher" if value >= 0 else "lower"
        self.facts.append("height difference along gravity")
        return (f"{first.describe()} is {self.fmt(abs(value))} {relation} than {second.describe()}.", value,
                [first.world, second.world])

    def _height_above_floor(self):
        gravity = self.gravity()
        if self.query.pixels:
            point = self.pixel(0)
            value = float(gravity.height(point.world[None])[0])
            return f"{point.describe()} is {self.fmt(value)} above the floor.", value, [point.world]
        centre = self.centre(self.view())
        value = float(gravity.height(centre[None])[0])
        return f"Camera {self.camera} is {self.fmt(value)} above the floor.", value, [centre]

    def _box(self):
        x0, y0, x1, y1 = self.query.box
        view = self.view()
        width, height = self.geometry.image_sizes[view]
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise QuestionError(f"box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] is not inside camera '{self.camera}' "
                                f"({width}x{height})")
        row0, col0 = self.geometry.model_pixel(view, x0, y0)
        row1, col1 = self.geometry.model_pixel(view, min(x1, width - 1), min(y1, height - 1))
        points = self.geometry.world_points[view, row0:row1 + 1, col0:col1 + 1].reshape(-1, 3).astype(np.float64)
        depth = self.geometry.depth[view, row0:row1 + 1, col0:col1 + 1].reshape(-1)
        points = points[np.isfinite(points).all(axis=1) & np.isfinite(depth) & (depth > 0)]
        try:
            gravity: Optional[Gravity] = self.gravity()
        except QuestionError as error:
            gravity = None
            self.facts.append(f"no gravity ({error})")
        extent = box_extent(points, self.centre(view), self.geometry.camera_to_world[view, :3, :3], gravity)
        self.facts += [f"object = the nearest depth group in the box: {extent.foreground_points} of "
                       f"{extent.box_points} points, {self.fmt(extent.foreground_depth[0])} to "
                       f"{self.fmt(extent.foreground_depth[1])} from the camera (the box spans "
                       f"{self.fmt(extent.box_depth[0])} to {self.fmt(extent.box_depth[1])})", extent.axes]
        label = f"The object in [{x0:g}, {y0:g}, {x1:g}, {y1:g}] in {self.camera}"
        return extent, label

    def _box_width(self):
        extent, label = self._box()
        return f"{label} is {self.fmt(extent.width)} wide.", extent.width, extent.corners

    def _box_height(self):
        extent, label = self._box()
        return f"{label} is {self.fmt(extent.height)} tall.", extent.height, extent.corners

    def _box_size(self):
        extent, label = self._box()
        return (f"{label} is {self.fmt(extent.width)} wide and {self.fmt(extent.height)} tall.",
                max(extent.width, extent.height), extent.corners)

    def _corridor(self):
        view = self.view()
        gravity = self.gravity()
        centre = self.centre(view)
        if self.query.corridor_width is not None:
            width = self.to_model_units(self.query.corridor_width, self.query.threshold_unit, "corridor width")
        elif self.geometry.metres_per_unit is not None:
            width = self.corridor_width_m / self.geometry.metres_per_unit
        elif gravity.floor_offset is not None:
            width = RELATIVE_CORRIDOR * float(gravity.height(centre[None])[0])
            self.facts.append(f"no metric scale: corridor {RELATIVE_CORRIDOR:g} x the camera's height wide")
        else:
            raise QuestionError("no metric scale and no floor: give corridor_width in the model's units")
        points = self.geometry.world_points.reshape(-1, 3).astype(np.float64)
        points = points[np.isfinite(points).all(axis=1)]
        lane = corridor(points, centre, self.geometry.camera_to_world[view, :3, 2], gravity, width)
        self.facts += [f"corridor {self.fmt(width)} wide along camera {self.camera}'s heading levelled by gravity",
                       lane.note, f"{lane.obstacle_points} obstacle points in it"]
        return lane

    def _free_space_ahead(self):
        try:
            lane = self._corridor()
        except QuestionError as error:
            if self.query.form == "nearest_obstacle" or "no up direction" not in str(error):
                raise
            return self._free_space_without_gravity(str(error))
        if lane.free_distance is None:
            if self.query.threshold is not None:  # "is there at least X": answerable up to what was seen
                self.facts.append("no obstacle seen in the corridor; value: how far it was seen free")
                return (f"No obstacle seen ahead of {self.camera}; seen free for {self.fmt(lane.reach)}.", lane.reach,
                        [])
            raise QuestionError(f"no obstacle seen in the corridor ahead of {self.camera} (seen up to "
                                f"{self.fmt(lane.reach)}): the free distance is not measured")
        return (f"Ahead of {self.camera} the space is free for {self.fmt(lane.free_distance)}.", lane.free_distance,
                [lane.first_point])

    _free_space_check = _free_space_ahead

    def _free_space_without_gravity(self, why: str):
        """The camera's central image region when gravity is unknown (as before; said so)."""
        view = self.view()
        height, width = self.geometry.depth.shape[1:]
        rows = slice(int(height * (1 - FREE_REGION) / 2), max(int(height * (1 + FREE_REGION) / 2), 1))
        columns = slice(int(width * (1 - FREE_REGION) / 2), max(int(width * (1 + FREE_REGION) / 2), 1))
        region = self.geometry.depth[view, rows, columns]
        valid = region[np.isfinite(region) & (region > 0)]
        if valid.size == 0:
            raise QuestionError(f"camera '{self.camera}' has no valid depth straight ahead")
        value = float(np.percentile(valid, FREE_PERCENTILE))
        pose = self.geometry.camera_to_world[view]
        self.facts += [f"{why.split(':')[0]}: measured along the camera's optical axis instead, floor not removed",
                       f"{FREE_PERCENTILE:g}th percentile depth over the central {FREE_REGION * 100:g}% of the image"]
        return (f"Straight ahead of {self.camera} (optical axis) the space is free for {self.fmt(value)}.", value,
                [pose[:3, :3] @ np.array([0.0, 0.0, value]) + pose[:3, 3]])

    def _nearest_obstacle(self):
        lane = self._corridor()
        if lane.nearest_distance is None:
            raise QuestionError(f"no obstacle seen in the corridor ahead of {self.camera} (seen up to "
                                f"{self.fmt(lane.reach)})")
        return (f"The nearest obstacle ahead of {self.camera} is {self.fmt(lane.nearest_distance)} away "
                "(horizontally).", lane.nearest_distance, [lane.nearest_point])

    def _camera_motion(self):
        geometry = self.geometry
        views = sorted((i for i, name in enumerate(geometry.cameras) if name == self.camera),
                       key=lambda i: geometry.stamps_ns[i])
        if len(views) < 2:
            raise QuestionError(f"camera '{self.camera}' has one frame in the latest window; motion needs "
                                "window_size >= 2")
        end = views[-1]
        start = views[0]
        span = self.query.time_span_s
        covered = (geometry.stamps_ns[end] - geometry.stamps_ns[start]) * 1e-9
        if span is not None:
            wanted = geometry.stamps_ns[end] - span * 1e9
            start = min(views[:-1], key=lambda i: abs(geometry.stamps_ns[i] - wanted))
            miss = abs(geometry.stamps_ns[start] - wanted) * 1e-9
            if miss > max(0.05, STAMP_TOLERANCE * span):
                ages = ", ".join(f"-{(geometry.stamps_ns[end] - geometry.stamps_ns[i]) * 1e-9:.2f}" for i in views[:-1])
                raise QuestionError(f"the window's keyframes of '{self.camera}' cover {covered:.2f} s (older keyframes "
                                    f"at {ages} s): none is {span:g} s before the newest")
        seconds = (geometry.stamps_ns[end] - geometry.stamps_ns[start]) * 1e-9
        first, last = geometry.camera_to_world[start], geometry.camera_to_world[end]
        value = float(np.linalg.norm(last[:3, 3] - first[:3, 3]))
        turn = rotation_angle_deg(first[:3, :3].T @ last[:3, :3])
        self.facts.append(f"keyframes {seconds:.2f} s apart; rotation {turn:.1f} degrees")
        return (f"Camera {self.camera} moved {self.fmt(value)} over the last {seconds:.2f} s.", value,
                [first[:3, 3], last[:3, 3]])

