"""Loads a serialized engine only after checking that it is the one asked for, and inspects engine bytes.

An engine built for another checkpoint, bucket, precision, TensorRT or GPU either fails deep inside TensorRT
or, worse, silently runs a different model; so its manifest's key and the file's sha256 are compared before a
single byte is handed out, and every difference is listed with the command that fixes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from g2vlm_ros.deploy.build_progress import LogFn, make_trt_logger
from g2vlm_ros.deploy.engine_build import build_engine
from g2vlm_ros.deploy.engine_keys import (
    EngineError,
    EngineKey,
    EngineKeyMismatch,
    PathLike,
    engine_manifest_path,
    expected_key,
    load_export_manifest,
    read_json,
    sha256_bytes,
)
from g2vlm_ros.deploy.tensorrt_flavour import import_tensorrt


def read_engine_manifest(engine_path: PathLike) -> dict[str, Any]:
    """The manifest `build_engine` wrote beside `engine_path`; EngineError if missing or unreadable."""
    return read_json(engine_manifest_path(engine_path))


def engine_problems(engine_path: PathLike, expected: EngineKey) -> tuple[Optional[bytes], list[str]]:
    """The engine's bytes and an empty list if it is what `expected` describes, else (None, every problem)."""
    engine_path = Path(engine_path)
    problems: list[str] = []
    try:
        record = read_engine_manifest(engine_path)
    except EngineError as exc:
        record = None
        problems.append(f"manifest: {exc}")
    if record is not None:
        try:
            problems += EngineKey.from_dict(record.get("key")).differences(expected, ("engine", "expected"))
        except EngineError as exc:
            problems.append(str(exc))
    try:
        data: Optional[bytes] = engine_path.read_bytes()
    except OSError as exc:
        data = None
        problems.append(f"engine file unreadable: {exc.strerror or exc}: {engine_path}")
    if data is not None and record is not None:
        actual, recorded = sha256_bytes(data), record.get("engine_sha256")
        if actual != recorded:
            problems.append(f"engine_sha256: file {actual[:16]}..., manifest {str(recorded)[:16]}... "
                            "(engine file corrupted or replaced)")
    return (data, []) if not problems else (None, problems)


def load_engine_bytes(engine_path: PathLike, expected: EngineKey, *, rebuild_from: Optional[PathLike] = None,
                      allow_rebuild: bool = False, **build_kwargs: Any) -> bytes:
    """The serialized engine at `engine_path`, but only if its manifest and checksum match `expected`.

    On any mismatch (no/unreadable manifest, a different key field, a checksum that differs) it rebuilds
    from `rebuild_from` when `allow_rebuild` is set, else raises EngineKeyMismatch listing every problem
    and how to rebuild. `build_kwargs` go to `build_engine` (`engine_dir` defaults to the engine's folder,
    `compute_capability` to the expected one). Bytes of a mismatched engine are never returned.
    """
    engine_path = Path(engine_path)
    data, problems = engine_problems(engine_path, expected)
    if data is not None:
        return data
    if allow_rebuild and rebuild_from is not None:
        log: LogFn = build_kwargs.get("log", print)
        log(f"Rebuilding engine {engine_path.name}: " + "; ".join(problems))
        return _rebuild(engine_path, expected, Path(rebuild_from), dict(build_kwargs))
    raise EngineKeyMismatch(_mismatch_message(engine_path, expected, problems, rebuild_from), problems)


def _rebuild(engine_path: Path, expected: EngineKey, onnx_path: Path, build_kwargs: dict[str, Any]) -> bytes:
    """Build `expected` from `onnx_path`, first checking that this ONNX and TensorRT can produce that key."""
    export_manifest = load_export_manifest(build_kwargs.pop("manifest", None), onnx_path)
    _, flavour, version = import_tensorrt()
    target = build_kwargs.pop("compute_capability", None) or expected.compute_capability
    planned = expected_key(export_manifest, flavour, version, target)
    cannot = planned.differences(expected, ("rebuild would give", "expected"))
    if cannot:
        raise EngineKeyMismatch(f"cannot rebuild {engine_path.name} from {onnx_path}: " + "; ".join(cannot), cannot)
    engine_dir = build_kwargs.pop("engine_dir", engine_path.parent)
    build = build_engine(onnx_path, export_manifest, engine_dir, compute_capability=target, **build_kwargs)
    data, problems = engine_problems(build.engine_path, expected)
    if data is None:  # only if the file changed under us: still never hand out unverified bytes
        raise EngineKeyMismatch(_mismatch_message(build.engine_path, expected, problems, onnx_path), problems)
    return data


def _mismatch_message(engine_path: Path, expected: EngineKey, problems: list[str],
                      rebuild_from: Optional[PathLike]) -> str:
    """Every problem, one per line, then the command (and the API switch) that fixes it."""
    onnx = str(rebuild_from) if rebuild_from is not None else (
        f"<ONNX export of model {expected.model_hash[:12]}, bucket {expected.bucket()}, {expected.precision}>")
    lines = [f"engine {engine_path} is not the expected {expected.file_stem()}:"]
    lines += [f"  - {problem}" for problem in problems]
    lines.append(f"Rebuild it: build_engine {onnx} --engine-dir {engine_path.parent} "
                 f"--compute-capability {expected.compute_capability}"
                 " (or load with allow_rebuild=True and rebuild_from=<onnx>)")
    return "\n".join(lines)


@dataclass(frozen=True)
class HeaderCheck:
    """What TensorRT says about serialized engine bytes without running them.

    `structurally_ok` is False when TensorRT flags the bytes as malformed or from another version.
    Without a GPU TensorRT-RTX can only check the header's magic tag and size before it needs the GPU's
    properties, so on CPU `validity` is "INVALID" even for a good engine; `diagnostics` then stays empty.
    """

    validity: str
    diagnostics: tuple[str, ...]
    structurally_ok: bool


def check_engine_header(data: bytes) -> Optional[HeaderCheck]:
    """TensorRT's validity verdict on engine bytes (no deserialization); None where the API is missing."""
    trt, _, _ = import_tensorrt()
    runtime = trt.Runtime(make_trt_logger(trt, None))
    if not hasattr(runtime, "get_engine_validity"):
        return None
    if len(data) < int(getattr(runtime, "engine_header_size", 0)):
        return HeaderCheck("INVALID", ("MALFORMED_ENGINE",), False)
    validity, bits = runtime.get_engine_validity(data)
    members = getattr(trt, "EngineInvalidityDiagnostics", None)
    names = tuple(name for name, member in (members.__members__.items() if members else []) if int(bits) & int(member))
    broken = {"MALFORMED_ENGINE", "VERSION_MISMATCH"}.intersection(names)
    return HeaderCheck(validity.name, names, not broken)
