"""Which TensorRT builds and runs engines here: full TensorRT or TensorRT-RTX, its version, and the local GPU.

Both flavours share the Python and ONNX-parser API, so one code path serves them; neither module is imported
until a build, a load or a backend needs it, so the deploy package imports fine where neither is installed
(ROS-free, CPU-only CI).
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Optional

from g2vlm_ros.deploy.engine_keys import EngineError

FLAVOURS = (("tensorrt", "tensorrt"), ("tensorrt_rtx", "tensorrt-rtx"))  # (module, flavour), preferred first
FLAVOUR_ENV = "G2VLM_TENSORRT_FLAVOUR"


def import_tensorrt() -> tuple[ModuleType, str, str]:
    """The TensorRT module, its flavour ("tensorrt" | "tensorrt-rtx") and version; full TensorRT preferred.

    Full TensorRT is preferred because only it builds engines for Hopper; TensorRT-RTX is the fallback
    that exists on CPU-only development machines. Setting G2VLM_TENSORRT_FLAVOUR to one flavour makes
    that the only candidate, e.g. to build RTX engines for another machine where both are installed.
    """
    wanted = os.environ.get(FLAVOUR_ENV, "").strip()
    candidates = [pair for pair in FLAVOURS if not wanted or pair[1] == wanted]
    if not candidates:
        raise EngineError(f"{FLAVOUR_ENV}={wanted!r} is not one of {', '.join(f for _, f in FLAVOURS)}")
    failures = []
    for module_name, flavour in candidates:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # ImportError, or OSError from a wheel whose CUDA libraries are missing
            failures.append(f"{module_name}: {exc}")
            continue
        return module, flavour, str(getattr(module, "__version__", "unknown"))
    what = f"{wanted} (chosen by {FLAVOUR_ENV}) cannot" if wanted else "neither TensorRT nor TensorRT-RTX can"
    raise EngineError(f"{what} be imported (" + "; ".join(failures) + "); install `tensorrt` (GPU machines) "
                      "or `tensorrt-rtx` to build engines")


def current_compute_capability() -> Optional[str]:
    """The local GPU's compute capability as "sm<major><minor>" (e.g. "sm90"), None without a usable GPU."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return f"sm{major}{minor}"
