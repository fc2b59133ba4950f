"""The typed form of a spatial question: what planners and LLM agents send instead of prose.

A `Query` names the form, the image locations (pixels, or a box with an explicit format), the camera,
the unit, an optional yes/no threshold and the frame of returned points. It arrives as a JSON object
in the request's `question` field (a string starting with "{"), validated against `QUERY_SCHEMA`
(JSON Schema, draft 2020-12, usable as-is as an LLM tool's parameter schema); natural language is
parsed into the same `Query` by `language.parse_question`. Both raise `QuestionError` saying why.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

from g2vlm_ros.reasoning.question import QuestionError

# form -> what it measures; the documented forms (names are part of the interface)
FORM_DESCRIPTIONS = {
    "depth": "z of a pixel's point in its camera's optical frame (1 pixel)",
    "distance": "straight-line distance camera -> a pixel's point (1 pixel)",
    "distance_between": "3-D distance between two pixels' points (2 pixels)",
    "closer": "which of two pixels is closer to its camera; value: its distance (2 pixels)",
    "farther": "which of two pixels is farther from its camera; value: its distance (2 pixels)",
    "height_difference": "height of the first pixel's point above the second's, along gravity (2 pixels)",
    "height_above_floor": "height above the floor of a pixel's point, or of the camera without a pixel",
    "box_width": "horizontal extent of the object in a box (foreground points), across the view",
    "box_height": "vertical extent (along gravity) of the object in a box",
    "box_size": "width and height of the object in a box; value: the larger",
    "free_space_ahead": "free distance along the camera's levelled heading, in a corridor (floor removed)",
    "free_space_check": "yes/no: is the free distance ahead at least `threshold`",
    "nearest_obstacle": "horizontal distance to the nearest obstacle point in the corridor ahead",
    "camera_motion": "camera displacement over the window, or over the last `time_span_s` seconds",
}
FORMS = tuple(FORM_DESCRIPTIONS)
PIXEL_COUNT = {"depth": (1,), "distance": (1,), "distance_between": (2,), "closer": (2,), "farther": (2,),
               "height_difference": (2,), "height_above_floor": (0, 1)}
BOX_FORMS = ("box_width", "box_height", "box_size")
CAMERA_FORMS = ("free_space_ahead", "free_space_check", "nearest_obstacle", "camera_motion")

METRES_PER_UNIT = {"m": 1.0, "cm": 0.01, "mm": 0.001, "ft": 0.3048, "in": 0.0254}
UNITS = tuple(METRES_PER_UNIT)
COMPARISONS = (">=", ">", "<=", "<")
BOX_FORMATS = ("xyxy", "xywh")


@dataclass(frozen=True)
class Query:
    form: str
    pixels: tuple[tuple[float, float], ...] = ()  # image pixels (x right, y down) of `camera`
    box: Optional[tuple[float, float, float, float]] = None  # always xyxy (x0, y0, x1, y1) after parsing
    camera: Optional[str] = None  # a configured camera name (None: the first asked one)
    unit: Optional[str] = None  # one of UNITS; None: metres, or model units without a metric scale
    threshold: Optional[float] = None  # yes/no questions: the value compared, in `threshold_unit`
    comparison: Optional[str] = None  # one of COMPARISONS: "is the value <comparison> threshold"
    time_span_s: Optional[float] = None  # camera_motion over the last seconds of the window
    corridor_width: Optional[float] = None  # corridor forms, in `unit` (metres by default)
    target_frame: Optional[str] = None  # frame of returned points (the node resolves it through TF)
    subject: Optional[str] = None  # what the question is about when not the camera/robot ("the ball")
    threshold_unit: Optional[str] = None  # unit of `threshold` and `corridor_width` when not `unit`
    pixel_cameras: tuple[Optional[str], ...] = ()  # per pixel, when the question names one ("(1, 2) in rear")

    def __post_init__(self):
        check_query(self)


_NUMBER = {"type": "number"}
_PIXEL = {"type": "array", "items": {"type": "number", "minimum": 0}, "minItems": 2, "maxItems": 2,
          "description": "[x, y] in the camera's image pixels, x right, y down"}
QUERY_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://github.com/g2vlm_ros/ask-query.schema.json",
    "title": "g2vlm_ros spatial query",
    "description": ("A spatial question about the latest perception window, sent as JSON in the `question` field "
                    "of /g2vlm/ask. Values are measured from the window's geometry, never guessed."),
    "type": "object",
    "additionalProperties": False,
    "required": ["form"],
    "properties": {
        "form": {"type": "string", "enum": list(FORMS),
                 "description": "; ".join(f"{name}: {text}" for name, text in FORM_DESCRIPTIONS.items())},
        "pixels": {"type": "array", "items": _PIXEL, "maxItems": 2,
                   "description": "pixels the form measures (depth/distance: 1; pairs: 2)"},
        "box": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4,
                "description": "box in image pixels; its layout is given by box_format"},
        "box_format": {"type": "string", "enum": list(BOX_FORMATS),
                       "description": "xyxy: [x0, y0, x1, y1] corners; xywh: [x, y, width, height]"},
        "camera": {"type": "string", "description": "a configured camera name; default: the first asked camera"},
        "unit": {"type": "string", "enum": list(UNITS),
                 "description": "unit of the answer (and of threshold/corridor_width); default m, or the model's "
                                "relative units when the window has no metric scale"},
        "threshold": {**_NUMBER, "description": "makes it a yes/no question: is the value <comparison> threshold"},
        "comparison": {"type": "string", "enum": list(COMPARISONS), "description": "default >="},
        "time_span_s": {**_NUMBER, "exclusiveMinimum": 0, "description": "camera_motion over the last seconds"},
        "corridor_width": {**_NUMBER, "exclusiveMinimum": 0,
                           "description": "width of the corridor ahead (free_space_*, nearest_obstacle)"},
        "target_frame": {"type": "string", "description": "frame of the returned points, e.g. base_link, odom, map"},
        "subject": {"type": "string", "description": "what is asked about when not the camera (label only)"},
    },
    "dependentRequired": {"box": ["box_format"], "comparison": ["threshold"]},
}


def _finite(value, field: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise QuestionError(f"'{field}' must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise QuestionError(f"'{field}' must be > 0, got {value!r}")
    return float(value)


def check_query(query: Query) -> None:
    """Raises QuestionError when the fields do not fit the form (called on every Query)."""
    form = query.form
    if form not in FORMS:
        raise QuestionError(f"unknown form {form!r}; forms: {', '.join(FORMS)}")
    counts = PIXEL_COUNT.get(form, (0,))
    if len(query.pixels) not in counts:
        raise QuestionError(f"form '{form}' takes {' or '.join(map(str, counts))} pixel(s), got {len(query.pixels)}")
    for x, y in query.pixels:
        if not (math.isfinite(x) and math.isfinite(y)) or x < 0 or y < 0:
            raise QuestionError(f"pixel ({x:g}, {y:g}) must have finite coordinates >= 0")
    if query.pixel_cameras and len(query.pixel_cameras) != len(query.pixels):
        raise QuestionError("pixel_cameras must name one camera (or None) per pixel")
    if (form in BOX_FORMS) != (query.box is not None):
        raise QuestionError(f"form '{form}' {'needs a box' if form in BOX_FORMS else 'takes no box'}")
    if query.box is not None:
        x0, y0, x1, y1 = query.box
        if not all(math.isfinite(v) for v in query.box) or x1 <= x0 or y1 <= y0:
            raise QuestionError(f"box {list(query.box)} must be finite xyxy corners with x1 > x0 and y1 > y0")
    for name in ("unit", "threshold_unit"):
        if getattr(query, name) is not None and getattr(query, name) not in UNITS:
            raise QuestionError(f"unknown {name} {getattr(query, name)!r}; units: {', '.join(UNITS)}")
    if query.comparison is not None and query.comparison not in COMPARISONS:
        raise QuestionError(f"unknown comparison {query.comparison!r}; comparisons: {', '.join(COMPARISONS)}")
    if (query.comparison is not None) and query.threshold is None:
        raise QuestionError("'comparison' needs a 'threshold'")
    if form == "free_space_check" and query.threshold is None:
        raise QuestionError("form 'free_space_check' needs a 'threshold' (the free distance asked for)")
    if query.time_span_s is not None and form != "camera_motion":
        raise QuestionError("'time_span_s' applies to form 'camera_motion' only")
    if query.corridor_width is not None and form not in ("free_space_ahead", "free_space_check", "nearest_obstacle"):
        raise QuestionError("'corridor_width' applies to the corridor forms (free_space_*, nearest_obstacle) only")


def query_from_json(text_or_dict) -> Query:
    """A Query from its JSON form (text or an already decoded mapping); QuestionError says what is wrong."""
    if isinstance(text_or_dict, str):
        try:
            data = json.loads(text_or_dict)
        except json.JSONDecodeError as error:
            raise QuestionError(f"the question starts with '{{' but is not valid JSON: {error}") from None
    else:
        data = text_or_dict
    if not isinstance(data, Mapping):
        raise QuestionError(f"a JSON query must be an object, got {type(data).__name__}")
    allowed = QUERY_SCHEMA["properties"]
    unknown = [key for key in data if key not in allowed]
    if unknown:
        raise QuestionError(f"unknown field(s) {', '.join(map(repr, unknown[:5]))} in the JSON query; "
                            f"fields: {', '.join(allowed)} (schema: ros2 run g2vlm_ros ask --schema)")
    if "form" not in data:
        raise QuestionError(f"the JSON query needs 'form' (one of {', '.join(FORMS)})")
    for key in ("form", "box_format", "camera", "unit", "comparison", "target_frame", "subject"):
        if key in data and not isinstance(data[key], str):
            raise QuestionError(f"'{key}' must be a string, got {data[key]!r}")
    pixels = data.get("pixels", [])
    if not isinstance(pixels, Sequence) or isinstance(pixels, str) or not all(
            isinstance(p, Sequence) and not isinstance(p, str) and len(p) == 2 for p in pixels):
        raise QuestionError(f"'pixels' must be a list of [x, y] pairs, got {pixels!r}")
    box = None
    if "box" in data:
        raw = data["box"]
        if not isinstance(raw, Sequence) or isinstance(raw, str) or len(raw) != 4:
            raise QuestionError(f"'box' must be 4 numbers, got {raw!r}")
        if "box_format" not in data:
            raise QuestionError("'box' needs 'box_format': \"xyxy\" ([x0, y0, x1, y1]) or \"xywh\" ([x, y, w, h])")
        if data["box_format"] not in BOX_FORMATS:
            raise QuestionError(f"'box_format' must be one of {', '.join(BOX_FORMATS)}, got {data['box_format']!r}")
        values = [_finite(v, "box") for v in raw]
        if data["box_format"] == "xywh":
            if values[2] <= 0 or values[3] <= 0:
                raise QuestionError(f"an xywh box needs width and height > 0, got {raw!r}")
            values = [values[0], values[1], values[0] + values[2], values[1] + values[3]]
        box = tuple(values)
    elif "box_format" in data:
        raise QuestionError("'box_format' given without a 'box'")

    def optional(key: str, positive: bool = False) -> Optional[float]:
        return _finite(data[key], key, positive) if key in data and data[key] is not None else None

    threshold = optional("threshold")
    comparison = data.get("comparison", ">=" if threshold is not None else None)
    return Query(form=data["form"], pixels=tuple((_finite(x, "pixels"), _finite(y, "pixels")) for x, y in pixels),
                 box=box, camera=data.get("camera"), unit=data.get("unit"), threshold=threshold,
                 comparison=comparison, time_span_s=optional("time_span_s", True),
                 corridor_width=optional("corridor_width", True), target_frame=data.get("target_frame"),
                 subject=data.get("subject"))


def parse_question(text: str, cameras: Sequence[str]) -> Query:
    """Natural language -> Query (see language.py); QuestionError with the reason when it cannot be grounded."""
    from g2vlm_ros.reasoning.language import parse_question as parse  # language.py builds on this module

    return parse(text, cameras)


def schema_text() -> str:
    """QUERY_SCHEMA as indented JSON (for `ask --schema` and the docs)."""
    return json.dumps(QUERY_SCHEMA, indent=2)
