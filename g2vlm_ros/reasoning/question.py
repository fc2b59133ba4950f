"""Checks on incoming spatial questions and the shape of an answer, independent of ROS."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

REPLACEMENT_CHARACTER = "\ufffd"


class QuestionError(ValueError):
    """The request cannot be answered as asked; the message tells the caller what to change."""


@dataclass
class Answer:
    answer: str
    reasoning: str = ""
    value: float = math.nan
    unit: str = ""
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # [M,3] in `frame_id`
    form: str = ""  # the query form answered (query.FORMS), "" when none (free text)
    value_source: str = ""  # "measured": geometry of the window; "model_estimate": a number the model wrote; ""
    window_age_s: float = math.nan  # question time - newest frame stamp; NaN: the caller fills it in
    frame_id: str = ""  # frame of `points`; "": the window's world frame (the node names it)


class SpatialAnswerer(Protocol):
    """Answers a checked question over a geometry snapshot (defined by the reasoning issue)."""

    def answer(self, question: str, cameras: Sequence[str], snapshot: object, timeout_s: float) -> Answer:
        ...


def check_question(question: str, max_bytes: int) -> str:
    """Returns the stripped question or raises QuestionError (empty, not UTF-8, too long)."""
    stripped = question.strip()
    if not stripped:
        raise QuestionError("the question is empty")
    if REPLACEMENT_CHARACTER in stripped:
        # rclpy decodes request strings with errors="replace": U+FFFD is where bytes were not UTF-8
        raise QuestionError("the question is not valid UTF-8 (undecodable bytes arrived as U+FFFD); send UTF-8 text")
    size = len(stripped.encode("utf-8", errors="surrogatepass"))
    if size > max_bytes:
        raise QuestionError(f"the question is {size} bytes long; the limit is {max_bytes} bytes (max_question_bytes)")
    return stripped


# The request's camera list comes from any caller: the error names only a few of its entries, each clipped,
# so that a list of thousands of (long) names yields a short answer and log line, not kilobytes.
NAMES_IN_ERROR = 5
CONFIGURED_NAMES_IN_ERROR = 16  # the node's own list is short, but a params file is input too
NAME_CHARACTERS_IN_ERROR = 40


def check_cameras(requested: Sequence[str], known: Sequence[str]) -> list[str]:
    """Returns the cameras to answer over (all when none requested); unknown names are an error."""
    unknown = list(dict.fromkeys(name for name in requested if name not in known))  # distinct, in request order
    if unknown:
        raise QuestionError(f"unknown camera(s) {name_list(unknown)}; "
                            f"configured: {name_list(known, CONFIGURED_NAMES_IN_ERROR)}")
    return list(requested) or list(known)


def name_list(names: Sequence[str], limit: int = NAMES_IN_ERROR) -> str:
    """At most `limit` names, each readable and clipped, then how many more there are."""
    shown = ", ".join(_readable_name(name) for name in names[:limit])
    more = len(names) - limit
    return f"{shown} and {more} more" if more > 0 else shown


def _readable_name(name: str) -> str:
    if name == "":
        return "an empty camera name"
    clipped = name[:NAME_CHARACTERS_IN_ERROR] + ("..." if len(name) > NAME_CHARACTERS_IN_ERROR else "")
    # control characters or surrounding spaces would make the name unreadable in a log line: quote it
    return clipped if clipped.isprintable() and clipped.strip() == clipped else repr(clipped)


def effective_timeout(requested_s: float, default_s: float) -> float:
    if not math.isfinite(requested_s) or requested_s < 0:
        raise QuestionError(f"timeout_s must be a finite number >= 0, got {requested_s}")
    return requested_s if requested_s > 0 else default_s


def no_answerer_error() -> str:
    return ("spatial question answering is not available in this version of g2vlm_ros; "
            "the node publishes depth, point clouds and camera poses")

