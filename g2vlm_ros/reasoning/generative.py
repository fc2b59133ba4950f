"""Answers with G2VLM's semantic expert, grounded in measured geometry (needs a checkpoint with a tokenizer).

The model answers as in the official chat-with-reconstruction: the newest image of each asked camera
goes through the geometry expert and the vision tower, and the answer is generated with those tokens
in context (g2vlm_ros.model.chat). The node then adds what it measured itself on the same window:
- a question of a grounded form (grammar.py) gets the measured value, unit and points, and the
  measurement in `reasoning`; the generated text is the `answer`;
- any other question gets window facts in `reasoning` (free distance ahead, camera motion) and, if
  the generated text states a length ("about 2.5 meters"), that number as `value` with the unit the
  model gave, marked in `reasoning` as the model's own estimate.
Generation streams through `feedback`, stops on `is_cancelled()` or at the deadline, and never
exceeds `max_new_tokens`.
"""
from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Optional

import numpy as np

from g2vlm_ros.model.chat import GenerationConfig, chat
from g2vlm_ros.reasoning.geometric import GeometricAnswerer, WindowGeometry, answer_parsed
from g2vlm_ros.reasoning.grammar import ParsedQuestion, parse_question
from g2vlm_ros.reasoning.question import Answer, QuestionError

LENGTH = re.compile(r"(-?\d+(?:\.\d+)?)\s*(millimet(?:er|re)s?|mm|centimet(?:er|re)s?|cm|met(?:er|re)s?|m)\b",
                    re.IGNORECASE)
TO_METRES = {"mm": 1e-3, "cm": 1e-2, "m": 1.0}


def length_in_text(text: str) -> Optional[float]:
    """The first length with a unit in `text`, in metres ("2.5 meters", "30 cm"); None without one."""
    match = LENGTH.search(text)
    if match is None:
        return None
    unit = match.group(2).lower()
    key = "mm" if unit.startswith("mil") or unit == "mm" else "cm" if unit.startswith("c") else "m"
    return float(match.group(1)) * TO_METRES[key]


def window_facts(geometry: WindowGeometry, cameras: Sequence[str]) -> list[str]:
    """Measured context for questions outside the grammar: free distance ahead and motion per camera."""
    facts = []
    for camera in cameras:
        for form in ("free", "moved"):
            try:
                facts.append(answer_parsed(ParsedQuestion(form, camera=camera), geometry).answer)
            except QuestionError:
                pass  # e.g. no motion with one frame per camera: nothing measured to add
    return facts


class GenerativeAnswerer:
    streams = True  # answer() takes feedback / is_cancelled (see AskHandler)

    def __init__(self, model, max_new_tokens: int = 128, vision_size: Optional[int] = None):
        if getattr(model, "tokenizer", None) is None:
            raise ValueError("the generative answerer needs a checkpoint with tokenizer files")
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.vision_size = vision_size
        self.geometric = GeometricAnswerer()
        self._generation_lock = threading.Lock()  # one generation at a time: they share the device

    def answer(self, question: str, cameras: Sequence[str], snapshot, timeout_s: float,
               feedback: Optional[Callable[[str, str], None]] = None,
               is_cancelled: Optional[Callable[[], bool]] = None) -> Answer:
        deadline = time.monotonic() + timeout_s
        geometry = self.geometric.geometry(snapshot)
        try:
            measured = answer_parsed(parse_question(question, cameras), geometry)
        except QuestionError:
            measured = None  # not a grounded form: the model answers alone, with window facts beside it
        frames = [snapshot.window.frames[geometry.newest_view(camera)] for camera in cameras
                  if camera in geometry.cameras]
        text, generated = self.generate([frame.rgb for frame in frames], question, deadline, timeout_s, feedback,
                                        is_cancelled)
        if measured is not None:
            return Answer(text or measured.answer, f"measured: {measured.reasoning}; {generated}", measured.value,
                          measured.unit, measured.points, form=measured.form, value_source="measured")
        if not text:
            raise QuestionError(f"the model generated no answer ({generated})")
        facts = window_facts(geometry, cameras)
        value = length_in_text(text)
        notes = [f"measured: {'; '.join(facts)}"] if facts else []
        if value is not None:
            notes.append("value: the model's own estimate as stated in its answer, not a measurement")
        return Answer(text, "; ".join(notes + [generated]), math.nan if value is None else value,
                      "m" if value is not None else "", np.zeros((0, 3)),
                      value_source="model_estimate" if value is not None else "")

    def generate(self, images: Sequence[np.ndarray], prompt: str, deadline: float, timeout_s: float,
                 feedback: Optional[Callable[[str, str], None]] = None,
                 is_cancelled: Optional[Callable[[], bool]] = None) -> tuple[str, str]:
        """(stripped text, a note on the generation) for `prompt` about `images`; one generation at a time, within
        the deadline (time.monotonic()); QuestionError when cancelled or timed out."""
        tokenizer = self.model.tokenizer
        stopped = {"why": ""}

        def on_token(token_ids: list[int]) -> bool:
            if feedback is not None:
                feedback(tokenizer.decode(token_ids), "generating")
            if is_cancelled is not None and is_cancelled():
                stopped["why"] = "cancelled"
            elif time.monotonic() > deadline:
                stopped["why"] = f"timed out after {timeout_s:g} s while generating"
            return not stopped["why"]

        with self._generation_lock:
            if time.monotonic() > deadline:
                raise QuestionError(f"timed out after {timeout_s:g} s waiting for another answer's generation")
            result = chat(self.model, list(images), prompt, GenerationConfig(max_new_tokens=self.max_new_tokens),
                          vision_size=self.vision_size, on_token=on_token)
        if result.stopped_by == "interrupted":
            raise QuestionError(stopped["why"])
        return (result.text or "").strip(), f"the model generated {len(result.token_ids)} tokens ({result.stopped_by})"
