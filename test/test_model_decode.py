"""Decoding over a static KV cache (a CUDA graph on GPUs) generates what the official chat
generated on the checkpoint where the language model matters (../shared/parity/tiny_lm)."""
import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED
from g2vlm_ros.model import load_checkpoint, preprocess
from g2vlm_ros.model.chat import ChatSession, ChatTokens, GenerationConfig, chat_with_geometry
from g2vlm_ros.model.decode import StaticDecoder
from g2vlm_ros.model.vision_preprocess import SEMANTIC_IMAGE_SIZE, vision_inputs

TINY_LM = SHARED / "parity" / "tiny_lm"
pytestmark = pytest.mark.skipif(not TINY_LM.is_dir(), reason="../shared/parity is not present")


def official_chat_inputs():
    spec = json.loads((TINY_LM / "chat.json").read_text())
    frames = [np.asarray(Image.open(SHARED / "data" / "arkitscenes" / name).convert("RGB")) for name in spec["images"]]
    vision = []
    for frame in frames:
        pixel_values, grid = vision_inputs([frame], size=SEMANTIC_IMAGE_SIZE)
        vision.append((pixel_values, grid[0].tolist()))
    tokens = ChatTokens(system=spec["encodings"]["system"], question=spec["encodings"]["question"],
                        start=spec["start_token_id"], special=spec["special_token_ids"])
    return spec, preprocess(frames), vision, tokens


def check_against_the_reference(device: str, dtype: torch.dtype, logits_bound: float) -> None:
    spec, geometry, vision, tokens = official_chat_inputs()
    reference = np.load(TINY_LM / "chat_reference.npz")
    model = load_checkpoint(TINY_LM, device=device, dtype=dtype).fuse_projections()
    config = GenerationConfig(max_new_tokens=spec["max_new_tokens"], stop_token_ids=(-1,))
    result = chat_with_geometry(model, geometry, vision, tokens, config, keep_logits=True, static_cache=True)
    assert result.token_ids == spec["token_ids"]
    ours, theirs = torch.stack(result.logits).double(), torch.from_numpy(reference["logits"]).double()
    error = float((ours - theirs).abs().max() / theirs.abs().max())
    assert error < logits_bound, f"logits relative error {error:.2e}"


def test_static_cache_decoding_reproduces_the_official_greedy_answer():
    check_against_the_reference("cpu", torch.float32, 1e-5)


def test_static_cache_keeps_the_session_cache_and_refuses_overflow():
    model = load_checkpoint(TINY_LM)
    _, geometry, vision, tokens = official_chat_inputs()
    sessions = []
    for static in (False, True):
        session = ChatSession(model)
        session.append_text(tokens.system)
        session.append_geometry(geometry[:1], tokens.special)
        session.append_text(tokens.question)
        result = session.generate(tokens.start, GenerationConfig(max_new_tokens=3, stop_token_ids=(-1,)),
                                  tokens.special["eos_token_id"], static_cache=static)
        sessions.append((session, result))
    (dynamic, first), (static, second) = sessions
    assert first.token_ids == second.token_ids and static.position == dynamic.position
    assert len(static.cache) == len(dynamic.cache)
    for (k1, v1), (k2, v2) in zip(dynamic.cache.layers, static.cache.layers, strict=True):
        torch.testing.assert_close(k2, k1, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v2, v1, rtol=1e-5, atol=1e-5)
    decoder = StaticDecoder(model, capacity=len(dynamic.cache) + 1, use_graph=False)
    decoder.load(dynamic.cache, dynamic.position)
    decoder.step(5)
    with pytest.raises(ValueError, match="full"):
        decoder.step(6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graph_captured_decoding_on_cuda_matches_the_official_answer_and_is_fast():
    check_against_the_reference("cuda", torch.float32, 1e-4)  # TF32 may be on: loose bound
    model = load_checkpoint(TINY_LM, device="cuda").fuse_projections()
    session = ChatSession(model)
    session.append_text(list(range(100)))
    config = GenerationConfig(max_new_tokens=40, stop_token_ids=(-1,))
    session.generate(5, config, 997)  # captures

    def per_token_ms(static_cache: bool) -> float:
        session = ChatSession(model)
        session.append_text(list(range(100)))
        torch.cuda.synchronize()
        started = time.perf_counter()
        result = session.generate(5, config, 997, static_cache=static_cache)
        torch.cuda.synchronize()
        return (time.perf_counter() - started) * 1e3 / len(result.token_ids)

    per_token_ms(static_cache=False)  # the eager path's lazy initialisation, outside the measurement
    # relative to the eager step measured in the same run: the graph exists to remove its launch overhead
    graph_ms, eager_ms = per_token_ms(static_cache=True), per_token_ms(static_cache=False)
    print(f"tiny model: graph-captured decoding {graph_ms:.2f} ms per token, eager {eager_ms:.2f} ms")
    assert graph_ms < eager_ms
