"""Object grounding: the parser of the semantic expert's location replies (Qwen2-VL's grounding format on a
0-1000 grid, stripped and plain variants, points), on replies as models write them, including malformed ones."""
from __future__ import annotations

import pytest

from g2vlm_ros.reasoning.grounding import GroundingError, grounding_prompt, parse_grounding

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
