"""/g2vlm/ask (and the ask_stream action): checks, limits and the answer over the latest window.

Limits keep questions from starving perception: at most `max_concurrent_questions` are answered
at once (more are refused at once, not queued), each within its timeout (the request's or
`ask_timeout_s`). Answers run on their own small thread pool, so an executor thread is never
stuck in a slow answer; a timed-out answer finishes in the background and still holds its slot.
"""
from __future__ import annotations

import concurrent.futures
import inspect
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Protocol

import numpy as np
from geometry_msgs.msg import Point

from g2vlm_interfaces.srv import Ask
from g2vlm_ros.reasoning.query import query_from_json
from g2vlm_ros.reasoning.question import (
    Answer,
    QuestionError,
    SpatialAnswerer,
    check_cameras,
    check_question,
    effective_timeout,
    no_answerer_error,
)
from g2vlm_ros.ros.camera_input import time_from_ns

if TYPE_CHECKING:
    from g2vlm_ros.pipeline.perception import Snapshot
    from g2vlm_ros.reasoning.robot_frame import RobotFrame
    from g2vlm_ros.ros.params import NodeConfig
    from g2vlm_ros.ros.robot_frames import RobotFrames

Feedback = Callable[[str, str], None]  # (partial answer, stage)


@dataclass(frozen=True)
class QuestionStats:
    answerer: str  # its class name, or "none"
    answered: int
    refused: int
    busy: int  # refused because max_concurrent_questions were being answered
    timed_out: int
    max_concurrent: int


class AskSource(Protocol):
    """What questions read from the node: the latest window and, when there is none, why."""

    def latest_snapshot(self) -> Optional[Snapshot]: ...

    def not_ready_reason(self) -> str:
        """' (why no window can come)', or '' while the node is active."""


def internal_error_response(request, response: Ask.Response) -> Ask.Response:
    """The service's answer when answering itself raised (the node logged and counted the error)."""
    response.success, response.value, response.window_age_s = False, float("nan"), float("nan")
    response.error = "internal error while answering; the node logged it and keeps running"
    return response


class AskHandler:
    def __init__(self, source: AskSource, config: NodeConfig, logger, answerer: Optional[SpatialAnswerer],
                 max_concurrent: int, now_ns: Callable[[], int] = time.time_ns):
        """`config`: the node's (map_frame, question limits, timeouts; read per question, so runtime changes
        apply); `logger`: where answerer bugs are reported (.error); `now_ns`: the node's clock (window ages)."""
        self._source, self._config, self._logger = source, config, logger
        self.answerer = answerer
        self._now_ns = now_ns
        # set by the node while it has TF input: target frames and "up" for the answerer (None: window frame only)
        self.robot_frames: Optional[RobotFrames] = None
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self.max_concurrent = max_concurrent
        self._pool = concurrent.futures.ThreadPoolExecutor(max_concurrent, thread_name_prefix="ask")
        self.answered = self.refused = self.timed_out = self.busy = 0
        self._closing = threading.Event()

    def stats(self) -> QuestionStats:
        return QuestionStats(type(self.answerer).__name__ if self.answerer else "none", self.answered, self.refused,
                             self.busy, self.timed_out, self.max_concurrent)

    def shutdown(self) -> None:
        """Questions being waited for end at once (refused: shutting down), so teardown never waits for them."""
        self._closing.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def handle(self, request, publish_feedback: Optional[Feedback] = None,
               is_cancelled: Optional[Callable[[], bool]] = None) -> Ask.Response:
        """Answers `request` (Ask.Request or an Ask action goal); never raises."""
        config = self._config
        response = Ask.Response(value=float("nan"), window_age_s=float("nan"))
        snapshot = self._source.latest_snapshot()
        if snapshot is not None:
            newest_ns = max(frame.stamp_ns for frame in snapshot.window.frames)
            response.stamp = time_from_ns(newest_ns)
            response.frame_id = self._home_frame(snapshot)
        frame, up_note = None, ""
        try:
            question = check_question(request.question, config.max_question_bytes)
            cameras = check_cameras(list(request.cameras), [camera.name for camera in config.cameras])
            timeout_s = effective_timeout(float(request.timeout_s), config.ask_timeout_s)
            target, response.form = self._requested_target(question, getattr(request, "target_frame", ""))
            if snapshot is None:
                raise QuestionError("no perception window has been processed yet" + self._source.not_ready_reason())
            if self.answerer is None:
                raise QuestionError(no_answerer_error())
            frame, up_note = self._robot_frame(snapshot, target)
            if frame is not None and not takes_frame(self.answerer):
                if frame.window_to_target is not None:
                    raise QuestionError(f"target_frame '{target}': the answerer {type(self.answerer).__name__} "
                                        f"answers in {config.map_frame} only")
                frame = None
            in_target = frame is not None and frame.window_to_target is not None
            response.frame_id = frame.name if in_target else self._home_frame(snapshot)
            answer = self._answer_within(question, cameras, snapshot, timeout_s, frame, publish_feedback,
                                         is_cancelled)
        except QuestionError as error:
            self.refused += 1
            response.success, response.error = False, str(error)
            if frame is not None and frame.up_in_window is None and _about_up(response.error):
                response.error += f" ({up_note})"
            return response
        except Exception as error:  # an answerer bug must not take the service down
            self._logger.error(f"/g2vlm/ask failed: {type(error).__name__}: {error}")
            response.success, response.error = False, f"internal error: {type(error).__name__}: {error}"
            return response
        self.answered += 1
        response.success = True
        response.answer, response.reasoning = answer.answer, answer.reasoning
        response.value, response.unit = float(answer.value), answer.unit
        points = np.asarray(answer.points, np.float64).reshape(-1, 3)
        if not in_target and snapshot.placement is not None and len(points):
            points = snapshot.placement.window_to_map.apply_points(points)  # measured in the window, placed in the map
        response.points = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in points]
        response.form = getattr(answer, "form", "") or response.form
        response.value_source = getattr(answer, "value_source", "") or ("measured" if math.isfinite(response.value)
                                                                        and response.form else "")
        response.window_age_s = max(0.0, (self._now_ns() - newest_ns) * 1e-9)
        return response

    def _home_frame(self, snapshot) -> str:
        """Where answers without a target frame put their points: the map, with their window's placement; a
        window the map did not place has no frame on TF."""
        return self._config.map_frame if snapshot.placement is not None else ""

    def _requested_target(self, question: str, requested: str) -> tuple[str, str]:
        """(target frame, form) of a question: the request's target_frame, else a JSON query's. A JSON query that
        does not parse is refused here with the reason; plain language is left to the answerer."""
        requested = requested.strip()
        if not question.startswith("{"):
            return requested, ""
        query = query_from_json(question)
        if requested and query.target_frame and query.target_frame != requested:
            raise QuestionError(f"the request's target_frame '{requested}' and the query's '{query.target_frame}' "
                                "differ; give one of them")
        return requested or query.target_frame or "", query.form

    def _robot_frame(self, snapshot, target: str) -> tuple[Optional[RobotFrame], str]:
        frames = self.robot_frames
        if frames is not None:
            return frames.frame_for(snapshot, target)
        if target and target != self._config.map_frame:
            raise QuestionError(f"target_frame '{target}' needs TF input, which this node does not have now "
                                "(configure the node; TF is read through tf2_ros or tf2_msgs)")
        return None, "no TF input"

    def _answer_within(self, question: str, cameras: list[str], snapshot, timeout_s: float,
                       frame: Optional[RobotFrame], publish_feedback: Optional[Feedback],
                       is_cancelled: Optional[Callable[[], bool]]) -> Answer:
        if not self._slots.acquire(blocking=False):
            self.busy += 1
            raise QuestionError(f"busy: {self.max_concurrent} questions are being answered "
                                "(max_concurrent_questions); ask again shortly")
        try:
            extras = {}
            if getattr(self.answerer, "streams", False):  # generation streams text and stops when cancelled
                extras = {"feedback": publish_feedback,
                          "is_cancelled": lambda: self._closing.is_set() or bool(is_cancelled and is_cancelled())}
            if frame is not None and takes_frame(self.answerer):
                extras["frame"] = frame
            future = self._pool.submit(self.answerer.answer, question, cameras, snapshot, timeout_s, **extras)
        except RuntimeError as error:  # the pool is shut down: the node is cleaning up
            self._slots.release()
            raise QuestionError("the node is shutting down") from error
        future.add_done_callback(lambda _: self._slots.release())
        if publish_feedback is not None:
            publish_feedback("", "grounding")
        try:
            # wait in short steps so an action cancel is noticed while the answer is computed
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    return future.result(timeout=max(0.0, min(0.05, deadline - time.monotonic())))
                except concurrent.futures.TimeoutError:
                    if self._closing.is_set():
                        raise QuestionError("the node is shutting down") from None
                    if is_cancelled is not None and is_cancelled():
                        raise QuestionError("cancelled") from None
                    if time.monotonic() >= deadline:
                        self.timed_out += 1
                        raise QuestionError(f"timed out after {timeout_s:g} s (timeout_s / ask_timeout_s)") from None
        finally:
            if publish_feedback is not None:
                publish_feedback("", "done")


def takes_frame(answerer) -> bool:
    """Whether an answerer answers in a given robot frame: its `takes_frame`, else whether answer() has `frame`."""
    declared = getattr(answerer, "takes_frame", None)
    if declared is not None:
        return bool(declared)
    return "frame" in inspect.signature(answerer.answer).parameters


def _about_up(error: str) -> bool:
    """A refusal for want of an up direction, to which the node adds why TF and the IMU gave none."""
    lowered = error.lower()
    return any(word in lowered for word in ("up direction", "floor", "gravity", " up "))
