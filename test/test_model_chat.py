"""The semantic path: chat with the geometry tokens in context, KV-cached generation, stop rules."""
import shutil

import numpy as np
import pytest
import torch

from g2vlm_ros.model import load_checkpoint
from g2vlm_ros.model.chat import (
    ChatSession,
    ChatTokens,
    GenerationConfig,
    chat,
    chat_with_geometry,
    vision_block_positions,
)
from g2vlm_ros.model.vision_preprocess import vision_inputs

SPECIAL = {"bos_token_id": 1, "eos_token_id": 2, "start_of_image": 3, "end_of_image": 4}
TOKENS = ChatTokens(system=[1, 20, 21, 2], question=[30, 31, 32, 2, 1, 33], start=40, special=SPECIAL)


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (60, 80, 3), dtype=np.uint8) for _ in range(2)]
    geometry = torch.rand(2, 3, 28, 42, generator=torch.Generator().manual_seed(1))
    vision = []
    for frame in frames:
        pixel_values, grid = vision_inputs([frame], size=112)
        vision.append((pixel_values, grid[0].tolist()))
    return geometry, vision


def test_vision_block_positions_follow_the_official_rule():
    positions, next_position = vision_block_positions(start=10, grid_thw=(1, 4, 6), merge=2)
    # start marker at 10; merged 2x3 grid from base 11; end marker at 11 + max(0, 1, 2) + 1 = 14
    assert positions.tolist() == [[10, 11, 11, 11, 11, 11, 11, 14], [10, 11, 11, 11, 12, 12, 12, 14],
                                  [10, 11, 12, 13, 11, 12, 13, 14]]
    assert next_position == 15


def test_greedy_generation_with_cache_equals_recomputing_every_step(model, inputs):
    geometry, vision = inputs
    result = chat_with_geometry(model, geometry, vision, TOKENS, GenerationConfig(max_new_tokens=5),
                                keep_logits=True)
    assert result.stopped_by == "max_new_tokens" and len(result.token_ids) == 5
    for step in range(5):
        session = ChatSession(model)
        session.append_text(TOKENS.system)
        session.append_geometry(geometry, SPECIAL)
        for pixel_values, grid in vision:
            session.append_vision(pixel_values, grid, SPECIAL)
        session.append_text(TOKENS.question)
        hidden = session.append_text([TOKENS.start, *result.token_ids[:step]])  # one causal pass, no decoding cache
        logits = model.language_model.lm_head(hidden[-1])
        torch.testing.assert_close(logits, result.logits[step], rtol=1e-4, atol=1e-5)
        assert int(torch.argmax(logits)) == result.token_ids[step]


def test_generation_stops_at_a_stop_token_and_excludes_it(model, inputs):
    geometry, vision = inputs
    free = chat_with_geometry(model, geometry, vision, TOKENS, GenerationConfig(max_new_tokens=4))
    stop_at = free.token_ids[2]
    first = free.token_ids.index(stop_at)
    stopped = chat_with_geometry(model, geometry, vision, TOKENS,
                                 GenerationConfig(max_new_tokens=4, stop_token_ids=(stop_at,)))
    assert stopped.stopped_by == "stop_token" and stopped.token_ids == free.token_ids[:first]
    nothing = chat_with_geometry(model, geometry, vision, TOKENS, GenerationConfig(max_new_tokens=0))
    assert nothing.token_ids == [] and nothing.stopped_by == "max_new_tokens"


def test_sampling_is_reproducible_with_a_seed(model, inputs):
    geometry, vision = inputs
    config = GenerationConfig(max_new_tokens=6, do_sample=True, temperature=1.5, seed=11)
    first = chat_with_geometry(model, geometry, vision, TOKENS, config)
    second = chat_with_geometry(model, geometry, vision, TOKENS, config)
    assert first.token_ids == second.token_ids
    top1 = chat_with_geometry(model, geometry, vision, TOKENS,
                              GenerationConfig(max_new_tokens=6, do_sample=True, top_k=1, seed=5))
    greedy = chat_with_geometry(model, geometry, vision, TOKENS, GenerationConfig(max_new_tokens=6))
    assert top1.token_ids == greedy.token_ids  # top-1 sampling is greedy decoding
    with pytest.raises(ValueError, match="temperature"):
        chat_with_geometry(model, geometry, vision, TOKENS, GenerationConfig(do_sample=True, temperature=0.0))


def test_answers_depend_on_the_geometry_tokens(model, inputs):
    geometry, vision = inputs
    config = GenerationConfig(max_new_tokens=1)
    base = chat_with_geometry(model, geometry, vision, TOKENS, config, keep_logits=True).logits[0]
    other = chat_with_geometry(model, geometry.flip(-1), vision, TOKENS, config, keep_logits=True).logits[0]
    assert not torch.allclose(base, other)


def test_chat_with_a_tokenizer_returns_text(tiny_checkpoint, tmp_path):
    pytest.importorskip("transformers")
    from test_model_checkpoint import write_tokenizer

    folder = tmp_path / "chat"
    shutil.copytree(tiny_checkpoint, folder)
    write_tokenizer(folder)
    model = load_checkpoint(folder)
    frames = [np.full((48, 64, 3), 120, np.uint8)]
    result = chat(model, frames, "Reconstruct the scene .", GenerationConfig(max_new_tokens=3), vision_size=56)
    assert isinstance(result.text, str) and len(result.token_ids) <= 3
    with pytest.raises(ValueError, match="empty"):
        chat(model, frames, "   ")
