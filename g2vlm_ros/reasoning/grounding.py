"""Object grounding: the semantic expert says where a named thing is, the node measures it.

A question about an object ("How wide is the ball?", a query with a `subject`) names no pixels, so
the geometric forms cannot answer it alone. With a checkpoint that has a tokenizer, the semantic
expert is asked where the subject is. Qwen2-VL (G2VLM's language model) answers in its grounding
format, coordinates on a 0-1000 grid over the image (x right, y down):

    <|object_ref_start|>the ball<|object_ref_end|><|box_start|>(108,291),(170,350)<|box_end|>

The parser also accepts the same text with the special tokens stripped (tokenizers that skip them
when decoding), a bare "(x1,y1),(x2,y2)" and a point "(x, y)". Whatever the model says, `value`
is then measured on the window (a box: the box-size form over the points inside it; a point or a
box for a distance/depth question: that pixel's geometry). The model's text is only where to
measure, reported as its estimate; a reply with no usable box or point is refused with the reply
quoted, never answered with a number the model wrote.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

GRID = 1000.0  # Qwen2-VL's grounding coordinates: 0..1000 over the image's width and height
NUMBER = r"(-?\d+(?:\.\d+)?)"
PAIR = r"\(\s*" + NUMBER + r"\s*,\s*" + NUMBER + r"\s*\)"
REF = re.compile(r"<\|object_ref_start\|>(.*?)<\|object_ref_end\|>", re.DOTALL)
BOX = re.compile(PAIR + r"\s*,?\s*(?:to\s+)?" + PAIR)
POINT = re.compile(PAIR)
SPECIAL = re.compile(r"<\|[a-z_]+\|>")
INCOMPLETE_BOX = re.compile(r"\s*,\s*\(")
QUOTED_CHARACTERS = 120  # of the model's reply in a refusal


def grounding_prompt(subject: str) -> str:
    """The request for the subject's box, in the wording Qwen2-VL's grounding data uses."""
    return (f"Detect the bounding box of <|object_ref_start|>{subject}<|object_ref_end|> in the image. "
            "Output the box as (x1,y1),(x2,y2) on a 0-1000 grid.")


@dataclass(frozen=True)
class Grounding:
    """Where the model put the subject, in pixels of the image it saw."""

    label: str  # the object_ref text, or "" when the reply has none
    box: Optional[tuple[float, float, float, float]]  # x0, y0, x1, y1 (x0 <= x1, y0 <= y1); None for a point
    point: tuple[float, float]  # the box's centre, or the point

    def describe(self) -> str:
        where = (f"box [{', '.join(f'{v:.0f}' for v in self.box)}]" if self.box is not None
                 else f"point ({self.point[0]:.0f}, {self.point[1]:.0f})")
        return f"{where} (pixels){f' for {self.label!r}' if self.label else ''}"


class GroundingError(ValueError):
    """The model's reply holds no usable location; the message quotes it and says why."""


def quote(text: str) -> str:
    text = " ".join(text.split())
    return repr(text[:QUOTED_CHARACTERS] + ("..." if len(text) > QUOTED_CHARACTERS else ""))


def parse_grounding(text: str, width: int, height: int) -> Grounding:
    """The first box (else point) of a grounding reply, in pixels of a width x height image.

    Raises GroundingError when the reply has no location, or only ones off the 0-1000 grid or degenerate.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, not {width}x{height}")
    labels = [label.strip() for label in REF.findall(text)]
    plain = SPECIAL.sub(" ", REF.sub(" ", text))
    problems = []
    for match in BOX.finditer(plain):
        x0, y0, x1, y1 = (float(value) for value in match.groups())
        problem = _off_grid(x0, y0, x1, y1)
        if problem:
            problems.append(problem)
            continue
        (x0, x1), (y0, y1) = sorted((x0, x1)), sorted((y0, y1))
        if x0 == x1 and y0 == y1:
            return _point(labels, x0, y0, width, height)
        if x0 == x1 or y0 == y1:
            problems.append(f"the box ({x0:g},{y0:g}),({x1:g},{y1:g}) has no area")
            continue
        # the grid's 1000 is the image's far edge: keep the box inside the image
        box = (_pixel(x0, width), _pixel(y0, height), _pixel(x1, width), _pixel(y1, height))
        return Grounding(labels[0] if labels else "", box, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2))
    rest = BOX.sub(" ", plain)
    for match in POINT.finditer(rest):
        x, y = (float(value) for value in match.groups())
        if INCOMPLETE_BOX.match(rest, match.end()):
            problems.append(f"the box starting at ({x:g},{y:g}) is incomplete")  # its corner is not the object
            continue
        problem = _off_grid(x, y)
        if problem:
            problems.append(problem)
            continue
        return _point(labels, x, y, width, height)
    why = "; ".join(problems) if problems else "no box (x1,y1),(x2,y2) or point (x,y) in it"
    raise GroundingError(f"the model's reply {quote(text)} does not locate the subject: {why}")


def _off_grid(*values: float) -> str:
    shown = ", ".join(f"{v:g}" for v in values)
    if not all(0.0 <= value <= GRID for value in values):
        return f"coordinates {shown} are off the 0-{GRID:g} grid"
    if all(value <= 1.0 for value in values) and any(value != int(value) for value in values):
        # fractions of the image, as other grounding models write: guessing the convention could measure elsewhere
        return f"coordinates {shown} look like 0-1 fractions, not the 0-{GRID:g} grid"
    return ""


def _pixel(grid_value: float, size: int) -> float:
    return min(grid_value * size / GRID, size - 1.0)


def _point(labels: list[str], x: float, y: float, width: int, height: int) -> Grounding:
    return Grounding(labels[0] if labels else "", None, (_pixel(x, width), _pixel(y, height)))
