"""The question forms the geometric answerer understands, and their parser (no ROS, no model).

A question names image locations explicitly, so the answer can be computed from the geometry
instead of guessed:

  point   (x, y)                 a pixel of a camera's newest image, x right, y down, in that
          (x, y) in <camera>     image's own resolution; without a camera: the first requested one
  box     [x0, y0, x1, y1]       a pixel rectangle (corners), optionally "in <camera>"
  camera  a configured camera name anywhere in the question (else the first requested camera)

Forms (case-insensitive; wording around the keywords is free):

  depth       "depth at P"                             z of P in its camera's optical frame
  range       "how far is P" / "distance to P"         straight-line distance camera -> P
  between     "distance between P and Q"               distance P <-> Q  ("how far apart are P and Q")
  closer      "which is closer, P or Q" (or nearer / farther / further)
  height      "height difference between P and Q" / "how much higher is P than Q"
              height of P above Q along the first point's camera up axis (-y of its optical frame)
  free        "free distance straight ahead [of <camera>]" ("clear" / "free space" / "obstacle" + "ahead")
              5th percentile depth in the central 20 % x 20 % of the camera's image
  moved       "how far did <camera> move" / "camera displacement"   oldest -> newest frame in the window
  width       "width of B"    3-D distance between the midpoints of the box's left and right edges
  tall        "height of B" / "how tall is B"    same between the top and bottom edge midpoints
  size        "size of B" / "how big is B"       width and height; value = the larger one

Anything else is refused with the list above (`SUPPORTED_FORMS`), never answered with a guess.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from g2vlm_ros.reasoning.question import QuestionError

NUMBER = r"(-?\d+(?:\.\d+)?)"
CAMERA_SUFFIX = r"(?:\s+(?:in|of|on|from)\s+(?:the\s+)?(?:camera\s+)?([A-Za-z][A-Za-z0-9_]*))?"
POINT = re.compile(r"\(\s*" + NUMBER + r"\s*,\s*" + NUMBER + r"\s*\)" + CAMERA_SUFFIX)
BOX = re.compile(r"\[\s*" + r"\s*,\s*".join([NUMBER] * 4) + r"\s*\]" + CAMERA_SUFFIX)

SUPPORTED_FORMS = (
    "depth at (x, y) | how far is (x, y) | distance between (x1, y1) and (x2, y2) | "
    "which is closer, (x1, y1) or (x2, y2) | height difference between (x1, y1) and (x2, y2) | "
    "free distance straight ahead [of <camera>] | how far did <camera> move | "
    "width / height / size of [x0, y0, x1, y1]; pixels may add 'in <camera>'"
)


@dataclass(frozen=True)
class PixelRef:
    x: float
    y: float
    camera: str


@dataclass(frozen=True)
class BoxRef:
    x0: float
    y0: float
    x1: float
    y1: float
    camera: str


@dataclass(frozen=True)
class ParsedQuestion:
    form: str  # depth | range | between | closer | farther | height | free | moved | width | tall | size
    points: tuple[PixelRef, ...] = ()
    box: Optional[BoxRef] = None
    camera: str = ""  # for free / moved


def _camera(name: Optional[str], allowed: Sequence[str], default: str) -> str:
    if name is None:
        return default
    if name not in allowed:
        raise QuestionError(f"camera '{name}' is not among the cameras of this question ({', '.join(allowed)})")
    return name


def _refuse(why: str) -> QuestionError:
    return QuestionError(f"{why}. This node answers questions of these forms: {SUPPORTED_FORMS}")


def parse_question(question: str, cameras: Sequence[str]) -> ParsedQuestion:
    """Parses `question` over `cameras` (the first is the default); QuestionError when not grounded."""
    if not cameras:
        raise QuestionError("no camera to answer over")
    default = cameras[0]
    boxes = [BoxRef(*(float(v) for v in m.groups()[:4]), _camera(m.group(5), cameras, default))
             for m in BOX.finditer(question)]
    without_boxes = BOX.sub(" B ", question)
    points = [PixelRef(float(m.group(1)), float(m.group(2)), _camera(m.group(3), cameras, default))
              for m in POINT.finditer(without_boxes)]
    text = " " + re.sub(r"\s+", " ", POINT.sub(" P ", without_boxes).lower()) + " "
    named = [name for name in cameras if re.search(rf"\b{re.escape(name.lower())}\b", text)]
    camera = named[0] if named else default

    def has(*words: str) -> bool:
        return any(word in text for word in words)

    if boxes:
        if len(boxes) > 1 or points:
            raise _refuse("a box question takes exactly one box and no points")
        if has("width", "wide"):
            return ParsedQuestion("width", box=boxes[0])
        if has("height", "tall", "high"):
            return ParsedQuestion("tall", box=boxes[0])
        if has("size", "big", "large", "dimension", "extent"):
            return ParsedQuestion("size", box=boxes[0])
        raise _refuse("the question names a box but not what to measure (width, height or size)")
    if len(points) == 2:
        pair = tuple(points)
        if has("closer", "nearer", "closest", "nearest"):
            return ParsedQuestion("closer", pair)
        if has("farther", "further", "farthest", "furthest"):
            return ParsedQuestion("farther", pair)
        if has("higher", "lower", "height", "above", "below"):
            return ParsedQuestion("height", pair)
        if has("distance", "apart", "far", "between"):
            return ParsedQuestion("between", pair)
        raise _refuse("the question names two points but not what to compare")
    if len(points) == 1:
        if has("depth"):
            return ParsedQuestion("depth", tuple(points))
        if has("far", "distance", "range"):
            return ParsedQuestion("range", tuple(points))
        raise _refuse("the question names one point but not what to measure (depth or distance)")
    if len(points) > 2:
        raise _refuse(f"the question names {len(points)} points; the forms take one or two")
    if has(" ahead", "in front", "straight") and has("free", "clear", "obstacle", "space", "room"):
        return ParsedQuestion("free", camera=camera)
    if has(" move", "moved", "travel", "displacement", "displaced"):
        return ParsedQuestion("moved", camera=camera)
    raise _refuse("the question names no image location (pixel (x, y) or box [x0, y0, x1, y1]) "
                  "and is not about free space ahead or camera motion")
