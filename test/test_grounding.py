"""Object grounding: the parser of the semantic expert's location replies (Qwen2-VL's grounding format on a
0-1000 grid, stripped and plain variants, points), on replies as models write them, including malformed ones."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from g2vlm_ros.reasoning.grounding import GroundingAnswerer, GroundingError, grounding_prompt, parse_grounding
from g2vlm_ros.reasoning.question import Answer, QuestionError

WIDTH, HEIGHT = 640, 480


def pixels(x: float, y: float) -> tuple[float, float]:
    return x * WIDTH / 1000, y * HEIGHT / 1000


@pytest.mark.parametrize("reply", [
    "<|object_ref_start|>the red ball<|object_ref_end|><|box_start|>(108,291),(170,350)<|box_end|><|im_end|>",
    "<|object_ref_start|>the red ball<|object_ref_end|><|box_start|>(108, 291), (170, 350)<|box_end|>",
    "<|object_ref_start|>the red ball<|object_ref_end|><|box_start|>(170,350),(108,291)<|box_end|>",  # swapped
    "<|object_ref_start|>the red ball<|object_ref_end|>\n<|box_start|>(108,291),(170,350)<|box_end|>",
])
def test_qwen2_vl_grounding_replies_give_the_box_in_pixels(reply):
    grounding = parse_grounding(reply, WIDTH, HEIGHT)
    assert grounding.label == "the red ball"
    assert grounding.box == pytest.approx((*pixels(108, 291), *pixels(170, 350)))
    assert grounding.point == pytest.approx(pixels(139, 320.5))


@pytest.mark.parametrize("reply", [
    "the red ball(108,291),(170,350)",  # special tokens skipped when decoding
    "The ball is at (108, 291),(170, 350).",
    "The ball is at (108,291) to (170,350).",
    "(108,291),(170,350)",
])
def test_plain_boxes_are_accepted(reply):
    grounding = parse_grounding(reply, WIDTH, HEIGHT)
    assert grounding.box == pytest.approx((*pixels(108, 291), *pixels(170, 350)))


def test_the_first_of_several_boxes_is_taken():
    reply = ("<|object_ref_start|>ball<|object_ref_end|><|box_start|>(10,20),(30,40)<|box_end|>"
             "<|object_ref_start|>box<|object_ref_end|><|box_start|>(500,500),(600,700)<|box_end|>")
    grounding = parse_grounding(reply, WIDTH, HEIGHT)
    assert grounding.label == "ball" and grounding.box == pytest.approx((*pixels(10, 20), *pixels(30, 40)))


@pytest.mark.parametrize("reply, expected", [
    ("<|box_start|>(500,250)<|box_end|>", (500, 250)),
    ("The ball is at (500, 250).", (500, 250)),
    ("(500,250),(500,250)", (500, 250)),  # a box of no extent is a point
])
def test_points_are_accepted(reply, expected):
    grounding = parse_grounding(reply, WIDTH, HEIGHT)
    assert grounding.box is None and grounding.point == pytest.approx(pixels(*expected))


def test_the_far_edge_of_the_grid_stays_inside_the_image():
    grounding = parse_grounding("(0,0),(1000,1000)", WIDTH, HEIGHT)
    assert grounding.box == (0.0, 0.0, WIDTH - 1.0, HEIGHT - 1.0)


@pytest.mark.parametrize("reply, reason", [
    ("", "no box"),
    ("I cannot see a ball in the image.", "no box"),
    ("<|object_ref_start|>the ball<|object_ref_end|><|box_start|>(108,291),(170", "incomplete"),  # cut off
    ("<|box_start|>(108,291),(1700,350)<|box_end|>", "off the 0-1000 grid"),
    ("(-5,291),(170,350)", "off the 0-1000 grid"),
    ("(108,291),(108,350)", "no area"),
    ("(0.108,0.291),(0.170,0.350)", "0-1 fractions"),
    ('{"bbox_2d": [108, 291, 170, 350], "label": "ball"}', "no box"),  # another model's format, in pixels
    ("The ball is about 2.5 meters away.", "no box"),  # a number, but no location
])
def test_malformed_replies_are_refused_with_the_reply_quoted(reply, reason):
    with pytest.raises(GroundingError, match=reason) as raised:
        parse_grounding(reply, WIDTH, HEIGHT)
    assert "the model's reply" in str(raised.value)


def test_a_long_reply_is_quoted_clipped():
    with pytest.raises(GroundingError) as raised:
        parse_grounding("no " * 1000, WIDTH, HEIGHT)
    assert len(str(raised.value)) < 300


def test_the_prompt_names_the_subject_in_the_grounding_markers():
    assert "<|object_ref_start|>the pink box<|object_ref_end|>" in grounding_prompt("the pink box")


# ---------------------------------------------------------------- the answerer: locate, then measure

def window(image_size=(64, 48), depth_m: float = 2.0):
    """A one-view window of a fronto-parallel wall depth_m away (focal 50 px), metric (1 m per unit)."""
    import torch

    from g2vlm_ros.geometry.pinhole import backproject_depth
    from g2vlm_ros.pipeline.scale_tracker import ScaleEstimate

    width, height = image_size
    k = np.array([[50.0, 0, (width - 1) / 2], [0, 50.0, (height - 1) / 2], [0, 0, 1]], np.float32)
    depth = np.full((1, height, width), depth_m, np.float32)
    local = backproject_depth(depth[0], k)[None].astype(np.float32)
    result = SimpleNamespace(depth=torch.from_numpy(depth), local_points=torch.from_numpy(local),
                             world_points=torch.from_numpy(local.copy()),
                             camera_to_world=torch.from_numpy(np.eye(4, dtype=np.float32)[None]))
    image = np.zeros((height, width, 3), np.uint8)
    frame = SimpleNamespace(camera="front", frame_id="front_optical", stamp_ns=1, rgb=image)
    return SimpleNamespace(window=SimpleNamespace(frames=[frame]), result=result,
                           scale=ScaleEstimate("fixed", 1.0))


class ScriptedGenerator:
    """The checkpoint's generator with a fixed reply (what a grounding model says), recording the prompts."""

    def __init__(self, reply: str):
        self.reply, self.prompts, self.answered = reply, [], []

    def generate(self, images, prompt, deadline, timeout_s, feedback=None, is_cancelled=None):
        self.prompts.append(prompt)
        return self.reply, "the model generated 9 tokens (stop_token)"

    def answer(self, question, cameras, snapshot, timeout_s, feedback=None, is_cancelled=None):
        self.answered.append(question)
        return Answer("free text")


def test_a_located_object_is_measured_on_the_window_not_taken_from_the_text():
    from g2vlm_ros.reasoning.geometric import GeometricAnswerer

    reply = "<|object_ref_start|>the ball<|object_ref_end|><|box_start|>(250,250),(500,750)<|box_end|> 9 metres"
    generator = ScriptedGenerator(reply)
    answerer = GroundingAnswerer(generator, GeometricAnswerer())
    snapshot = window()
    answer = answerer.answer("How wide is the ball?", ["front"], snapshot, 5.0)
    assert "<|object_ref_start|>ball<|object_ref_end|>" in generator.prompts[0]
    # the box (16, 12)-(32, 36) px on a wall 2 m away at focal 50 px: 16 px wide -> 0.64 m, measured
    explicit = GeometricAnswerer().answer("How wide is [16, 12, 32, 36]?", ["front"], snapshot, 5.0)
    assert answer.value == pytest.approx(explicit.value) and answer.value == pytest.approx(0.64, rel=0.05)
    assert answer.value_source == "measured" and "box [16, 12, 32, 36]" in answer.reasoning
    assert "the model's estimate of where it is" in answer.reasoning  # its text is where to look, not the value
    distance = answerer.answer("How far away is the ball?", ["front"], snapshot, 5.0)
    assert distance.value == pytest.approx(2.0, rel=0.02) and distance.value_source == "measured"
    assert not generator.answered


def test_an_unlocated_object_is_refused_with_the_reply_and_no_value():
    from g2vlm_ros.reasoning.geometric import GeometricAnswerer

    generator = ScriptedGenerator("The ball is about 2.5 meters away.")
    with pytest.raises(QuestionError, match="did not locate it.*2.5 meters.*no value is given"):
        GroundingAnswerer(generator, GeometricAnswerer()).answer("How far is the ball?", ["front"], window(), 5.0)


def test_questions_not_about_an_object_go_to_the_generator_unchanged():
    from g2vlm_ros.reasoning.geometric import GeometricAnswerer

    generator = ScriptedGenerator("")
    answer = GroundingAnswerer(generator, GeometricAnswerer()).answer("Describe the scene", ["front"], window(), 5.0)
    assert answer.answer == "free text" and generator.answered == ["Describe the scene"] and not generator.prompts


TINY_LM = Path(__file__).resolve().parents[2] / "shared" / "parity" / "tiny_lm"


@pytest.mark.skipif(not TINY_LM.is_dir(), reason="../shared/parity/tiny_lm is not present")
def test_the_tiny_language_checkpoint_measures_a_parsed_box_or_refuses_with_its_reply():
    """End to end on a real (tiny, random) checkpoint with a tokenizer: whatever it says, the answer is either a
    measurement at a parsed location or a refusal quoting the reply, never a number without a location."""
    pytest.importorskip("transformers")
    from g2vlm_ros.backends.torch_backend import TorchBackend
    from g2vlm_ros.reasoning.generative import GenerativeAnswerer
    from g2vlm_ros.reasoning.geometric import GeometricAnswerer

    backend = TorchBackend(str(TINY_LM), "cpu")
    snapshot = window()
    snapshot.window.frames[0].rgb = np.random.default_rng(5).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    snapshot.result = backend.run([snapshot.window.frames[0].rgb])
    generator = GenerativeAnswerer(backend.model, max_new_tokens=24)
    answerer = GroundingAnswerer(generator, GeometricAnswerer())
    try:
        answer = answerer.answer("How wide is the ball?", ["front"], snapshot, 120.0)
    except QuestionError as refusal:
        assert "the model's reply" in str(refusal) and "generated" in str(refusal)
    else:
        assert answer.value_source == "measured" and math.isfinite(answer.value)
        assert "located by the semantic expert at" in answer.reasoning
