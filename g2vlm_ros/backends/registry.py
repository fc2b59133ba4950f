"""Backend selection by name, with an explicit `auto` policy.

`auto` picks the first real backend that can run here, in the order
  1. tensorrt    - TensorRT (or TensorRT-RTX) imports, a GPU is present, and the engine folder holds
                   an engine built for this checkpoint, bucket, TensorRT version and GPU;
  2. onnxruntime - the engine folder holds an exported ONNX graph for this checkpoint;
  3. torch       - the checkpoint folder loads (on `device`, falling back to the CPU without CUDA).
It never picks the `placeholder` backend (geometry-free, for I/O tests): a user who asks for a model
gets a model or a clear error listing why each backend was not usable. `test_pattern`, the placeholder's
old name, is still accepted so that existing launch files keep working; the node warns when it is used.

Without a checkpoint_path the model backends run the embedded demo model (DEMO_CHECKPOINT: 11.7 M
parameters trained on procedural rooms, docs/demo_model.md), so the package works out of the box;
the node says so loudly, in its log and diagnostics.

`plugin:<module>:<Class>` loads a GeometryBackend subclass from an importable module of the user's
(constructed with the BackendRequest), for models or runtimes this package does not ship.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Optional

import g2vlm_ros
from g2vlm_ros.backends.backend import BackendUnavailableError, GeometryBackend
from g2vlm_ros.precision import AUTO_PRECISION, PRECISION_CHOICES

MODEL_BACKENDS = ("tensorrt", "onnxruntime", "torch")
PLACEHOLDER_BACKEND = "placeholder"
BACKEND_CHOICES = ("auto",) + MODEL_BACKENDS + (PLACEHOLDER_BACKEND,)
RENAMED_BACKENDS = {"test_pattern": PLACEHOLDER_BACKEND}  # old name -> new name, accepted with a warning
PLUGIN_PREFIX = "plugin:"
DEMO_CHECKPOINT = Path(g2vlm_ros.__file__).resolve().parent / "demo_model"


DEMO_MODEL_WARNING = (
    "\n" + "=" * 78 + "\n"
    "NO checkpoint_path SET: running the EMBEDDED DEMO MODEL, not the released G2VLM-2B.\n"
    "It is an 11.7 M-parameter G2VLM trained only on synthetic rooms (docs/demo_model.md): fine for\n"
    "trying the package, coarse on real scenes. For real use set checkpoint_path to the\n"
    "InternRobotics/G2VLM-2B-MoT folder.\n" + "=" * 78)


def default_engine_dir() -> Path:
    """The source tree's engines/ (editable installs), else a per-user cache folder."""
    source_tree = Path(g2vlm_ros.__file__).resolve().parents[1] / "engines"
    return source_tree if source_tree.is_dir() else Path.home() / ".cache" / "g2vlm_ros" / "engines"


@dataclass(frozen=True)
class BackendRequest:
    """What the node was configured with; fields map 1:1 to node parameters."""

    backend: str = "auto"
    checkpoint_path: str = ""
    engine_dir: str = ""
    device: str = "cuda"
    precision: str = AUTO_PRECISION
    cuda_graphs: bool = True
    allow_engine_rebuild: bool = False

    @property
    def uses_demo_model(self) -> bool:
        """True when a model backend will run the embedded demo model (no checkpoint configured)."""
        return not self.checkpoint_path and (self.backend == "auto" or self.backend in MODEL_BACKENDS)

    def with_demo_model(self) -> BackendRequest:
        """This request, pointed at the embedded demo model when no checkpoint is configured."""
        return replace(self, checkpoint_path=str(DEMO_CHECKPOINT)) if self.uses_demo_model else self

    @property
    def engines(self) -> Path:
        return Path(self.engine_dir) if self.engine_dir else default_engine_dir()

    @cached_property
    def model_hash(self) -> Optional[str]:
        """Fingerprint of the configured checkpoint folder (None without one): engines must match it."""
        from g2vlm_ros.deploy.export import checkpoint_fingerprint

        folder = Path(self.checkpoint_path) if self.checkpoint_path else None
        return checkpoint_fingerprint(folder) if folder is not None and folder.is_dir() else None


def _create_model_backend(name: str, request: BackendRequest) -> GeometryBackend:
    if name == "torch":
        from g2vlm_ros.backends.torch_backend import TorchBackend

        device = request.device
        if device.startswith("cuda") and request.backend == "auto":
            import torch

            device = device if torch.cuda.is_available() else "cpu"
        return TorchBackend(request.checkpoint_path, device, request.precision, cuda_graphs=request.cuda_graphs)
    if name == "onnxruntime":
        from g2vlm_ros.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(str(request.engines), request.model_hash, request.device)
    from g2vlm_ros.backends.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(str(request.engines), request.model_hash, request.device,
                           allow_rebuild=request.allow_engine_rebuild)


def _create_plugin_backend(request: BackendRequest) -> GeometryBackend:
    spec = request.backend[len(PLUGIN_PREFIX):]
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise BackendUnavailableError(f"backend '{request.backend}' must read plugin:<module>:<Class>")
    try:
        backend_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise BackendUnavailableError(f"backend plugin '{spec}' cannot be loaded: {error}") from error
    if not (isinstance(backend_class, type) and issubclass(backend_class, GeometryBackend)):
        raise BackendUnavailableError(f"backend plugin '{spec}' is not a GeometryBackend subclass")
    return backend_class(request)


def renamed_backend_warning(backend: str) -> Optional[str]:
    """The warning for a backend asked for by an old name (None for a current name)."""
    new_name = RENAMED_BACKENDS.get(backend)
    if new_name is None:
        return None
    return (f"backend '{backend}' was renamed to {new_name}: set backend to '{new_name}' (the old name is "
            "deprecated and will be removed)")


def create_backend(request: BackendRequest) -> GeometryBackend:
    """Returns a ready backend or raises BackendUnavailableError naming every reason."""
    if request.backend.startswith(PLUGIN_PREFIX):
        return _create_plugin_backend(request)
    if request.backend in RENAMED_BACKENDS:
        request = replace(request, backend=RENAMED_BACKENDS[request.backend])
    if request.backend not in BACKEND_CHOICES:
        raise BackendUnavailableError(
            f"unknown backend '{request.backend}'; choose one of {', '.join(BACKEND_CHOICES)}"
        )
    if request.precision not in PRECISION_CHOICES:
        raise BackendUnavailableError(f"unknown precision '{request.precision}'; choose one of "
                                      f"{', '.join(PRECISION_CHOICES)}")
    if request.backend == PLACEHOLDER_BACKEND:
        from g2vlm_ros.backends.placeholder import PlaceholderBackend

        return PlaceholderBackend()
    request = request.with_demo_model()
    if request.backend != "auto":
        return _create_model_backend(request.backend, request)
    reasons = []
    for name in MODEL_BACKENDS:
        try:
            return _create_model_backend(name, request)
        except BackendUnavailableError as error:
            reasons.append(str(error))
    raise BackendUnavailableError("backend 'auto' found no usable backend: " + "; ".join(reasons))
