"""The manifest the ONNX exporter writes beside each graph (`<name>.onnx` + `<name>.json`), and its one reader.

The backends find exported graphs by these manifests and the engine builder takes the model hash, bucket
and precision from them. Both read them here, so a JSON file that is not an export manifest (an engine
manifest, another tool's file) is refused the same way everywhere: by its `format` tag. Needs no torch.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Union

EXPORT_MANIFEST_FORMAT = "g2vlm_ros.geometry_onnx/1"


def export_manifest_path(onnx_path: Union[str, os.PathLike[str]]) -> Path:
    """Where the exporter writes the manifest of `<name>.onnx`: `<name>.json` beside it."""
    return Path(onnx_path).with_suffix(".json")


def read_export_manifest(path: Union[str, os.PathLike[str]]) -> dict:
    """Loads an export manifest; raises ValueError for files that are unreadable or not one."""
    try:
        manifest = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read export manifest {path}: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a g2vlm_ros geometry export manifest")
    return manifest
