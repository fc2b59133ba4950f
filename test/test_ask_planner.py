"""The planner answerer without ROS: typed queries, the language parser's rules, gravity, units, frames, and a
subset of the evaluation set (g2vlm_ros.cli.evaluate_ask) on one rendered room with exact truth."""
from __future__ import annotations

import json

import numpy as np
import pytest
from test_reasoning import scene

from g2vlm_ros.cli.evaluate_ask import CAMERA, cases_for, scenes, score
from g2vlm_ros.reasoning.language import correct_typos, parse_question
from g2vlm_ros.reasoning.planner import PlannerAnswerer, to_query
from g2vlm_ros.reasoning.query import QUERY_SCHEMA, Query, query_from_json
from g2vlm_ros.reasoning.question import QuestionError
from g2vlm_ros.reasoning.robot_frame import RobotFrame


@pytest.mark.parametrize("question, form, unit, camera", [
    ("How far is (320, 240) in centimetres?", "distance", "cm", None),
    ("How far is (320, 240) in front?", "distance", None, None),  # "front" is no camera here
    ("depth at x=320 y=240", "depth", None, None),
    ("what's the distance to the thing at pixel 320,240", "distance", None, None),
    ("dpeth at (320, 240)", "depth", None, None),
    ("How far away is [10, 20] in feet?", "distance", "ft", None),
    ("depth at (1, 2) in CAMERA", "depth", None, "camera"),
    ("Is there at least 1 m of free space ahead?", "free_space_check", None, None),
    ("how much did the camera move in the last second", "camera_motion", None, "camera"),
])
def test_language_forms(question, form, unit, camera):
    query = parse_question(question, ["camera"])
    assert (query.form, query.unit, query.camera) == (form, unit, camera)


@pytest.mark.parametrize("question", ["How far did the ball move?", "How much space is in front of the pink box?",
                                      "How wide is the ball?", "how far is (3, 4) from the ball"])
def test_object_questions_are_refused_not_widened(question):
    with pytest.raises(QuestionError, match="has no pixel or box"):
        parse_question(question, ["camera"])


def test_typos_only_on_known_long_words():
    assert correct_typos("dpeth distnace widht") == "depth distance width"
    assert correct_typos("the ball with a weight") == "the ball with a weight"


def test_json_queries_and_schema():
    query = query_from_json('{"form": "box_width", "box": [10, 20, 30, 40], "box_format": "xywh"}')
    assert query.box == (10, 20, 40, 60)
    for text, reason in [('{"query": "width", "bbox_xywh": [1, 2, 3, 4]}', "unknown field"),
                         ('{"form": "box_width", "box": [1, 2, 3, 4]}', "box_format"),
                         ('{"form": "depth"}', "takes 1 pixel"), ("{not json", "not valid JSON"),
                         ('{"form": "free_space_check"}', "needs a 'threshold'")]:
        with pytest.raises(QuestionError, match=reason):
            query_from_json(text)
    json.dumps(QUERY_SCHEMA)
    assert set(QUERY_SCHEMA["properties"]["form"]["enum"]) >= {"depth", "box_size", "free_space_check"}


def test_units_frames_and_relative_scale():
    answerer = PlannerAnswerer()
    metric, relative = scene(), scene(metres_per_unit=None)
    depth = answerer.answer_query(to_query("depth at (10, 20) in mm", ["front"]), ["front"], metric)
    assert depth.value == pytest.approx(5000.0) and depth.unit == "mm" and depth.value_source == "measured"
    with pytest.raises(QuestionError, match="no metric scale"):
        answerer.answer_query(to_query("depth at (10, 20) in cm", ["front"]), ["front"], relative)
    shift = np.eye(4)
    shift[:3, 3] = (1.0, 2.0, 3.0)
    frame = RobotFrame("base_link", shift, np.array([0.0, -1.0, 0.0]), "tf")
    query = Query("depth", ((10.0, 20.0),), target_frame="base_link")
    answer = answerer.answer_query(query, ["front"], metric, frame, now_ns=3_000_000_000)
    assert answer.frame_id == "base_link" and answer.window_age_s == pytest.approx(2.0)
    plain = answerer.answer_query(Query("depth", ((10.0, 20.0),)), ["front"], metric)
    np.testing.assert_allclose(answer.points[0], plain.points[0] + (1.0, 2.0, 3.0))
    with pytest.raises(QuestionError, match="no metric scale"):
        answerer.answer_query(query, ["front"], relative, frame)
    # the wall scene has no floor: height needs gravity, which TF gives here
    with pytest.raises(QuestionError, match="no up direction"):
        answerer.answer_query(to_query("how much higher is (5, 0) than (5, 40)", ["front"]), ["front"], metric)
    height = answerer.answer_query(to_query("how much higher is (5, 0) than (5, 40)", ["front"]), ["front"], metric,
                                   RobotFrame("g2vlm_world", None, np.array([0.0, -1.0, 0.0]), "tf"))
    assert height.value == pytest.approx(2.5 * 40 / 50 * 2)


def test_evaluation_subset_on_a_rendered_room():
    room = scenes(1)[0]
    answerer = PlannerAnswerer()
    outcomes = {}
    for case in cases_for(room):
        outcome, detail = score(case, lambda q: answerer.answer(q, [CAMERA], room.snapshot, 10.0))
        outcomes.setdefault(case.group, []).append(outcome)
        assert outcome != "wrong", f"{case.question}: {detail}"
        if case.group != "object":
            assert outcome == "correct", f"{case.question}: {detail}"
    assert set(outcomes["object"]) == {"refused"}
