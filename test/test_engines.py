"""TensorRT engines: key naming and comparison, manifests, real TensorRT-RTX builds on the CPU, stale-engine
refusal and rebuilds, and the build_engine CLI.

The key/manifest tests need no TensorRT. The build tests need TensorRT-RTX, which builds for a named
compute capability without a GPU; running an engine needs a GPU of that capability, so full
deserialization is only tried where one is present.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

from g2vlm_ros.cli.build_engine import main as build_engine_cli
from g2vlm_ros.deploy import engine_keys, engine_loading, tensorrt_flavour
from g2vlm_ros.deploy.build_progress import ProgressPrinter
from g2vlm_ros.deploy.engine_build import build_engine
from g2vlm_ros.deploy.engine_keys import (
    EngineError,
    EngineKey,
    EngineKeyMismatch,
    engine_manifest_path,
    expected_key,
    find_engine,
    sha256_bytes,
)
from g2vlm_ros.deploy.engine_loading import load_engine_bytes
from g2vlm_ros.deploy.export_manifest import EXPORT_MANIFEST_FORMAT
from g2vlm_ros.model.checkpoint import TORCH_DTYPES

pytestmark = [  # the exporters' own deprecation/tracer chatter, not about engines
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export"),
    pytest.mark.filterwarnings("ignore:The feature will be removed"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]
TARGET = "sm89"  # a compute capability TensorRT-RTX can build for (it has no Hopper target)
SPECIAL = {"bos_token_id": 1, "eos_token_id": 2, "start_of_image": 3, "end_of_image": 4}
PROMPT = [10, 11, 12]
KEY = EngineKey(model_hash="0123456789abcdef" * 4, views=2, height=392, width=518, precision="fp16",
                flavour="tensorrt-rtx", trt_version="1.7.1.116", compute_capability="sm89")


def export_manifest(**changes) -> dict:
    manifest = {"model_hash": KEY.model_hash, "bucket": {"views": 2, "height": 392, "width": 518},
                "precision": "fp16", "opset": 18, "inputs": [], "outputs": [], "onnx_file": "g.onnx"}
    manifest.update(changes)
    return manifest


# ------------------------------------------------------------------------------------- no TensorRT needed


def test_file_stem_encodes_every_field_and_is_filesystem_safe():
    assert KEY.file_stem() == "g2vlm_0123456789ab_2x392x518_fp16_tensorrt-rtx-1.7.1.116_sm89"
    odd = dataclasses.replace(KEY, trt_version="10.3.0+cuda12/post 1", flavour="tensorrt")
    stem = odd.file_stem()
    assert "/" not in stem and " " not in stem and "+" not in stem
    assert "10.3.0-cuda12-post-1" in stem
    assert stem != KEY.file_stem()


def test_differences_name_each_mismatching_field_with_both_values():
    assert KEY.differences(KEY) == []
    other = dataclasses.replace(KEY, compute_capability="sm86", trt_version="1.6.0", views=1)
    diffs = KEY.differences(other, ("engine", "expected"))
    assert len(diffs) == 3
    assert "views: engine 2, expected 1" in diffs
    assert "trt_version: engine '1.7.1.116', expected '1.6.0'" in diffs
    assert "compute_capability: engine 'sm89', expected 'sm86'" in diffs


def test_key_round_trips_through_a_dict_and_rejects_bad_fields():
    assert EngineKey.from_dict(json.loads(json.dumps(KEY.to_dict()))) == KEY
    with pytest.raises(EngineError, match="views"):
        EngineKey.from_dict({**KEY.to_dict(), "views": "2"})
    with pytest.raises(EngineError, match="compute_capability"):
        EngineKey.from_dict({k: v for k, v in KEY.to_dict().items() if k != "compute_capability"})
    with pytest.raises(EngineError, match="key"):
        EngineKey.from_dict(None)


@pytest.mark.parametrize("spelling", ["sm89", "SM89", "sm_89", "8.9", "89", (8, 9)])
def test_compute_capability_spellings_normalise(spelling):
    assert engine_keys.normalize_compute_capability(spelling) == "sm89"


def test_compute_capability_normalisation_keeps_two_digit_majors_and_rejects_junk():
    assert engine_keys.normalize_compute_capability("12.0") == "sm120"
    assert engine_keys.normalize_compute_capability("sm120") == "sm120"
    with pytest.raises(EngineError, match="compute capability"):
        engine_keys.normalize_compute_capability("hopper")


def test_expected_key_comes_from_the_export_manifest():
    key = expected_key(export_manifest(), "tensorrt-rtx", "1.7.1.116", "8.9")
    assert key == KEY


@pytest.mark.parametrize("change, message", [
    ({"precision": "int8"}, "precision 'int8'"),
    ({"precision": None}, "precision"),
    ({"model_hash": ""}, "model_hash"),
    ({"bucket": {"views": 0, "height": 392, "width": 518}}, "bucket.views"),
    ({"bucket": None}, "bucket"),
])
def test_unusable_export_manifests_are_refused(change, message):
    with pytest.raises(EngineError, match=message):
        expected_key(export_manifest(**change), "tensorrt-rtx", "1", "sm89")


def test_build_refuses_an_unknown_precision_before_touching_tensorrt(tmp_path):
    onnx_path = tmp_path / "g.onnx"
    onnx_path.write_bytes(b"not parsed: refused first")
    with pytest.raises(EngineError, match="precision 'int8'"):
        build_engine(onnx_path, export_manifest(precision="int8"), tmp_path, compute_capability=TARGET)


def test_build_refuses_a_json_file_that_is_not_an_export_manifest(tmp_path):
    """The builder reads manifest files with the backends' reader: no exporter format tag, no build."""
    onnx_path = tmp_path / "g.onnx"
    onnx_path.write_bytes(b"not parsed: refused first")
    onnx_path.with_suffix(".json").write_text(json.dumps(export_manifest()))  # every field but "format"
    with pytest.raises(EngineError, match="is not a g2vlm_ros geometry export manifest"):
        build_engine(onnx_path, None, tmp_path, compute_capability=TARGET)


def test_build_reports_a_missing_onnx_file(tmp_path):
    with pytest.raises(EngineError, match="does not exist"):
        build_engine(tmp_path / "missing.onnx", export_manifest(), tmp_path, compute_capability=TARGET)


def test_import_tensorrt_prefers_full_tensorrt_then_rtx_then_fails_clearly(monkeypatch):
    monkeypatch.delenv(tensorrt_flavour.FLAVOUR_ENV, raising=False)
    full, rtx = types.ModuleType("tensorrt"), types.ModuleType("tensorrt_rtx")
    full.__version__, rtx.__version__ = "10.9.0", "1.7.1"
    monkeypatch.setitem(sys.modules, "tensorrt", full)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", rtx)
    assert tensorrt_flavour.import_tensorrt() == (full, "tensorrt", "10.9.0")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # None in sys.modules makes `import` raise ImportError
    assert tensorrt_flavour.import_tensorrt() == (rtx, "tensorrt-rtx", "1.7.1")
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    with pytest.raises(EngineError, match="neither TensorRT nor TensorRT-RTX can be imported"):
        tensorrt_flavour.import_tensorrt()


def test_the_flavour_can_be_chosen_when_both_are_installed(monkeypatch):
    full, rtx = types.ModuleType("tensorrt"), types.ModuleType("tensorrt_rtx")
    monkeypatch.setitem(sys.modules, "tensorrt", full)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", rtx)
    monkeypatch.setenv(tensorrt_flavour.FLAVOUR_ENV, "tensorrt-rtx")
    assert tensorrt_flavour.import_tensorrt()[:2] == (rtx, "tensorrt-rtx")
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    with pytest.raises(EngineError, match="tensorrt-rtx .chosen by G2VLM_TENSORRT_FLAVOUR. cannot be imported"):
        tensorrt_flavour.import_tensorrt()
    monkeypatch.setenv(tensorrt_flavour.FLAVOUR_ENV, "onnxruntime")
    with pytest.raises(EngineError, match="not one of tensorrt, tensorrt-rtx"):
        tensorrt_flavour.import_tensorrt()


def write_fake_engine(folder: Path, key: EngineKey, payload: bytes = b"engine bytes") -> Path:
    """An engine file and manifest as build_engine writes them, without TensorRT (load does not parse)."""
    path = folder / f"{key.file_stem()}.engine"
    path.write_bytes(payload)
    record = {"format": engine_keys.MANIFEST_FORMAT, "key": key.to_dict(), "engine_sha256": sha256_bytes(payload)}
    engine_manifest_path(path).write_text(json.dumps(record))
    return path


def test_load_returns_bytes_only_when_key_and_checksum_match(tmp_path):
    path = write_fake_engine(tmp_path, KEY)
    assert find_engine(tmp_path, KEY) == path
    assert find_engine(tmp_path, dataclasses.replace(KEY, views=1)) is None
    assert load_engine_bytes(path, KEY) == b"engine bytes"
    with pytest.raises(EngineKeyMismatch) as caught:
        load_engine_bytes(path, dataclasses.replace(KEY, precision="bf16", compute_capability="sm120"))
    message = str(caught.value)
    assert "precision: engine 'fp16', expected 'bf16'" in message
    assert "compute_capability: engine 'sm89', expected 'sm120'" in message
    assert "build_engine" in message and "--compute-capability sm120" in message
    assert len(caught.value.problems) == 2


def test_load_refuses_missing_or_unreadable_manifests_and_missing_engines(tmp_path):
    path = write_fake_engine(tmp_path, KEY)
    manifest = engine_manifest_path(path)
    manifest.write_text("{ not json")
    with pytest.raises(EngineKeyMismatch, match="unreadable"):
        load_engine_bytes(path, KEY)
    manifest.unlink()
    with pytest.raises(EngineKeyMismatch, match="does not exist"):
        load_engine_bytes(path, KEY, allow_rebuild=True)  # no rebuild_from: nothing to rebuild from
    with pytest.raises(EngineKeyMismatch, match="engine file unreadable"):
        load_engine_bytes(tmp_path / "other.engine", KEY)


def test_progress_printer_always_shows_top_level_phases_and_throttles_the_rest():
    lines, now = [], [0.0]
    printer = ProgressPrinter(lines.append, min_interval_s=1.0, clock=lambda: now[0], prefix="")
    printer.phase_start("Building engine", None, 3)
    printer.phase_start("Timing tactics", "Building engine", 100)  # too soon after the last line: quiet
    for step in range(50):
        assert printer.step_complete("Timing tactics", step)
    now[0] = 1.5
    printer.step_complete("Timing tactics", 50)  # due again: one step line
    printer.phase_start("Cloning", "Timing tactics", 2)
    printer.phase_finish("Cloning")  # short and not shown: stays quiet
    printer.phase_finish("Timing tactics")  # start not shown, but it took long enough to mention
    now[0] = 2.0
    printer.phase_finish("Building engine")
    assert lines == ["Building engine (3 steps)", "  Timing tactics: step 51/100", "  Timing tactics: done in 1.5 s",
                     "Building engine: done in 2.0 s"]


def test_progress_heartbeat_names_a_long_silent_phase_then_repeats_sparingly():
    lines, now = [], [0.0]
    printer = ProgressPrinter(lines.append, min_interval_s=1.0, clock=lambda: now[0], prefix="", heartbeat_s=30.0)
    printer.phase_start("Building engine", None, 1)
    printer.phase_start("Determining refit engines", "Building engine", 1)
    printer.tick()  # the terminal spoke just now: nothing yet
    now[0] = 1.0
    printer.tick()
    now[0] = 20.0
    printer.tick()  # shown already, heartbeat not due
    now[0] = 31.0
    printer.tick()
    assert lines == ["Building engine (1 step)", "  Determining refit engines (1 step)",
                     "  Determining refit engines: still running after 31 s"]


# ------------------------------------------------------------------------------------- TensorRT-RTX builds


class Toy(torch.nn.Module):
    """Matmuls, softmax and layer norm: the op mix of the geometry path, small enough to build in 0.1 s."""

    def __init__(self):
        super().__init__()
        self.up, self.norm, self.down = torch.nn.Linear(32, 64), torch.nn.LayerNorm(64), torch.nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(torch.relu(self.up(x)))
        attention = torch.softmax(hidden @ hidden.transpose(-1, -2), dim=-1)
        return self.down(attention @ hidden).float()


def export_toy(folder: Path, precision: str = "fp32", external_data: bool = False) -> Path:
    """A toy ONNX graph with a manifest in the exporter's format (input [1, 8, 32] standing for 1x8x32)."""
    dtype = TORCH_DTYPES[precision]
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / f"toy_{precision}.onnx"
    example = torch.randn(1, 8, 32, dtype=dtype)
    torch.onnx.export(Toy().to(dtype).eval(), (example,), str(onnx_path), input_names=["x"], output_names=["y"],
                      opset_version=18, dynamo=False)
    if external_data:
        import onnx

        model = onnx.load(str(onnx_path))
        onnx.save_model(model, str(onnx_path), save_as_external_data=True, location=onnx_path.name + ".data",
                        size_threshold=0)
    manifest = {"format": EXPORT_MANIFEST_FORMAT, "model_hash": "feedc0de" * 8,
                "bucket": {"views": 1, "height": 8, "width": 32},
                "precision": precision, "opset": 18, "onnx_file": onnx_path.name,
                "inputs": [{"name": "x", "shape": [1, 8, 32], "dtype": str(dtype).removeprefix("torch.")}],
                "outputs": [{"name": "y", "shape": [1, 8, 16], "dtype": "float32"}]}
    onnx_path.with_suffix(".json").write_text(json.dumps(manifest))
    return onnx_path


@pytest.fixture(scope="module")
def trt_rtx():
    """TensorRT-RTX, chosen even where full TensorRT is installed too: these tests build for sm89 off-GPU."""
    module = pytest.importorskip("tensorrt_rtx")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(tensorrt_flavour.FLAVOUR_ENV, "tensorrt-rtx")
        yield module


@pytest.fixture(scope="module")
def geometry_build(trt_rtx, tmp_path_factory):
    """The tiny G2VLM geometry graph (random weights, 1 view of 28x42) exported and built once for sm89."""
    from g2vlm_ros.deploy.export import Bucket, export_geometry_onnx
    from g2vlm_ros.model import G2VLM, tiny_config

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("geometry")
    export = export_geometry_onnx(G2VLM(tiny_config()).eval(), Bucket(1, 28, 42), folder, precision="fp32",
                                  prefix_token_ids=PROMPT, special_token_ids=SPECIAL)
    lines: list[str] = []
    build = build_engine(export.onnx_path, None, folder / "engines", compute_capability=TARGET, log=lines.append)
    return export, build, lines


@pytest.fixture(scope="module")
def toy_build(trt_rtx, tmp_path_factory):
    """The toy graph built once for sm89: for the tests that rebuild an engine, where what is tested is when and how
    a rebuild happens, not the graph (a rebuild of the geometry graph takes as long as its first build, seconds on
    a CPU; the toy's takes 0.1 s). geometry_build's own build covers the geometry graph."""
    folder = tmp_path_factory.mktemp("toy")
    onnx_path = export_toy(folder)
    return onnx_path, build_engine(onnx_path, None, folder / "engines", compute_capability=TARGET,
                                   log=lambda line: None)


def test_real_build_writes_engine_and_manifest_with_the_expected_key(geometry_build, trt_rtx):
    export, build, lines = geometry_build
    key = build.key
    assert key == expected_key(export.manifest, "tensorrt-rtx", trt_rtx.__version__, TARGET)
    assert (key.views, key.height, key.width, key.precision) == (1, 28, 42, "fp32")
    assert build.engine_path == build.manifest_path.with_suffix(".engine")
    assert build.engine_path.name == f"{key.file_stem()}.engine"
    assert find_engine(build.engine_path.parent, key) == build.engine_path
    data = build.engine_path.read_bytes()
    record = json.loads(build.manifest_path.read_text())
    assert EngineKey.from_dict(record["key"]) == key
    assert record["engine_sha256"] == sha256_bytes(data) and record["engine_bytes"] == len(data)
    assert record["export_manifest"] == export.manifest
    assert record["onnx_path"] == str(export.onnx_path.resolve())
    assert record["build_seconds"] > 0 and build.build_seconds > 0
    assert load_engine_bytes(build.engine_path, key) == data
    assert any(line.startswith("[engine build] ") for line in lines), lines  # progress monitor reported


def test_engine_header_is_accepted_on_cpu_and_garbage_is_not(geometry_build, trt_rtx):
    """Without a GPU TensorRT-RTX checks only the header (magic tag, size) before it needs the GPU."""
    _, build, _ = geometry_build
    check = engine_loading.check_engine_header(build.engine_path.read_bytes())
    assert check is not None and check.structurally_ok, check
    garbage = engine_loading.check_engine_header(b"\0" * 4096)
    assert not garbage.structurally_ok and "MALFORMED_ENGINE" in garbage.diagnostics


def test_engine_deserializes_on_a_matching_gpu(trt_rtx, tmp_path):
    """Full deserialization needs a GPU that TensorRT-RTX can target; on CPU-only machines this is skipped."""
    local = tensorrt_flavour.current_compute_capability()
    if local is None or not hasattr(trt_rtx.ComputeCapability, local.upper()):
        pytest.skip(f"deserializing needs a GPU TensorRT-RTX can target (here: {local or 'no GPU'})")
    build = build_engine(export_toy(tmp_path), None, tmp_path, log=lambda line: None)
    runtime = trt_rtx.Runtime(trt_rtx.Logger(trt_rtx.Logger.WARNING))
    assert runtime.deserialize_cuda_engine(build.engine_path.read_bytes()) is not None


def edit_manifest(path: Path, **key_changes) -> None:
    record = json.loads(engine_manifest_path(path).read_text())
    record["key"].update(key_changes)
    engine_manifest_path(path).write_text(json.dumps(record))


def corrupt_engine(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("spoil, field", [
    (lambda path: edit_manifest(path, compute_capability="sm86"), "compute_capability"),
    (lambda path: edit_manifest(path, model_hash="f" * 64), "model_hash"),
    (lambda path: edit_manifest(path, trt_version="1.0.0.1"), "trt_version"),
    (corrupt_engine, "engine_sha256"),
], ids=["compute-capability", "model-hash", "trt-version", "corrupted-engine"])
def test_stale_engines_are_refused_then_rebuilt(toy_build, tmp_path, spoil, field):
    onnx_path, build = toy_build
    engine_path = tmp_path / build.engine_path.name
    shutil.copy(build.engine_path, engine_path)
    shutil.copy(build.manifest_path, engine_manifest_path(engine_path))
    spoil(engine_path)

    with pytest.raises(EngineKeyMismatch, match=field) as caught:
        load_engine_bytes(engine_path, build.key, rebuild_from=onnx_path)  # rebuilding not allowed
    assert f"build_engine {onnx_path}" in str(caught.value)

    lines: list[str] = []
    data = load_engine_bytes(engine_path, build.key, rebuild_from=onnx_path, allow_rebuild=True,
                             log=lines.append)
    assert any(line.startswith("Rebuilding engine") and field in line for line in lines), lines
    record = json.loads(engine_manifest_path(engine_path).read_text())
    assert EngineKey.from_dict(record["key"]) == build.key
    assert record["engine_sha256"] == sha256_bytes(data) == sha256_bytes(engine_path.read_bytes())
    assert load_engine_bytes(engine_path, build.key) == data


def test_rebuild_is_refused_when_the_onnx_is_for_another_model(geometry_build, tmp_path):
    export, build, _ = geometry_build
    other = dataclasses.replace(build.key, model_hash="e" * 64)
    lines: list[str] = []
    with pytest.raises(EngineKeyMismatch, match="cannot rebuild.*model_hash"):
        load_engine_bytes(build.engine_path, other, rebuild_from=export.onnx_path, allow_rebuild=True,
                          engine_dir=tmp_path, log=lines.append)
    assert not list(tmp_path.glob("*.engine"))  # refused before building


def test_fp16_graph_with_external_weights_builds(trt_rtx, tmp_path):
    onnx_path = export_toy(tmp_path / "onnx", precision="fp16", external_data=True)
    assert onnx_path.with_name(onnx_path.name + ".data").is_file()
    build = build_engine(onnx_path, None, tmp_path / "engines", compute_capability="8.6", log=lambda line: None)
    assert build.key.precision == "fp16" and build.key.compute_capability == "sm86"
    assert build.engine_path.stat().st_size > 0


def test_a_graph_labelled_with_another_precision_is_refused(trt_rtx, tmp_path):
    onnx_path = export_toy(tmp_path)
    manifest = json.loads(onnx_path.with_suffix(".json").read_text())
    with pytest.raises(EngineError, match="manifest says fp16 but the ONNX graph has no HALF tensors"):
        build_engine(onnx_path, {**manifest, "precision": "fp16"}, tmp_path, compute_capability=TARGET)


def test_unparsable_onnx_and_unsupported_targets_are_reported(trt_rtx, tmp_path):
    onnx_path = export_toy(tmp_path)
    with pytest.raises(EngineError, match="cannot build for sm90.*sm89"):
        build_engine(onnx_path, None, tmp_path, compute_capability="sm90")
    onnx_path.write_bytes(b"garbage")
    with pytest.raises(EngineError, match="ONNX parser rejected.*MODEL_DESERIALIZE_FAILED"):
        build_engine(onnx_path, None, tmp_path, compute_capability=TARGET, log=lambda line: None)
    if tensorrt_flavour.current_compute_capability() is None:
        with pytest.raises(EngineError, match="no GPU here"):
            build_engine(onnx_path, None, tmp_path)


def test_parser_errors_name_the_node(trt_rtx, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    tensor = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4]) for name in ("x", "y")]
    graph = helper.make_graph([helper.make_node("FooBar", ["x"], ["y"], name="mystery")], "g", tensor[:1], tensor[1:])
    onnx_path = tmp_path / "unknown_op.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(onnx_path))
    manifest = {"model_hash": "ab", "bucket": {"views": 1, "height": 1, "width": 4}, "precision": "fp32"}
    with pytest.raises(EngineError, match="1 error.*node 0 'mystery' \\(FooBar\\)"):
        build_engine(onnx_path, manifest, tmp_path, compute_capability=TARGET, log=lambda line: None)


def test_manifest_that_does_not_describe_the_graph_is_refused(trt_rtx, tmp_path):
    onnx_path = export_toy(tmp_path)
    manifest = json.loads(onnx_path.with_suffix(".json").read_text())
    wrong_shape = {**manifest, "inputs": [{"name": "x", "shape": [2, 8, 32], "dtype": "float32"}]}
    with pytest.raises(EngineError, match="shape"):
        build_engine(onnx_path, wrong_shape, tmp_path, compute_capability=TARGET, log=lambda line: None)
    wrong_name = {**manifest, "inputs": [{"name": "images", "shape": [1, 8, 32], "dtype": "float32"}]}
    with pytest.raises(EngineError, match="'images' is not an input"):
        build_engine(onnx_path, wrong_name, tmp_path, compute_capability=TARGET, log=lambda line: None)


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_builds_and_prints_path_key_and_time(trt_rtx, tmp_path, capsys):
    onnx_path = export_toy(tmp_path / "onnx")
    engine_dir = tmp_path / "engines"
    assert build_engine_cli([str(onnx_path), "--engine-dir", str(engine_dir), "--compute-capability", "sm89",
                             "--workspace-gib", "1"]) == 0
    out = capsys.readouterr()
    engine_path = Path(out.out.splitlines()[0])
    assert engine_path.parent == engine_dir and engine_path.is_file()
    assert "sm89" in out.out and "built in" in out.out and "feedc0de" in out.out
    assert "[engine build]" in out.err  # progress on the terminal, apart from the result


def test_cli_fails_with_one_clear_line_for_a_missing_file(tmp_path, capsys):
    assert build_engine_cli([str(tmp_path / "nothing.onnx"), "--compute-capability", "sm89"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("build_engine: ") and "nothing.onnx does not exist" in err
    assert len(err.splitlines()) == 1
