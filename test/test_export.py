"""ONNX export of the geometry path: ONNX Runtime (CPU) against torch, manifest, options, errors."""
import json

import numpy as np
import onnx
import pytest
import torch

from conftest import PARITY
from g2vlm_ros.cli.export_onnx import main as export_cli
from g2vlm_ros.deploy.export import Bucket, export_geometry_onnx, model_fingerprint
from g2vlm_ros.deploy.export_manifest import read_export_manifest
from g2vlm_ros.model import load_checkpoint
from g2vlm_ros.model.g2vlm import Reconstruction

ort = pytest.importorskip("onnxruntime")
SPECIAL = {"bos_token_id": 1, "eos_token_id": 2, "start_of_image": 3, "end_of_image": 4}
PROMPT = [10, 11, 12]


def run_onnx(path, images: torch.Tensor) -> dict[str, torch.Tensor]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return {name: torch.from_numpy(value) for name, value in zip(names, session.run(None, {"images": images.numpy()}),
                                                                  strict=True)}


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


@pytest.mark.parametrize("bucket", [Bucket(1, 28, 42), Bucket(2, 42, 56)], ids=lambda b: b.stem)
def test_onnx_runtime_matches_torch_fp32(tiny_checkpoint, tmp_path, bucket):
    model = load_checkpoint(tiny_checkpoint)
    images = torch.rand(bucket.views, 3, bucket.height, bucket.width, generator=torch.Generator().manual_seed(2))
    reference = model.reconstruct(images, prefix_token_ids=PROMPT, special_token_ids=SPECIAL)
    result = export_geometry_onnx(model, bucket, tmp_path, prefix_token_ids=PROMPT, special_token_ids=SPECIAL)
    raw = run_onnx(result.onnx_path, images)
    assert set(raw) == {"local_points", "global_points", "rotation_raw", "translation"}
    ours = Reconstruction.from_raw(raw)
    for key in ("local_points", "points", "global_points", "camera_poses", "depth"):
        assert relative_error(ours[key], reference[key]) < 1e-4, key


def test_manifest_describes_the_graph(tiny_checkpoint, tmp_path):
    model = load_checkpoint(tiny_checkpoint)
    expected_hash = model_fingerprint(model)
    result = export_geometry_onnx(model, Bucket(1, 28, 28), tmp_path, prefix_token_ids=PROMPT,
                                  special_token_ids=SPECIAL)
    manifest = read_export_manifest(result.manifest_path)
    assert manifest["model_hash"] == expected_hash and result.onnx_path.name.startswith(
        f"g2vlm_geometry_{expected_hash[:12]}_1x28x28_fp32")
    assert manifest["bucket"] == {"views": 1, "height": 28, "width": 28}
    assert manifest["precision"] == "fp32" and manifest["opset"] >= 17
    assert manifest["prompt_token_ids"] == PROMPT and manifest["special_token_ids"] == SPECIAL
    assert manifest["preprocessing"]["normalisation_inside_graph"]["mean"] == [0.485, 0.456, 0.406]
    graph = onnx.load(str(result.onnx_path), load_external_data=False).graph
    assert [i.name for i in graph.input] == ["images"]
    assert [o.name for o in graph.output] == [o["name"] for o in manifest["outputs"]]
    shapes = {o["name"]: o["shape"] for o in manifest["outputs"]}
    assert shapes["local_points"] == [1, 28, 28, 3] and shapes["rotation_raw"] == [1, 3, 3]
    onnx.checker.check_model(str(result.onnx_path))


def test_external_data_and_reduced_precision_exports(tiny_checkpoint, tmp_path):
    model = load_checkpoint(tiny_checkpoint)
    images = torch.rand(1, 3, 28, 28)
    external = export_geometry_onnx(model, Bucket(1, 28, 28), tmp_path / "ext", external_data=True,
                                    prefix_token_ids=PROMPT, special_token_ids=SPECIAL)
    data = external.onnx_path.with_name(external.onnx_path.name + ".data")
    assert data.is_file() and data.stat().st_size > external.onnx_path.stat().st_size
    reference = model.reconstruct(images, prefix_token_ids=PROMPT, special_token_ids=SPECIAL)
    assert relative_error(Reconstruction.from_raw(run_onnx(external.onnx_path, images))["points"],
                          reference["points"]) < 1e-4
    half = export_geometry_onnx(load_checkpoint(tiny_checkpoint), Bucket(1, 28, 28), tmp_path / "fp16",
                                precision="fp16", prefix_token_ids=PROMPT, special_token_ids=SPECIAL)
    weights = onnx.load(str(half.onnx_path)).graph.initializer
    assert any(w.data_type == onnx.TensorProto.FLOAT16 for w in weights)
    assert half.manifest["precision"] == "fp16" and half.manifest["model_hash"] == external.manifest["model_hash"]


@pytest.mark.parametrize("kwargs, message", [
    ({"bucket": Bucket(1, 30, 28)}, "multiples of 14"),
    ({"bucket": Bucket(0, 28, 28)}, "at least one view"),
    ({"opset": 16}, "opset"),
    ({"precision": "int8"}, "precision"),
])
def test_invalid_export_requests_are_refused(tiny_checkpoint, tmp_path, kwargs, message):
    model = load_checkpoint(tiny_checkpoint)
    arguments = {"bucket": Bucket(1, 28, 28), **kwargs}
    with pytest.raises(ValueError, match=message):
        export_geometry_onnx(model, arguments.pop("bucket"), tmp_path, prefix_token_ids=PROMPT,
                             special_token_ids=SPECIAL, **arguments)


@pytest.mark.skipif(not PARITY.is_dir(), reason="../shared/parity is not present")
def test_exported_official_fixture_reproduces_the_official_outputs(tmp_path, capsys):
    """CLI export of the parity checkpoint at its real bucket, run by ONNX Runtime."""
    assert export_cli(["--checkpoint", str(PARITY), "--views", "2", "--output-dir", str(tmp_path),
                       "--token-ids", str(PARITY / "fixture.json")]) == 0
    onnx_path = next(tmp_path.glob("*.onnx"))
    reference = np.load(PARITY / "recon_outputs.npz")
    ours = Reconstruction.from_raw(run_onnx(onnx_path, torch.from_numpy(reference["images"][0])))
    for key in ("local_points", "points", "global_points", "camera_poses"):
        assert relative_error(ours[key], torch.from_numpy(reference[key][0])) < 1e-4, key
    manifest = json.loads(onnx_path.with_suffix(".json").read_text())
    assert manifest["prompt_token_ids"] == json.loads((PARITY / "fixture.json").read_text())["prompt_token_ids"]
    assert export_cli(["--checkpoint", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
