"""The generation path of /g2vlm/ask on a tiny checkpoint with a tokenizer, across processes.

The node (torch backend, CPU) answers with the semantic expert; this process runs the same model's
own `chat` on the same image with the same greedy settings, and the texts must be identical. A
grounded question must carry the value measured on the node's window, recomputed here.
"""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from conftest import wait_until
from g2vlm_interfaces.srv import Ask
from g2vlm_ros.ros.conversions import numpy_to_image
from test_model_checkpoint import write_tokenizer

MAX_TOKENS = 6
QUESTION = "Reconstruct the 3D scene ."


@pytest.fixture(scope="module")
def chat_checkpoint(tiny_checkpoint, tmp_path_factory):
    pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("chat_checkpoint") / "tiny"
    shutil.copytree(tiny_checkpoint, folder)
    vocab = json.loads((folder / "text_config.json").read_text())["vocab_size"]
    write_tokenizer(folder, cover_vocab=vocab)
    return folder


def test_generated_answer_matches_the_models_own_generate(start_node, ros_client, chat_checkpoint):
    from g2vlm_ros.backends.torch_backend import TorchBackend
    from g2vlm_ros.model import load_checkpoint
    from g2vlm_ros.model.chat import GenerationConfig, chat
    from g2vlm_ros.pipeline.scale_tracker import ScaleEstimate
    from g2vlm_ros.reasoning.geometric import GeometricAnswerer

    camera = "gen"
    node = start_node(backend="torch", device="cpu", checkpoint_path=str(chat_checkpoint), cameras=[camera],
                      max_answer_tokens=MAX_TOKENS, max_rate_hz=2.0, window_size=1)  # the one-image run below
    assert "semantic expert" in node.log()
    image = np.random.default_rng(3).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    depth = ros_client.collect(Image, f"/g2vlm/{camera}/depth_relative")
    publisher = ros_client.node.create_publisher(Image, f"/{camera}/image_raw", 10)

    def publish():
        header = Header(frame_id="gen_optical", stamp=ros_client.node.get_clock().now().to_msg())
        publisher.publish(numpy_to_image(image, "rgb8", header))

    wait_until(lambda: depth, 60, "no window from the tiny model", action=publish, period_s=0.5)

    def ask(question: str, timeout_s: float = 60.0) -> Ask.Response:
        return ros_client.call(Ask, "/g2vlm/ask", Ask.Request(question=question, timeout_s=timeout_s), timeout_s=90)

    model = load_checkpoint(chat_checkpoint)
    expected = chat(model, [image], QUESTION, GenerationConfig(max_new_tokens=MAX_TOKENS)).text.strip()
    response = ask(QUESTION)
    assert response.success, response.error
    assert expected and response.answer == expected
    assert f"generated {MAX_TOKENS} tokens" in response.reasoning

    # a grounded form: the generated text answers, the value is measured on the node's window
    grounded = ask("What is the depth at (10, 20)?")
    assert grounded.success and grounded.unit == "relative" and grounded.reasoning.startswith("measured:")
    result = TorchBackend(str(chat_checkpoint), "cpu").run([image])
    frame = SimpleNamespace(camera=camera, stamp_ns=1, rgb=image)
    snapshot = SimpleNamespace(window=SimpleNamespace(frames=[frame]), result=result,
                               scale=ScaleEstimate("none", None))
    measured = GeometricAnswerer().answer("What is the depth at (10, 20)?", [camera], snapshot, 1.0)
    assert grounded.value == pytest.approx(measured.value, rel=1e-4)

    timed_out = ask(QUESTION, timeout_s=0.001)
    assert not timed_out.success and "timed out" in timed_out.error
    assert node.alive()
