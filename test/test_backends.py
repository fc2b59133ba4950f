"""Inference backends behind one interface: torch and ONNX Runtime on the CPU, selection, the node."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image as ImageMsg

from conftest import SHARED, copy_graph, wait_until
from g2vlm_ros.backends.backend import BackendUnavailableError, GeometryResult
from g2vlm_ros.backends.onnxruntime_backend import OnnxRuntimeBackend
from g2vlm_ros.backends.preprocess import prepare_images, resize_on_device
from g2vlm_ros.backends.registry import DEMO_CHECKPOINT, BackendRequest, create_backend
from g2vlm_ros.backends.torch_backend import TorchBackend
from g2vlm_ros.deploy.export import Bucket, checkpoint_fingerprint, export_geometry_onnx
from g2vlm_ros.model import load_checkpoint, preprocess
from test_node_process import image_to_numpy_float, rgb_image, stamped

IDS = {"prompt_token_ids": [10, 11, 12],
       "special_token_ids": {"bos_token_id": 1, "eos_token_id": 2, "start_of_image": 3, "end_of_image": 4}}


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint plus token_ids.json, as a folder without tokenizer files ships them."""
    folder = tmp_path_factory.mktemp("backend") / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "token_ids.json").write_text(json.dumps(IDS))
    return folder


def frames(count=2, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(count)]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def torch_run(checkpoint):
    """The torch backend and its result on frames(): tested below, and the reference of the ONNX Runtime backend
    (one run of the model at 518x392 costs seconds on a CPU)."""
    backend = TorchBackend(str(checkpoint), device="cpu", precision="auto")
    return backend, backend.run(frames())


def test_torch_backend_runs_the_model_with_official_preprocessing(checkpoint, torch_run):
    backend, result = torch_run
    assert backend.precision == "fp32" and "cpu" in backend.describe()
    images = frames()
    result.validate()
    assert isinstance(result, GeometryResult) and result.size == (518, 392) and result.num_views == 2
    reference = load_checkpoint(checkpoint).reconstruct(preprocess(images), IDS["prompt_token_ids"],
                                                         IDS["special_token_ids"])
    # the window's world frame is the first view's optical frame (geometry.window_frame)
    first_inverse = torch.linalg.inv(reference["camera_poses"][0])
    anchored_points = reference["points"] @ first_inverse[:3, :3].T + first_inverse[:3, 3]
    for ours, expected in ((result.world_points, anchored_points), (result.depth, reference["depth"]),
                           (result.camera_to_world, first_inverse @ reference["camera_poses"])):
        assert relative_error(ours, expected) < 1e-5
    torch.testing.assert_close(result.camera_to_world[0], torch.eye(4), atol=1e-5, rtol=0)
    assert result.colors.dtype == torch.uint8 and result.colors.shape == (2, 392, 518, 3)
    # no confidence head: the confidence is the agreement of the two point heads, and says so
    assert result.confidence_source == "head_agreement"
    gap = (anchored_points - reference["global_points"]).norm(dim=-1) / reference["depth"]
    torch.testing.assert_close(result.confidence, torch.exp(-gap / 0.1), atol=1e-5, rtol=1e-4)


def test_torch_backend_refuses_what_it_cannot_run(tiny_checkpoint, tmp_path):
    with pytest.raises(BackendUnavailableError, match="does not exist"):
        TorchBackend(str(tmp_path / "nowhere"), device="cpu")
    with pytest.raises(BackendUnavailableError, match="token_ids.json"):
        TorchBackend(str(tiny_checkpoint), device="cpu")  # no tokenizer, no token_ids.json
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="CUDA is not available"):
            TorchBackend(str(tiny_checkpoint), device="cuda")


def test_onnxruntime_backend_matches_torch_and_selects_graphs_by_checkpoint(checkpoint, torch_run, tmp_path):
    engines = tmp_path / "engines"
    model = load_checkpoint(checkpoint)
    export_geometry_onnx(model, Bucket(2, 392, 518), engines, prefix_token_ids=IDS["prompt_token_ids"],
                         special_token_ids=IDS["special_token_ids"], model_hash=checkpoint_fingerprint(checkpoint))
    backend = OnnxRuntimeBackend(str(engines), checkpoint_fingerprint(checkpoint), device="cpu")
    assert backend.providers == ["CPUExecutionProvider"]
    images = frames()
    ours, reference = backend.run(images), torch_run[1]  # the torch backend on the same images
    for name in ("world_points", "local_points", "camera_to_world", "depth"):
        assert relative_error(getattr(ours, name), getattr(reference, name)) < 1e-4, name
    # global descriptors (loop closure) come from the torch backend only; exported graphs leave them out
    assert ours.descriptors is None and reference.descriptors is not None
    with pytest.raises(BackendUnavailableError, match=r"no exported graph for bucket 1x392x518; available: 2x392x518"):
        backend.run(images[:1])
    with pytest.raises(BackendUnavailableError, match="no exported geometry graph for model"):
        OnnxRuntimeBackend(str(engines), "0" * 64, device="cpu")


def test_auto_prefers_exported_graphs_then_the_checkpoint(checkpoint, tiny_graph, tmp_path):
    engines = tmp_path / "auto_engines"
    engines.mkdir()
    request = BackendRequest(backend="auto", checkpoint_path=str(checkpoint), engine_dir=str(engines), device="cpu")
    assert create_backend(request).name == "torch"
    # this checkpoint's graph (exported once for the session, with checkpoint_fingerprint(checkpoint) as its hash)
    copy_graph(tiny_graph, engines)
    assert create_backend(BackendRequest(backend="auto", checkpoint_path=str(checkpoint), engine_dir=str(engines),
                                         device="cpu")).name == "onnxruntime"
    # no checkpoint configured: the embedded demo model, on the torch backend (no graphs exported for it)
    demo = create_backend(BackendRequest(backend="auto", engine_dir=str(tmp_path / "empty"), device="cpu"))
    assert demo.name == "torch" and demo.checkpoint == DEMO_CHECKPOINT
    with pytest.raises(BackendUnavailableError, match="tensorrt.*onnxruntime.*torch"):
        create_backend(BackendRequest(backend="auto", checkpoint_path=str(tmp_path / "missing"),
                                      engine_dir=str(tmp_path / "empty"), device="cpu"))


def test_tensorrt_backend_needs_a_gpu_and_says_so():
    pytest.importorskip("tensorrt_rtx")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(BackendUnavailableError, match="tensorrt.*needs a CUDA GPU"):
        create_backend(BackendRequest(backend="tensorrt"))


@pytest.mark.skipif(not (SHARED / "data").is_dir(), reason="../shared/data is not present")
def test_device_resize_stays_close_to_the_official_lanczos():
    frame = [np.asarray(Image.open(next((SHARED / "data" / "arkitscenes").glob("*.jpg"))).convert("RGB"))]
    difference = (resize_on_device(frame, torch.device("cpu")) - preprocess(frame)).abs() * 255
    assert difference.shape == (1, 3, 392, 518)
    assert float(difference.mean()) < 1.5 and float(difference.max()) < 32
    batch, colors = prepare_images(frame, torch.device("cpu"))
    assert torch.equal(batch, preprocess(frame)) and colors.shape == (1, 392, 518, 3)


def test_node_runs_the_real_model_across_processes(start_node, ros_client, checkpoint):
    camera = "model_cam"
    # one-view windows: the node's depth must equal one run of the model on this image
    node = start_node(backend="torch", device="cpu", checkpoint_path=str(checkpoint), cameras=[camera], window_size=1)
    assert "backend ready: torch on cpu (fp32)" in node.log()
    depth = ros_client.collect(ImageMsg, f"/g2vlm/{camera}/depth_relative")
    publisher = ros_client.node.create_publisher(ImageMsg, f"/{camera}/image_raw", qos_profile_sensor_data)
    image = frames(1)[0]

    def publish():
        msg = rgb_image((0, 0, 0), stamped(ros_client, f"{camera}_optical"), width=64, height=48)
        msg.data = image.tobytes()
        publisher.publish(msg)

    wait_until(lambda: depth, 60, "no depth from the model", action=publish, period_s=0.5)
    values = image_to_numpy_float(depth[0])
    assert values.shape == (48, 64) and np.isfinite(values).all() and (values > 0).all()
    backend = TorchBackend(str(checkpoint), device="cpu")
    expected = backend.run([image]).depth[0].numpy()
    # the node resamples the 518x392 depth to the camera's 64x48 by nearest neighbour
    rows = np.minimum(((np.arange(48) + 0.5) * 392 / 48).astype(int), 391)
    cols = np.minimum(((np.arange(64) + 0.5) * 518 / 64).astype(int), 517)
    np.testing.assert_allclose(values, expected[rows][:, cols], rtol=1e-5)
    assert "TEST PLACEHOLDER" not in node.log()


def test_engines_for_another_gpu_are_listed_with_their_differences(tiny_graph, tmp_path):
    """What the tensorrt backend tells a user whose engine folder holds engines for another GPU."""
    pytest.importorskip("tensorrt_rtx")
    from g2vlm_ros.backends.tensorrt_backend import other_engines
    from g2vlm_ros.deploy.engine_build import build_engine
    from g2vlm_ros.deploy.engine_keys import expected_key
    from g2vlm_ros.deploy.tensorrt_flavour import import_tensorrt

    engines = tmp_path / "engines"
    export = copy_graph(tiny_graph, engines)  # the tiny checkpoint's graph, exported once for the session
    build = build_engine(export.onnx_path, export.manifest, engines, compute_capability="sm89", progress=False,
                         log=lambda line: None)
    _, flavour, version = import_tensorrt()
    needed = expected_key(export.manifest, flavour, version, "sm90")  # e.g. an H100 on the robot
    listed = other_engines(engines, needed)
    assert listed == [f"{build.engine_path.name} (compute_capability: built for 'sm89', needed 'sm90')"]
    assert other_engines(engines, expected_key(export.manifest, flavour, version, "sm89")) == []  # it matches
