"""The ask handler's side of robot frames (no processes): the request's or the query's target_frame reaches the
answerer as a RobotFrame built from TF, conflicts and unreachable frames are refused with the reason, and the
response carries form, value_source, frame_id and the window's age on the node's clock."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from test_robot_frames import SECOND, robot_tf

from g2vlm_interfaces.srv import Ask
from g2vlm_ros.reasoning.question import Answer
from g2vlm_ros.ros.robot_frames import RobotFrames

STAMP_NS = 2 * SECOND


class FrameAnswerer:
    """Answers with the frame it was given: its name as frame_id, the point 2 m ahead moved into it."""

    def __init__(self):
        self.frames = []

    def answer(self, question, cameras, snapshot, timeout_s, frame=None):
        self.frames.append(frame)
        point = frame.to_target(np.array([[0.0, 0.0, 2.0]])) if frame is not None else np.zeros((1, 3))
        answer = Answer("ok", value=2.0, unit="m", points=point)
        answer.form, answer.value_source, answer.frame_id = "depth", "measured", frame.name if frame else ""
        return answer


def handler_with(answerer, metric: bool = True, now_s: float = 2.25):
    from g2vlm_ros.ros.ask_handler import AskHandler
    from g2vlm_ros.ros.params import PARAMETERS, CameraConfig, NodeConfig

    frame = SimpleNamespace(stamp_ns=STAMP_NS, camera="front", frame_id="cam_optical")
    scale = SimpleNamespace(valid=metric, status="" if metric else "not enough motion")
    snapshot = SimpleNamespace(window=SimpleNamespace(frames=[frame]), scale=scale, placement=None)
    config = NodeConfig.from_values([CameraConfig("front", "front/image_raw", "", "raw", "")],
                                    {spec.name: spec.default for spec in PARAMETERS})
    config.odom_frame = "odom"
    source = SimpleNamespace(latest_snapshot=lambda: snapshot, not_ready_reason=lambda: "")
    handler = AskHandler(source, config, SimpleNamespace(error=lambda message: None), answerer, 2,
                         now_ns=lambda: int(now_s * SECOND))
    handler.robot_frames = RobotFrames(robot_tf().lookup, config.map_frame, "odom", "base_link")
    return handler


def test_the_request_target_frame_reaches_the_answerer_through_tf():
    answerer = FrameAnswerer()
    handler = handler_with(answerer)
    response = handler.handle(Ask.Request(question="What is the depth at (1, 1)?", target_frame="base_link"))
    assert response.success, response.error
    assert answerer.frames[-1].name == "base_link" and answerer.frames[-1].up_source == "tf"
    point = response.points[0]
    assert (point.x, point.y, point.z) == pytest.approx((2.2, 0.0, 0.5))  # 2 m ahead of a camera 0.2 m ahead
    assert response.frame_id == "base_link" and response.form == "depth" and response.value_source == "measured"
    assert response.window_age_s == pytest.approx(0.25)
    handler.shutdown()


def test_the_json_querys_target_frame_is_used_and_a_conflict_is_refused():
    answerer = FrameAnswerer()
    handler = handler_with(answerer)
    query = json.dumps({"form": "depth", "pixels": [[1, 1]], "target_frame": "odom"})
    response = handler.handle(Ask.Request(question=query))
    assert response.success and response.frame_id == "odom" and answerer.frames[-1].name == "odom"
    conflict = handler.handle(Ask.Request(question=query, target_frame="base_link"))
    assert not conflict.success and "differ" in conflict.error and math.isnan(conflict.window_age_s)
    broken = handler.handle(Ask.Request(question='{"form": "depth", "pixels": [[1, 1]]'))
    assert not broken.success and "not valid JSON" in broken.error
    handler.shutdown()


def test_target_frames_are_refused_without_metric_scale_or_tf():
    answerer = FrameAnswerer()
    handler = handler_with(answerer, metric=False)
    response = handler.handle(Ask.Request(question="What is the depth at (1, 1)?", target_frame="base_link"))
    assert not response.success and "metric scale" in response.error and not answerer.frames
    unknown = handler_with(answerer).handle(Ask.Request(question="depth at (1, 1)", target_frame="map"))
    assert not unknown.success and "'map'" in unknown.error
    no_tf = handler_with(answerer)
    no_tf.robot_frames = None
    refused = no_tf.handle(Ask.Request(question="depth at (1, 1)", target_frame="base_link"))
    assert not refused.success and "TF input" in refused.error
    plain = no_tf.handle(Ask.Request(question="depth at (1, 1)"))  # the window's own frame needs no TF
    # a window that the map did not place (none here) has no frame on TF: the answer names none
    assert plain.success and plain.frame_id == ""
    for each in (handler, no_tf):
        each.shutdown()
