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

import inspect
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

from g2vlm_ros.reasoning.query import parse_question
from g2vlm_ros.reasoning.question import Answer, QuestionError

GRID = 1000.0  # Qwen2-VL's grounding coordinates: 0..1000 over the image's width and height
NUMBER = r"(-?\d+(?:\.\d+)?)"
PAIR = r"\(\s*" + NUMBER + r"\s*,\s*" + NUMBER + r"\s*\)"
REF = re.compile(r"<\|object_ref_start\|>(.*?)<\|object_ref_end\|>", re.DOTALL)
BOX = re.compile(PAIR + r"\s*,?\s*(?:to\s+)?" + PAIR)
POINT = re.compile(PAIR)
SPECIAL = re.compile(r"<\|[a-z_]+\|>")
INCOMPLETE_BOX = re.compile(r"\s*,\s*\(")
QUOTED_CHARACTERS = 120  # of the model's reply in a refusal
# the language parser's refusal of a question about an object with no pixel or box of its own
SUBJECT_REFUSAL = re.compile(r"the question is about '([^']+)'")


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


def subject_of(question: str, cameras: Sequence[str]) -> Optional[str]:
    """The object a question is about when it names no pixel or box for it ("How wide is the ball?" -> "the
    ball"), else None (the question is grounded already, or refused for another reason)."""
    if question.lstrip().startswith("{"):
        return None  # a JSON query's subject is a label only: its form carries its own pixels or box
    try:
        parse_question(question, cameras)
    except QuestionError as refusal:
        match = SUBJECT_REFUSAL.search(str(refusal))
        return match.group(1) if match else None
    return None


def grounded_questions(question: str, grounding: Grounding, camera: str) -> list[str]:
    """The question with the grounded location written in, box first (size forms), then its centre (distance and
    depth forms): the measuring answerer parses them like any question with a location."""
    stem = question.strip().rstrip("?.! ")
    x, y = grounding.point
    located = []
    if grounding.box is not None:
        located.append("[" + ", ".join(f"{v:.1f}" for v in grounding.box) + "]")
    located.append(f"({x:.1f}, {y:.1f})")
    return [f"{stem} at {where} in {camera}?" for where in located]


class GroundingAnswerer:
    """Questions about objects, answered by locating them with the semantic expert and measuring the location.

    `measurer` answers questions with locations (the node's answerer of the documented forms); `generator` is
    the GenerativeAnswerer of the checkpoint (its `generate`) and answers every question that is not about an
    object, as before. A question about an object gets `value` from `measurer` only: value_source "measured",
    the box in `reasoning`, the model's reply marked there as its estimate of where the object is.
    """

    streams = True

    def __init__(self, generator, measurer):
        self.generator, self.measurer = generator, measurer

    @property
    def takes_frame(self) -> bool:
        """Answers in a robot frame only when the measurer does (the generator's own answers carry no points)."""
        return "frame" in inspect.signature(self.measurer.answer).parameters

    def answer(self, question: str, cameras: Sequence[str], snapshot, timeout_s: float, frame=None,
               feedback: Optional[Callable[[str, str], None]] = None,
               is_cancelled: Optional[Callable[[], bool]] = None) -> Answer:
        subject = subject_of(question, cameras)
        if subject is None:
            if frame is not None and frame.window_to_target is not None and self.takes_frame:
                # asked in a robot frame: the measurement answers (the generator's answers are in the window frame)
                return _call(self.measurer, question, cameras, snapshot, timeout_s, frame=frame)
            return _call(self.generator, question, cameras, snapshot, timeout_s, feedback=feedback,
                         is_cancelled=is_cancelled)
        deadline = time.monotonic() + timeout_s
        camera = cameras[0]
        views = [frame_ for frame_ in snapshot.window.frames if frame_.camera == camera]
        if not views:
            raise QuestionError(f"camera '{camera}' is not in the latest window")
        image = max(views, key=lambda view: view.stamp_ns).rgb
        reply, generated = self.generator.generate([image], grounding_prompt(subject), deadline, timeout_s, feedback,
                                                   is_cancelled)
        try:
            grounding = parse_grounding(reply, image.shape[1], image.shape[0])
        except GroundingError as error:
            raise QuestionError(f"the question is about '{subject}', and the semantic expert did not locate it: "
                                f"{error} ({generated}); no value is given without a measured location") from None
        refusals = []
        for located in grounded_questions(question, grounding, camera):
            try:
                measured = _call(self.measurer, located, cameras, snapshot, max(0.0, deadline - time.monotonic()),
                                 frame=frame)
            except QuestionError as refusal:
                refusals.append(str(refusal))
                continue
            measured.reasoning = (f"'{subject}' located by the semantic expert at {grounding.describe()} in {camera} "
                                  f"(the model's estimate of where it is: {quote(reply)}; {generated}); measured "
                                  f"there: {measured.reasoning}")
            measured.value_source = "measured"
            return measured
        raise QuestionError(f"'{subject}' was located at {grounding.describe()} in {camera}, but that location "
                            f"could not be measured: {refusals[-1]}")


def _call(answerer, question, cameras, snapshot, timeout_s, **extras) -> Answer:
    """answerer.answer with those of `extras` (frame, feedback, is_cancelled) that it takes."""
    accepted = inspect.signature(answerer.answer).parameters
    return answerer.answer(question, cameras, snapshot, timeout_s,
                           **{name: value for name, value in extras.items() if name in accepted and value is not None})
