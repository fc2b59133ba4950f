"""The TensorRT backend: serialized engines of the exported geometry graph, one per bucket.

Engines are found through the export manifests in the engine folder (the ONNX graphs they were
built from): for each exported bucket the expected key (checkpoint, bucket, precision, TensorRT
flavour and version, this GPU's compute capability) names one engine file, whose manifest and
checksum `engine_loading.load_engine_bytes` verifies before any byte is used. An engine built for another
GPU, TensorRT or checkpoint is refused with every difference listed, or rebuilt from its ONNX
graph when `allow_rebuild` is set. Inference: inputs and outputs are preallocated CUDA tensors
bound by name, and `execute_async_v3` runs on torch's current stream; pre- and post-processing
stay on the GPU.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from g2vlm_ros.backends.backend import BackendUnavailableError
from g2vlm_ros.backends.network_backend import NetworkBackend
from g2vlm_ros.backends.onnxruntime_backend import find_exports
from g2vlm_ros.deploy.engine_keys import (
    ENGINE_SUFFIX,
    EngineError,
    EngineKey,
    engine_manifest_path,
    expected_key,
    find_engine,
    read_json,
)
from g2vlm_ros.deploy.engine_loading import load_engine_bytes
from g2vlm_ros.deploy.export import Bucket
from g2vlm_ros.deploy.tensorrt_flavour import current_compute_capability, import_tensorrt

LOG = logging.getLogger("g2vlm_ros.backends")


def torch_dtype(trt: Any, trt_type: Any) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    if trt_type not in table:
        raise EngineError(f"engine tensor type {trt_type} is not supported")
    return table[trt_type]


def other_engines(engine_dir: Path, key: EngineKey) -> list[str]:
    """For a missing engine: what the folder holds for the same checkpoint and bucket, and how it differs."""
    found = []
    for path in sorted(engine_dir.glob(f"*{ENGINE_SUFFIX}")):
        try:
            stored = EngineKey.from_dict(read_json(engine_manifest_path(path)).get("key"))
        except EngineError:
            continue
        differences = stored.differences(key, ("built for", "needed"))
        same_model_and_bucket = (stored.model_hash, stored.views, stored.height, stored.width) == \
            (key.model_hash, key.views, key.height, key.width)
        if same_model_and_bucket and differences:
            found.append(f"{path.name} ({'; '.join(differences)})")
    return found


@dataclass
class LoadedEngine:
    engine: Any
    context: Any
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]


class TensorRTBackend(NetworkBackend):
    name = "tensorrt"

    def __init__(self, engine_dir: str, model_hash: Optional[str] = None, device: str = "cuda",
                 allow_rebuild: bool = False):
        try:
            self.trt, self.flavour, self.version = import_tensorrt()
        except EngineError as error:
            raise BackendUnavailableError(f"backend 'tensorrt': {error}") from error
        if not torch.cuda.is_available() or not device.startswith("cuda"):
            raise BackendUnavailableError("backend 'tensorrt': needs a CUDA GPU")
        self.device = self.input_device = torch.device(device)
        self.engine_dir = Path(engine_dir)
        self.allow_rebuild = allow_rebuild
        self.compute_capability = current_compute_capability()
        exports = find_exports(self.engine_dir, model_hash)
        self.keys = {bucket: expected_key(manifest, self.flavour, self.version, self.compute_capability)
                     for bucket, manifest in exports.items()}
        self.onnx = {bucket: Path(manifest["_dir"]) / manifest["onnx_file"] for bucket, manifest in exports.items()}
        usable = [b for b, key in self.keys.items() if find_engine(self.engine_dir, key) or allow_rebuild]
        if not usable:
            details = [f"{key.bucket()}: no engine {key.file_stem()}{ENGINE_SUFFIX}"
                       + "".join(f"; found {other}" for other in other_engines(self.engine_dir, key))
                       for key in self.keys.values()]
            raise BackendUnavailableError(
                f"backend 'tensorrt' ({self.flavour} {self.version}, {self.compute_capability}): no usable engine in "
                f"'{engine_dir}'" + (": " + " | ".join(details) if details else " (no exported graphs either)")
                + ". Build one with build_engine, or set allow_engine_rebuild")
        self.precision = self.keys[usable[0]].precision
        self.runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
        self._engines: dict[Bucket, LoadedEngine] = {}

    def describe(self) -> str:
        return f"tensorrt ({self.flavour} {self.version}, {self.compute_capability}, {self.precision})"

    def details(self) -> dict[str, str]:
        return {"device": str(self.device), "engine_dir": str(self.engine_dir),
                "engine_keys": ", ".join(key.file_stem() for key in self.keys.values())}

    def _load(self, bucket: Bucket) -> LoadedEngine:
        key = self.keys.get(bucket)
        if key is None:
            raise BackendUnavailableError(f"no exported graph or engine for bucket {bucket.stem}; available: "
                                          f"{', '.join(b.stem for b in self.keys)}")
        path = find_engine(self.engine_dir, key) or self.engine_dir / f"{key.file_stem()}{ENGINE_SUFFIX}"
        data = load_engine_bytes(path, key, rebuild_from=self.onnx[bucket], allow_rebuild=self.allow_rebuild,
                                 log=LOG.info)
        engine = self.runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise EngineError(f"TensorRT could not deserialize {path.name}")
        context = engine.create_execution_context()
        inputs, outputs = {}, {}
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            tensor = torch.empty(tuple(engine.get_tensor_shape(name)), device=self.device,
                                 dtype=torch_dtype(self.trt, engine.get_tensor_dtype(name)))
            is_input = engine.get_tensor_mode(name) == self.trt.TensorIOMode.INPUT
            (inputs if is_input else outputs)[name] = tensor
            context.set_tensor_address(name, tensor.data_ptr())
        return LoadedEngine(engine, context, inputs, outputs)

    def raw_outputs(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        bucket = Bucket(batch.shape[0], batch.shape[2], batch.shape[3])
        if bucket not in self._engines:
            self._engines[bucket] = self._load(bucket)
        loaded = self._engines[bucket]
        loaded.inputs["images"].copy_(batch)
        stream = torch.cuda.current_stream(self.device)
        if not loaded.context.execute_async_v3(stream.cuda_stream):
            raise EngineError("TensorRT execute_async_v3 failed")
        return dict(loaded.outputs)

    def close(self) -> None:
        self._engines.clear()
        torch.cuda.empty_cache()
