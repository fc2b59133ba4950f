"""Natural-language questions -> `Query` (query.py), never widened: what cannot be grounded is refused.

What the parser reads, in this order:
- boxes: `[x0, y0, x1, y1]` (corners), or with "xywh" / "(x, y, w, h)" next to it, `[x, y, width, height]`;
- pixels: `(x, y)`, `[x, y]`, `x=320, y=240` (also `x: 320 y: 240`), `320,240`;
- after each location, `in|of|on|from [the] [camera] <name>` picks a camera only when <name> is a configured
  camera (case-insensitive); anything else after "in" stays text ("in centimetres" is a unit, "in front" is not
  a camera);
- units asked for: "in m / cm / mm / ft / in" and their words (metres, centimeters, feet, inches, ...);
- yes/no thresholds: "at least / more than / less than / at most / closer than / farther than / for <n> <unit>";
- time spans: "in the last 2 s", "over the past second", "during the last 500 ms";
- corridor width: "a 0.8 m wide corridor", "corridor of 0.8 m", "width of 0.8 m" with free space / obstacles;
- keywords with one typo (edit distance 1, transpositions included) when the word is unknown, at least five
  letters long, and one edit from exactly one keyword of the list below;
- the subject: "the ball", "the pink box": a phrase that is not the camera / robot / a location word. A subject
  with its own pixel or box ("the ball at (3, 4)") is grounded; otherwise the question is refused, because the
  camera forms would answer about the camera instead.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Optional

from g2vlm_ros.reasoning.query import FORMS, Query
from g2vlm_ros.reasoning.question import QuestionError

NUMBER = r"(\d+(?:\.\d+)?)"
UNIT_WORDS = {
    "m": ("m", "metre", "metres", "meter", "meters"),
    "cm": ("cm", "centimetre", "centimetres", "centimeter", "centimeters"),
    "mm": ("mm", "millimetre", "millimetres", "millimeter", "millimeters"),
    "ft": ("ft", "foot", "feet"),
    "in": ("in", "inch", "inches"),
}
UNIT_OF_WORD = {word: unit for unit, words in UNIT_WORDS.items() for word in words}
UNIT = "(" + "|".join(sorted(UNIT_OF_WORD, key=len, reverse=True)) + r")\b"
# "in front" and "in in" are not unit requests; "in inches" and "how many feet" are
_UNIT_NOT_IN = "(" + "|".join(sorted((w for w in UNIT_OF_WORD if w != "in"), key=len, reverse=True)) + r")\b"
ASKED_UNIT = re.compile(r"\b(?:in|into|as|using)\s+(?:units\s+of\s+)?" + _UNIT_NOT_IN + r"|\bhow\s+many\s+" + UNIT)
# keywords the typo tolerance may correct to (only words of five letters or more: short words collide)
KEYWORDS = ("depth", "distance", "width", "height", "higher", "closer", "nearer", "farther", "further", "obstacle",
            "obstacles", "between", "displacement", "ahead", "space", "straight", "travelled", "traveled", "moved",
            "nearest", "closest", "floor", "ground", "above", "centimetres", "centimeters", "millimetres",
            "millimeters", "metres", "meters", "inches", "forward", "corridor", "apart", "motion", "camera")
# words the typo tolerance must leave alone although one edit from a keyword
NOT_TYPOS = {"heights", "widths", "depths", "spaces", "cameras", "floors", "flour", "flood", "moves", "mover",
             "movie", "loved", "meter", "metre", "motions", "spice", "spade", "death", "weight", "eight", "closet",
             "closed", "closes", "around", "round", "wound", "found", "grind", "bearer", "wearer", "dearest",
             "notion", "lotion", "potion", "sheight", "height"}

ROBOT_WORDS = {"camera", "cameras", "robot", "me", "us", "we", "i", "you", "vehicle", "rover", "base", "sensor",
               "platform", "drone", "itself", "ego"}
LOCATION_WORDS = {"distance", "depth", "width", "height", "size", "space", "free", "path", "way", "floor", "ground",
                  "obstacle", "obstacles", "nearest", "closest", "point", "points", "pixel", "pixels", "region",
                  "area", "box", "rectangle", "image", "picture", "view", "frame", "last", "past", "next", "left",
                  "right", "middle", "centre", "center", "corridor", "gap", "clearance", "motion", "displacement",
                  "front", "range", "value", "answer", "room", "location", "position", "spot", "first", "second",
                  "one", "two", "other", "latest", "newest", "current", "window", "scene", "move", "amount",
                  "metres", "meters", "metre", "meter", "wide", "direction", "heading", "straight",
                  "ahead", "forward", "top", "bottom", "edge", "upper", "lower", "same", "total", "entire", "whole",
                  "closer", "farther", "further", "higher", "vertical", "horizontal", "difference",
                  "bounding", "given", "following", "above", "below", "start", "end", "thing", "object"}
# "the thing at (x, y)" is grounded by its pixel; a bare "the thing" or "the object" is not
GROUND_ONLY_WITH_LOCATION = {"thing", "object"}
ARTICLE_PHRASE = re.compile(r"\b(?:the|a|an|that|this|those|these|my|your|its)\s+"
                            r"([a-z][a-z\-]*(?:\s+[a-z][a-z\-]*){0,2})")
STOP_WORDS = {"is", "are", "was", "of", "in", "on", "at", "to", "from", "and", "or", "than", "move", "moved", "did",
              "has", "have", "go", "went", "travel", "travelled", "be", "with", "for", "by", "there", "it", "as",
              "how", "what", "which", "much", "far", "wide", "tall", "big", "high", "away", "between", "apart"}


def _camera_suffix(cameras: Sequence[str]) -> str:
    names = "|".join(re.escape(name) for name in sorted(cameras, key=len, reverse=True) if name)
    return rf"(?:\s+(?:in|of|on|from)\s+(?:the\s+)?(?:camera\s+)?({names})\b(?:\s+camera\b)?)?" if names else "()?"


def _camera_name(found: Optional[str], cameras: Sequence[str]) -> Optional[str]:
    if not found:
        return None
    return next(name for name in cameras if name.lower() == found.lower())


def _edit_distance_at_most_one(word: str, keyword: str) -> bool:
    if word == keyword or abs(len(word) - len(keyword)) > 1:
        return word == keyword
    if len(word) == len(keyword):
        diff = [i for i, (a, b) in enumerate(zip(word, keyword, strict=True)) if a != b]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and word[diff[0]] == keyword[diff[1]] and word[diff[1]] == keyword[diff[0]])
    shorter, longer = sorted((word, keyword), key=len)
    return any(longer[:i] + longer[i + 1:] == shorter for i in range(len(longer)))


def correct_typos(text: str) -> str:
    """Replaces a word one edit away from exactly one keyword (rules in the module docstring)."""
    def fix(match: re.Match) -> str:
        word = match.group(0)
        if len(word) < 5 or word in KEYWORDS or word in NOT_TYPOS:
            return word
        candidates = [keyword for keyword in KEYWORDS if _edit_distance_at_most_one(word, keyword)]
        return candidates[0] if len(candidates) == 1 else word

    return re.sub(r"[a-z]+", fix, text)


def _time_span(text: str) -> Optional[float]:
    match = re.search(r"\b(?:in|over|during|within|for)\s+the\s+(?:last|past|previous)\s+(?:" + NUMBER +
                      r"\s*)?(ms|milliseconds?|s|secs?|seconds?|min|minutes?)\b", text)
    if match is None:
        return None
    amount = float(match.group(1)) if match.group(1) else 1.0
    unit = match.group(2)
    return amount * (1e-3 if unit.startswith("m") and unit != "min" and not unit.startswith("minute")
                     else 60.0 if unit.startswith("min") else 1.0)


COMPARISON_WORDS = ((r"at\s+least|no\s+less\s+than|not\s+less\s+than|>=", ">="), (r"more\s+than|over|greater\s+than|"
                    r"longer\s+than|farther\s+than|further\s+than|beyond|>", ">"),
                    (r"at\s+most|no\s+more\s+than|<=", "<="), (r"less\s+than|under|closer\s+than|nearer\s+than|"
                                                                r"within|shorter\s+than|<", "<"))


def _threshold(text: str) -> tuple[Optional[float], Optional[str], Optional[str], str]:
    """(threshold, comparison, its unit, text without it) of a yes/no question."""
    if not re.match(r"\s*(is|are|does|do|can|will|could|has|have)\b", text):
        return None, None, None, text
    for words, comparison in COMPARISON_WORDS:
        match = re.search(rf"(?<![a-z])(?:{words})\s*{NUMBER}(?:\s*{UNIT})?", text)
        if match:
            unit = UNIT_OF_WORD.get(match.group(2)) if match.group(2) else None
            # the words stay ("closer than T" still says what is measured); the number and its unit go
            return float(match.group(1)), comparison, unit, text[:match.start(1)] + " T " + text[match.end():]
    match = re.search(rf"\b(?:clear|free)\s+for\s+{NUMBER}(?:\s*{UNIT})?", text)
    if match:
        unit = UNIT_OF_WORD.get(match.group(2)) if match.group(2) else None
        return float(match.group(1)), ">=", unit, text[:match.start()] + " free T " + text[match.end():]
    return None, None, None, text


def _corridor_width(text: str) -> tuple[Optional[float], Optional[str], str]:
    for pattern in (rf"\b(?:a\s+)?{NUMBER}\s*{UNIT}\s*(?:-\s*)?wide(?:\s+(?:corridor|path|robot))?",
                    rf"\b(?:corridor|path)\s+(?:width\s+)?(?:of\s+)?{NUMBER}\s*{UNIT}",
                    rf"\bwidth\s+(?:of\s+)?{NUMBER}\s*{UNIT}"):
        match = re.search(pattern, text)
        if match:
            return float(match.group(1)), UNIT_OF_WORD[match.group(2)], text[:match.start()] + " " + text[match.end():]
    return None, None, text


def _subject(text: str, cameras: Sequence[str]) -> Optional[str]:
    """The first article phrase naming something other than the camera/robot or a location word, with whether
    it is followed by its own location placeholder (P or B)."""
    camera_words = {name.lower() for name in cameras}
    for match in ARTICLE_PHRASE.finditer(text):
        words = []
        for word in match.group(1).split():
            if word in STOP_WORDS or UNIT_OF_WORD.get(word):
                break
            words.append(word)
        content = [w for w in words if w not in LOCATION_WORDS or w in GROUND_ONLY_WITH_LOCATION]
        if not content or any(w in ROBOT_WORDS or w in camera_words for w in words):
            continue
        phrase = " ".join(words)
        after = text[match.start(1) + len(phrase):]
        if re.match(r"\s+(?:\w+\s+){0,3}?[PB]\b", after):
            continue  # "the ball at P": grounded by its own location
        return phrase
    return None


def parse_question(text: str, cameras: Sequence[str]) -> Query:
    """Parses a question over `cameras` (the first is the default); QuestionError saying why when it cannot."""
    if not cameras:
        raise QuestionError("no camera to answer over")
    suffix = _camera_suffix(cameras)
    lowered = " " + re.sub(r"\s+", " ", text.strip().lower()) + " "
    box_pattern = re.compile(r"[\[(]\s*" + r"\s*,\s*".join([NUMBER] * 4) + r"\s*[\])]"
                             + r"(\s*(?:\(?\s*(?:in\s+)?(?:format\s+)?"
                             + r"(?:xywh|x\s*,\s*y\s*,\s*w(?:idth)?\s*,\s*h(?:eight)?)"
                             + r"\s*\)?|\s*(?:\(?\s*xyxy\s*\)?)))?" + suffix)
    boxes, cameras_used = [], []
    for match in box_pattern.finditer(lowered):
        x0, y0, a, b = (float(v) for v in match.groups()[:4])
        xywh = match.group(5) is not None and "xyxy" not in match.group(5)
        x1, y1 = (x0 + a, y0 + b) if xywh else (a, b)
        boxes.append((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
        cameras_used.append(_camera_name(match.group(6), cameras))
    rest = box_pattern.sub(" B ", lowered)
    rest = re.sub(r"\bxywh\b|\bxyxy\b", " ", rest)
    pixel_patterns = [
        re.compile(r"[\[(]\s*" + NUMBER + r"\s*,\s*" + NUMBER + r"\s*[\])]" + suffix),
        re.compile(r"\bx\s*[=:]\s*" + NUMBER + r"\s*(?:,|and)?\s*y\s*[=:]\s*" + NUMBER + suffix),
        re.compile(r"(?<![\d.])" + NUMBER + r"\s*,\s*" + NUMBER + r"(?![\d.])(?!\s*" + UNIT + ")" + suffix),
    ]
    pixels = []
    for pattern in pixel_patterns:
        for match in pattern.finditer(rest):
            pixels.append((match.start(), (float(match.group(1)), float(match.group(2))),
                           _camera_name(match.group(3), cameras)))
        rest = pattern.sub(" P ", rest)
    pixels.sort(key=lambda item: item[0])
    # pixels found by later patterns were searched in text already shortened: order is approximate only then
    cameras_used += [camera for _, _, camera in pixels]
    rest = correct_typos(rest)
    span = _time_span(rest)
    threshold, comparison, threshold_unit, rest = _threshold(rest)
    corridor, corridor_unit, rest = _corridor_width(rest)
    unit_match = ASKED_UNIT.search(rest)
    unit = None
    if unit_match:
        unit = UNIT_OF_WORD[next(group for group in unit_match.groups() if group)]
        rest = rest[:unit_match.start()] + " " + rest[unit_match.end():]
    named = [name for name in cameras if re.search(rf"\b{re.escape(name.lower())}\b", rest)]
    distinct = {c for c in cameras_used if c}
    # one camera named with the locations or in the text; pixels of several cameras keep theirs (pixel_cameras)
    camera_query = next(iter(distinct)) if len(distinct) == 1 else None if distinct else (named[0] if named else None)
    words = set(re.findall(r"[a-z]+", rest))

    def has(*keys: str) -> bool:
        return any(key in words for key in keys)

    def phrase(*patterns: str) -> bool:
        return any(re.search(p, rest) for p in patterns)

    subject = _subject(rest, cameras)
    point_list = tuple(p for _, p, _ in pixels)
    form = _form(boxes, point_list, has, phrase, threshold is not None, subject)
    if comparison is not None and form in ("closer", "farther", "box_size"):
        comparison = threshold = None  # "closer than" names the form here, not a threshold
    if form == "free_space_ahead" and threshold is not None:
        form = "free_space_check"
    corridor_forms = ("free_space_ahead", "free_space_check", "nearest_obstacle")
    common_unit = threshold_unit or corridor_unit
    return Query(form=form, pixels=point_list, box=boxes[0] if boxes else None, camera=camera_query, unit=unit,
                 threshold=threshold, comparison=comparison,
                 threshold_unit=common_unit if common_unit != unit else None,
                 time_span_s=span if form == "camera_motion" else None,
                 corridor_width=corridor if form in corridor_forms else None,
                 subject=subject, pixel_cameras=tuple(camera for _, _, camera in pixels)
                 if any(camera for _, _, camera in pixels) else ())


FORM_LIST = ", ".join(FORMS)
HOW_TO_ASK = ("This node answers questions of these forms: ask about pixels (x, y) or boxes [x0, y0, x1, y1] of "
              "a camera image, free space or obstacles ahead, "
              "height above the floor, or the camera's motion; or send a JSON query (form: " + FORM_LIST + ")")


def _refuse(why: str) -> QuestionError:
    return QuestionError(f"{why}. {HOW_TO_ASK}")


def _form(boxes, pixels, has, phrase, yes_no: bool, subject: Optional[str]) -> str:
    if boxes:
        if len(boxes) > 1 or pixels:
            raise _refuse("a box question takes exactly one box and no pixels")
        if has("width", "wide", "across"):
            return "box_width"
        if has("height", "tall", "high"):
            return "box_height"
        if has("size", "big", "large", "dimension", "dimensions", "extent", "measure", "measurements"):
            return "box_size"
        raise _refuse("the question names a box but not what to measure (width, height or size)")
    if len(pixels) > 2:
        raise _refuse(f"the question names {len(pixels)} pixels; the forms take one or two")
    if subject is not None:
        raise _refuse(f"the question is about '{subject}', which has no pixel or box in the question and this "
                      "answerer has no object grounding: it will not answer with the camera's own geometry instead")
    if len(pixels) == 2:
        if has("closer", "nearer", "closest", "nearest"):
            return "closer"
        if has("farther", "further", "farthest", "furthest"):
            return "farther"
        if has("higher", "lower", "height", "above", "below", "taller"):
            return "height_difference"
        if has("distance", "apart", "far", "between", "separates", "separating", "separation", "gap"):
            return "distance_between"
        raise _refuse("the question names two pixels but not what to compare")
    if len(pixels) == 1:
        if has("floor", "ground") and has("height", "high", "above", "elevation", "tall"):
            return "height_above_floor"
        if has("depth", "deep"):
            return "depth"
        if has("far", "distance", "range", "away", "close", "closer", "farther", "near", "nearer", "long"):
            return "distance"
        raise _refuse("the question names one pixel but not what to measure (depth, distance or height above "
                      "the floor)")
    if has("move", "moved", "moving", "travel", "travelled", "traveled", "displacement", "displaced", "motion",
           "went", "drive", "drove", "driven"):
        return "camera_motion"
    if has("floor", "ground") and has("height", "high", "above", "elevation"):
        return "height_above_floor"
    ahead = has("ahead", "front", "forward", "straight", "corridor", "path")
    if has("obstacle", "obstacles", "object", "nearest", "closest") and (ahead or has("nearest", "closest")) \
            and not yes_no and phrase(r"\b(nearest|closest|first)\b"):
        return "nearest_obstacle"
    if ahead and has("free", "clear", "space", "room", "obstacle", "obstacles", "open", "distance", "far"):
        return "free_space_ahead"
    raise _refuse("the question names no image location (pixel (x, y) or box [x0, y0, x1, y1]) and is not about "
                  "free space or obstacles ahead, height above the floor or camera motion")
