"""The geometric answerer without ROS: the grammar, and every form on a scene with known geometry.

Scene: cameras look at a wall 2 units away (pinhole f = 50 px, 64x48 images, principal point at
the image centre): front has keyframes at x = 0 and (newest) x = 0.4, rear one frame at x = 0.8.
With a scale of 2.5 m per unit the wall is 5 m away. Questions use each camera's newest frame.
Expected values are computed by hand from the pinhole model.
"""
from __future__ import annotations

import math
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from g2vlm_ros.geometry.pinhole import backproject_depth, transform_points
from g2vlm_ros.reasoning.geometric import WindowGeometry, answer_parsed
from g2vlm_ros.reasoning.grammar import SUPPORTED_FORMS, parse_question
from g2vlm_ros.reasoning.question import Answer, QuestionError, check_cameras

WIDTH, HEIGHT, FOCAL, WALL = 64, 48, 50.0, 2.0
K = np.array([[FOCAL, 0, (WIDTH - 1) / 2], [0, FOCAL, (HEIGHT - 1) / 2], [0, 0, 1]])


def scene(metres_per_unit=2.5, second_camera="rear", moved=(0.4, 0.0, 0.0)) -> WindowGeometry:
    """front: two keyframes (t=0 at the origin, t=1 s at `moved`); rear: one frame at x = 0.8."""
    cameras = ["front", "front", second_camera]
    positions = [np.zeros(3), np.array(moved), np.array([0.8, 0.0, 0.0])]
    depth = np.full((3, HEIGHT, WIDTH), WALL, np.float32)
    local = np.stack([backproject_depth(d, K) for d in depth])
    poses = np.tile(np.eye(4), (3, 1, 1))
    poses[:, :3, 3] = positions
    world = np.stack([transform_points(poses[i], local[i]) for i in range(3)])
    return WindowGeometry(cameras, [0, 1_000_000_000, 1_000_000_000], [(WIDTH, HEIGHT)] * 3, depth, local, world,
                          poses, metres_per_unit, "test scale" if metres_per_unit else "")


def ask(question: str, geometry=None, cameras=("front", "rear")) -> Answer:
    return answer_parsed(parse_question(question, list(cameras)), geometry or scene())


def ray(x: float, y: float) -> np.ndarray:
    return np.array([(x - K[0, 2]) / FOCAL * WALL, (y - K[1, 2]) / FOCAL * WALL, WALL])


@pytest.mark.parametrize("question, form", [
    ("What is the depth at (10, 20)?", "depth"),
    ("how far away is (10,20) in rear", "range"),
    ("Distance to (3.5, 4)?", "range"),
    ("What is the distance between (0, 0) and (63, 0)?", "between"),
    ("How far apart are (1,1) and (2,2)?", "between"),
    ("Which is closer, (1, 1) or (30, 20)?", "closer"),
    ("which point is farther: (1, 1) or (30, 20)", "farther"),
    ("How much higher is (5, 0) than (5, 40)?", "height"),
    ("height difference between (5, 0) and (5, 40)", "height"),
    ("How much free space is straight ahead?", "free"),
    ("Is there an obstacle in front of rear? How far is the free distance?", "free"),
    ("How far did the front camera move?", "moved"),
    ("What is the width of [0, 0, 63, 47]?", "width"),
    ("How tall is [0, 0, 63, 47] in rear?", "tall"),
    ("How big is the region [0, 0, 63, 47]?", "size"),
])
def test_grammar_recognises_each_form(question, form):
    assert parse_question(question, ["front", "rear"]).form == form


@pytest.mark.parametrize("question, reason", [
    ("What colour is the chair?", "names no image location"),
    ("Is (1, 2) nice?", "names one point but not what to measure"),
    ("(1,2) (3,4) (5,6) distances", "names 3 points"),
    ("Compare (1, 2) and (3, 4)", "two points but not what to compare"),
    ("What is in [0, 0, 5, 5]?", "not what to measure"),
    ("depth at (1, 2) in side", "camera 'side' is not among the cameras"),
])
def test_ungrounded_questions_are_refused_with_what_can_be_answered(question, reason):
    with pytest.raises(QuestionError) as error:
        parse_question(question, ["front", "rear"])
    assert reason in str(error.value)
    if "camera 'side'" not in reason:
        assert SUPPORTED_FORMS in str(error.value)


def test_point_forms_match_the_pinhole_geometry_in_metres():
    answer = ask("depth at (10, 20)")
    assert answer.value == pytest.approx(5.0) and answer.unit == "m" and "5.000 m" in answer.answer
    np.testing.assert_allclose(answer.points[0], 2.5 * (ray(10, 20) + [0.4, 0, 0]), rtol=1e-6)  # newest frame
    assert ask("how far is (0, 0)").value == pytest.approx(2.5 * np.linalg.norm(ray(0, 0)))
    between = ask("distance between (0, 0) and (63, 0)")
    assert between.value == pytest.approx(2.5 * 63 / FOCAL * WALL) and between.points.shape == (2, 3)
    # points of different cameras meet in the world frame: rear sits 0.4 units beyond front's newest frame
    across = ask("distance between (10, 10) in front and (10, 10) in rear")
    assert across.value == pytest.approx(2.5 * 0.4)
    closer = ask("which is closer, (0, 0) or (31.5, 23.5)")
    # (31.5, 23.5) falls between pixels: the nearest one, (32, 24), is 0.01 units off the axis
    assert "(31.5, 23.5) in front is closer" in closer.answer and closer.value == pytest.approx(5.0, rel=1e-3)
    farther = ask("which is farther, (0, 0) or (31.5, 23.5)")
    assert farther.value == pytest.approx(2.5 * np.linalg.norm(ray(0, 0)))
    height = ask("how much higher is (5, 0) than (5, 40)")  # image up is -y: row 0 is above row 40
    assert height.value == pytest.approx(2.5 * 40 / FOCAL * WALL) and "higher" in height.answer
    assert ask("height difference between (5, 40) and (5, 0)").value == pytest.approx(-height.value)


def test_camera_and_box_forms():
    assert ask("free distance straight ahead").value == pytest.approx(5.0)
    moved = ask("how far did front move")
    assert moved.value == pytest.approx(1.0) and "1.00 s" in moved.answer and "2 keyframes" in moved.reasoning
    with pytest.raises(QuestionError, match="one frame in the latest window"):
        ask("how far did rear move")
    width, tall = ask("width of [0, 0, 63, 47]"), ask("height of [0, 0, 63, 47]")
    assert width.value == pytest.approx(2.5 * 63 / FOCAL * WALL)
    assert tall.value == pytest.approx(2.5 * 47 / FOCAL * WALL)
    assert ask("size of [0, 0, 63, 47]").value == pytest.approx(width.value)
    assert ask("size of [63, 47, 0, 0]").value == pytest.approx(width.value), "corners in any order"


def test_without_a_metric_scale_answers_are_relative_and_say_so():
    answer = ask("depth at (10, 20)", scene(metres_per_unit=None))
    assert answer.value == pytest.approx(WALL) and answer.unit == "relative"
    assert "relative units" in answer.answer and "no metric scale" in answer.reasoning


def test_locations_without_geometry_are_refused_not_guessed():
    geometry = scene()
    geometry.world_points[1, 20, 10] = np.nan  # view 1: front's newest frame
    geometry.local_points[1, 20, 10] = np.nan
    with pytest.raises(QuestionError, match="outside camera 'front'"):
        ask("depth at (64, 10)", geometry)
    with pytest.raises(QuestionError, match="no valid geometry"):
        ask("depth at (10, 20) in front", geometry)
    geometry.depth[:] = np.nan
    with pytest.raises(QuestionError, match="no valid depth straight ahead"):
        ask("free distance straight ahead of front", geometry)


def test_source_pixels_map_to_the_model_resolution():
    geometry = scene()
    geometry.image_sizes = [(640, 480)] * 3  # the cameras' images are 10x the model's working size
    assert geometry.model_pixel(0, 0, 0) == (0, 0)
    assert geometry.model_pixel(0, 639, 479) == (HEIGHT - 1, WIDTH - 1)
    assert geometry.model_pixel(0, 104.5, 204.5) == (20, 10)


class SlowAnswerer:
    def __init__(self, delay_s: float):
        self.delay_s, self.running = delay_s, 0
        self.peak = 0
        self._lock = threading.Lock()

    def answer(self, question, cameras, snapshot, timeout_s):
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(self.delay_s)
        with self._lock:
            self.running -= 1
        return Answer("slow", value=1.0, unit="m")


def ask_handler(answerer, max_concurrent: int):
    """An AskHandler over a one-frame window, with the node's typed configuration."""
    from g2vlm_ros.ros.ask_handler import AskHandler
    from g2vlm_ros.ros.params import PARAMETERS, CameraConfig, NodeConfig

    frame = SimpleNamespace(stamp_ns=5_000_000_007, camera="front")
    placed = SimpleNamespace(window_to_map=SimpleNamespace(apply_points=lambda points: points))  # the map's origin
    snapshot = SimpleNamespace(window=SimpleNamespace(frames=[frame]), placement=placed)
    config = NodeConfig.from_values([CameraConfig("front", "front/image_raw", "", "raw", "")],
                                    {spec.name: spec.default for spec in PARAMETERS})
    config.max_question_bytes, config.ask_timeout_s = 100, 5.0
    source = SimpleNamespace(latest_snapshot=lambda: snapshot, not_ready_reason=lambda: "")
    return AskHandler(source, config, SimpleNamespace(error=lambda message: None), answerer, max_concurrent)


def test_camera_errors_stay_short_and_name_an_empty_camera():
    known = ["front", "rear"]
    assert check_cameras([], known) == known and check_cameras(["rear"], known) == ["rear"]

    def error(requested) -> str:
        with pytest.raises(QuestionError) as raised:
            check_cameras(requested, known)
        return str(raised.value)

    many = error([f"camera_{index:04d}_{'x' * 40}" for index in range(1000)])  # about 50 KB of names
    assert len(many) < 400 and "camera_0000" in many and "and 995 more" in many, many[:500]
    assert many.endswith("; configured: front, rear")
    assert len(error(["y" * 100_000])) < 200
    assert error(["nope"] * 1000) == "unknown camera(s) nope; configured: front, rear"  # each name once
    assert error(["front", ""]) == "unknown camera(s) an empty camera name; configured: front, rear"
    assert "'line\\nbreak'" in error(["line\nbreak"])  # control characters are shown escaped, not raw


def test_ask_handler_enforces_timeout_and_concurrency():
    from g2vlm_interfaces.srv import Ask

    answerer = SlowAnswerer(0.5)
    handler = ask_handler(answerer, max_concurrent=2)
    timed_out = handler.handle(Ask.Request(question="q", timeout_s=0.1))
    assert not timed_out.success and "timed out after 0.1 s" in timed_out.error and math.isnan(timed_out.value)
    time.sleep(0.6)  # let the timed-out answer finish and free its slot
    results = []
    threads = [threading.Thread(target=lambda: results.append(handler.handle(Ask.Request(question="q"))))
               for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    answered = [r for r in results if r.success]
    busy = [r for r in results if not r.success]
    assert len(answered) == 2 and len(busy) == 4 and all("busy: 2 questions" in r.error for r in busy)
    assert answerer.peak <= 2 and answered[0].frame_id == "g2vlm_map" and answered[0].value == 1.0
    assert (answered[0].stamp.sec, answered[0].stamp.nanosec) == (5, 7)  # the newest frame's capture time
    handler.shutdown()
