"""What identifies a TensorRT engine of the exported G2VLM geometry path: its key, its manifest, its file name.

An engine is only valid for the checkpoint, bucket (views x height x width), precision, TensorRT flavour
and version, and GPU compute capability it was built for. Loading one built for anything else either
fails deep inside TensorRT or, worse, silently runs a different model. So every engine gets a manifest
beside it (`<stem>.engine` + `<stem>.json`) holding an `EngineKey` and the engine's sha256, which
`engine_loading.load_engine_bytes` compares before it hands out a single byte. The rest of the engine
code is split by job: `tensorrt_flavour` (which TensorRT), `engine_build`, `build_progress`, `engine_loading`.
This module needs neither TensorRT nor torch.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional, Union

from g2vlm_ros.deploy.export_manifest import export_manifest_path, read_export_manifest
from g2vlm_ros.precision import PRECISIONS

ENGINE_SUFFIX = ".engine"
MANIFEST_FORMAT = "g2vlm-engine/1"

PathLike = Union[str, "os.PathLike[str]"]
ManifestSource = Union[Mapping[str, Any], PathLike, None]

_CC_PATTERN = re.compile(r"^(?:sm)?_?(\d+)(?:\.(\d+))?$", re.IGNORECASE)
_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")


class EngineError(RuntimeError):
    """Building or loading an engine failed for a reason the user can act on (message says how)."""


class EngineKeyMismatch(EngineError):
    """An engine on disk was not built for what is asked of it; `problems` lists every difference."""

    def __init__(self, message: str, problems: Optional[list[str]] = None):
        super().__init__(message)
        self.problems = list(problems or [])


def normalize_compute_capability(value: Union[str, tuple[int, int]]) -> str:
    """One spelling for a compute capability, so keys compare equal: "8.9", "89", "SM_89", (8, 9) -> "sm89"."""
    if isinstance(value, tuple):
        major, minor = value
        return f"sm{int(major)}{int(minor)}"
    match = _CC_PATTERN.match(str(value).strip())
    if match is None:
        raise EngineError(f"not a compute capability: {value!r} (expected e.g. sm89, 8.9 or 89)")
    major_or_both, minor = match.groups()
    return f"sm{int(major_or_both)}{minor or ''}"


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine's validity depends on; two engines with equal keys are interchangeable."""

    model_hash: str
    views: int
    height: int
    width: int
    precision: str
    flavour: str
    trt_version: str
    compute_capability: str

    def file_stem(self) -> str:
        """A readable, filesystem-safe file name (no suffix) that encodes every field of the key.

        The hash is shortened to 12 hex digits for readability; the full key lives in the manifest,
        which is what `load_engine_bytes` actually compares.
        """
        return "_".join([
            "g2vlm",
            safe_name(self.model_hash[:12]),
            f"{int(self.views)}x{int(self.height)}x{int(self.width)}",
            safe_name(self.precision),
            f"{safe_name(self.flavour)}-{safe_name(self.trt_version)}",
            safe_name(self.compute_capability),
        ])

    def differences(self, other: EngineKey, labels: tuple[str, str] = ("this", "other")) -> list[str]:
        """One line per mismatching field, with both values, e.g. "compute_capability: this 'sm86', other 'sm89'"."""
        mine, theirs = labels
        return [f"{field.name}: {mine} {getattr(self, field.name)!r}, {theirs} {getattr(other, field.name)!r}"
                for field in fields(self) if getattr(self, field.name) != getattr(other, field.name)]

    def bucket(self) -> str:
        """The bucket as "views x height x width", for messages."""
        return f"{self.views}x{self.height}x{self.width}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> EngineKey:
        """The key stored in an engine manifest; EngineError when a field is missing or of the wrong type."""
        if not isinstance(data, Mapping):
            raise EngineError("manifest has no 'key' object")
        values = {}
        for field in fields(cls):
            value = data.get(field.name)
            wanted = int if field.type in ("int", int) else str
            if not isinstance(value, wanted) or isinstance(value, bool):
                raise EngineError(f"manifest key field {field.name!r} is {value!r}, not a {wanted.__name__}")
            values[field.name] = value
        return cls(**values)


def safe_name(text: str) -> str:
    """`text` with anything but letters, digits, dots and dashes replaced, so it is safe in a file name."""
    return _UNSAFE.sub("-", str(text)).strip("-") or "unknown"


def validate_export_manifest(manifest: Any) -> None:
    """Refuse an export manifest that cannot identify an engine: missing hash/bucket or an unknown precision."""
    if not isinstance(manifest, Mapping):
        raise EngineError("export manifest is not a JSON object")
    model_hash = manifest.get("model_hash")
    if not isinstance(model_hash, str) or not model_hash:
        raise EngineError("export manifest has no 'model_hash'")
    bucket = manifest.get("bucket")
    if not isinstance(bucket, Mapping):
        raise EngineError("export manifest has no 'bucket' object")
    for name in ("views", "height", "width"):
        value = bucket.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise EngineError(f"export manifest bucket.{name} is {value!r}, not a positive integer")
    precision = manifest.get("precision")
    if precision not in PRECISIONS:
        raise EngineError(f"export manifest precision {precision!r} is not one of {', '.join(PRECISIONS)}; "
                          "refusing to build an engine whose precision is unknown")


def expected_key(manifest: Mapping[str, Any], flavour: str, version: str, compute_capability: str) -> EngineKey:
    """The key an engine built from the ONNX graph described by `manifest` would get with this TensorRT/GPU."""
    validate_export_manifest(manifest)
    bucket = manifest["bucket"]
    return EngineKey(model_hash=manifest["model_hash"], views=bucket["views"], height=bucket["height"],
                     width=bucket["width"], precision=manifest["precision"], flavour=flavour,
                     trt_version=version, compute_capability=normalize_compute_capability(compute_capability))


def engine_manifest_path(engine_path: PathLike) -> Path:
    """Where `build_engine` writes the manifest of `<stem>.engine`: `<stem>.json` beside it."""
    return Path(engine_path).with_suffix(".json")


def find_engine(engine_dir: PathLike, key: EngineKey) -> Optional[Path]:
    """The engine file for `key` in `engine_dir` if one exists (its manifest is checked at load time)."""
    path = Path(engine_dir) / f"{key.file_stem()}{ENGINE_SUFFIX}"
    return path if path.is_file() else None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; EngineError (with the path) when missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EngineError(f"{path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise EngineError(f"{path} is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise EngineError(f"{path} is not a JSON object")
    return data


def load_export_manifest(manifest: ManifestSource, onnx_path: PathLike) -> dict[str, Any]:
    """The export manifest given as a mapping or a path, or by default the one beside the ONNX file.

    A file is read by the one export-manifest reader, which refuses JSON without the exporter's format tag;
    a mapping is the caller's own and is only checked for what an engine key needs.
    """
    if isinstance(manifest, Mapping):
        data = dict(manifest)
    else:
        path = Path(manifest) if manifest is not None else export_manifest_path(onnx_path)
        try:
            data = read_export_manifest(path)
        except ValueError as error:  # EngineError: the CLI reports it as one line, like every other build error
            raise EngineError(str(error)) from None
    validate_export_manifest(data)
    return data


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, data: Union[bytes, str]) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written engine or manifest."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if isinstance(data, str):
        temporary.write_text(data)
    else:
        temporary.write_bytes(data)
    os.replace(temporary, path)
