"""Backend selection by name, with an explicit `auto` policy.

`auto` picks the first real backend that can run here, in the order tensorrt (an engine for the
model exists and TensorRT imports), onnxruntime (an exported ONNX graph exists), torch (a
checkpoint folder exists). It never picks the `test_pattern` placeholder: a user who asks for a
model gets a model or a clear error saying why none could be loaded.
"""
from __future__ import annotations

from dataclasses import dataclass

from g2vlm_ros.runtime.backend import BackendUnavailableError, GeometryBackend

MODEL_BACKENDS = ("tensorrt", "onnxruntime", "torch")
BACKEND_CHOICES = ("auto",) + MODEL_BACKENDS + ("test_pattern",)


@dataclass(frozen=True)
class BackendRequest:
    """What the node was configured with; fields map 1:1 to node parameters."""

    backend: str = "auto"
    checkpoint_path: str = ""
    engine_dir: str = ""
    device: str = "cuda"
    precision: str = "auto"


def _create_model_backend(name: str, request: BackendRequest) -> GeometryBackend:
    # The G2VLM network and its compiled engines are not part of this build yet; say so plainly
    # instead of pretending, so that a deployment without them fails loudly at start-up.
    raise BackendUnavailableError(
        f"backend '{name}': the G2VLM model runtime is not available in this version of g2vlm_ros "
        f"(checkpoint_path='{request.checkpoint_path}', engine_dir='{request.engine_dir}')"
    )


def create_backend(request: BackendRequest) -> GeometryBackend:
    """Returns a ready backend or raises BackendUnavailableError naming every reason."""
    if request.backend not in BACKEND_CHOICES:
        raise BackendUnavailableError(
            f"unknown backend '{request.backend}'; choose one of {', '.join(BACKEND_CHOICES)}"
        )
    if request.backend == "test_pattern":
        from g2vlm_ros.runtime.test_pattern import TestPatternBackend

        return TestPatternBackend()
    if request.backend != "auto":
        return _create_model_backend(request.backend, request)
    reasons = []
    for name in MODEL_BACKENDS:
        try:
            return _create_model_backend(name, request)
        except BackendUnavailableError as error:
            reasons.append(str(error))
    raise BackendUnavailableError("backend 'auto' found no usable backend: " + "; ".join(reasons))
