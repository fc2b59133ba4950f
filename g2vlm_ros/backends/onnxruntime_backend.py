"""The ONNX Runtime backend: exported geometry graphs (one per bucket) run by ONNX Runtime.

Execution providers in order of preference: TensorRT, CUDA, CPU (those this onnxruntime build
has; `device: cpu` forces the CPU). Graphs come from `export_onnx` and are found by their
manifests in the engine folder; with a checkpoint configured, only graphs whose model hash is
that checkpoint's fingerprint are used. Inputs and outputs pass through host memory; the pose's
SVD and post-processing run with torch on the CPU.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch

from g2vlm_ros.backends.backend import BackendUnavailableError
from g2vlm_ros.backends.network_backend import BucketCache, NetworkBackend
from g2vlm_ros.deploy.export import Bucket
from g2vlm_ros.deploy.export_manifest import read_export_manifest

LOG = logging.getLogger("g2vlm_ros.backends")
PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def find_exports(engine_dir: Path, model_hash: Optional[str]) -> dict[Bucket, dict]:
    """Bucket -> manifest of the ONNX exports in `engine_dir` (for `model_hash` when given)."""
    found = {}
    for path in sorted(Path(engine_dir).glob("g2vlm_geometry_*.json")):
        try:
            manifest = read_export_manifest(path)
        except ValueError:
            continue
        if model_hash and manifest["model_hash"] != model_hash:
            continue
        if not (path.parent / manifest["onnx_file"]).is_file():
            continue
        manifest["_dir"] = str(path.parent)
        found[Bucket(**manifest["bucket"])] = manifest
    return found


class OnnxRuntimeBackend(NetworkBackend):
    name = "onnxruntime"

    def __init__(self, engine_dir: str, model_hash: Optional[str] = None, device: str = "cuda"):
        try:
            import onnxruntime
        except ImportError as error:
            raise BackendUnavailableError("backend 'onnxruntime': the onnxruntime package is not installed") from error
        self.ort = onnxruntime
        self.exports = find_exports(Path(engine_dir), model_hash)
        if not self.exports:
            which = f" for model {model_hash[:12]}" if model_hash else ""
            others = sorted({manifest["model_hash"][:12] for manifest in find_exports(Path(engine_dir), None).values()})
            stale = (f"; its graphs were exported from another checkpoint (model {', '.join(others)}): export "
                     "them again for this one" if others else "")
            raise BackendUnavailableError(f"backend 'onnxruntime': no exported geometry graph{which} in "
                                          f"'{engine_dir}' (run export_onnx){stale}")
        available = onnxruntime.get_available_providers()
        wanted = PROVIDER_PREFERENCE if device != "cpu" else ("CPUExecutionProvider",)
        self.providers = [p for p in wanted if p in available]
        self.precision = next(iter(self.exports.values()))["precision"]
        self._sessions = BucketCache()

    def describe(self) -> str:
        return f"onnxruntime [{', '.join(self.providers)}] ({self.precision})"

    def details(self) -> dict[str, str]:
        return {"providers": ", ".join(self.providers),
                "graphs": ", ".join(str(manifest.get("onnx_file", "")) for manifest in self.exports.values())}

    def _session(self, bucket: Bucket):
        session = self._sessions.get(bucket)
        if session is None:
            manifest = self.exports.get(bucket)
            if manifest is None:
                raise BackendUnavailableError(
                    f"no exported graph for bucket {bucket.stem}; available: "
                    f"{', '.join(b.stem for b in self.exports)} (run export_onnx --views/--height/--width)")
            path = Path(manifest["_dir"]) / manifest["onnx_file"]
            LOG.info("loading %s with %s", path.name, self.providers)
            session = self.ort.InferenceSession(str(path), providers=self.providers)
            self._sessions.put(bucket, session)
        return session

    def raw_outputs(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        session = self._session(Bucket(batch.shape[0], batch.shape[2], batch.shape[3]))
        names = [output.name for output in session.get_outputs()]
        values = session.run(names, {"images": batch.cpu().numpy()})
        return {name: torch.from_numpy(value) for name, value in zip(names, values, strict=True)}

    def release_caches(self) -> None:
        self._sessions.clear()

    def close(self) -> None:
        self._sessions.clear()
