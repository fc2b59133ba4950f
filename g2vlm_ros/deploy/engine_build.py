"""Builds a TensorRT engine from an exported ONNX graph and writes it with its manifest.

TensorRT-RTX is strongly typed (precision comes from the tensor types in the ONNX graph, there are no
FP16/BF16 builder flags) and can build on a machine without a GPU for an explicitly named compute
capability; full TensorRT builds for the GPU it runs on. The graph is checked against its export manifest
before the build, because a mismatch found after an hour-long build wastes the hour.
"""
from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

from g2vlm_ros.deploy.build_progress import (
    Heartbeat,
    LogFn,
    ProgressPrinter,
    make_progress_monitor,
    make_trt_logger,
)
from g2vlm_ros.deploy.engine_keys import (
    ENGINE_SUFFIX,
    MANIFEST_FORMAT,
    EngineError,
    EngineKey,
    ManifestSource,
    PathLike,
    atomic_write,
    engine_manifest_path,
    expected_key,
    load_export_manifest,
    normalize_compute_capability,
    safe_name,
    sha256_bytes,
)
from g2vlm_ros.deploy.tensorrt_flavour import current_compute_capability, import_tensorrt
from g2vlm_ros.precision import PRECISIONS

# The TensorRT tensor type each manifest precision must show up as somewhere in a strongly typed network, in
# PRECISIONS' order (strict: a precision added there without its type here fails at import, not mid-build).
_PRECISION_TYPES = dict(zip(PRECISIONS, ("FLOAT", "HALF", "BF16"), strict=True))


@dataclass(frozen=True)
class EngineBuild:
    """Result of `build_engine`: where the engine and its manifest were written, and what it took."""

    engine_path: Path
    manifest_path: Path
    key: EngineKey
    build_seconds: float


def build_engine(onnx_path: PathLike, manifest: ManifestSource, engine_dir: PathLike, *,
                 compute_capability: Optional[str] = None, workspace_gib: float = 4.0,
                 timing_cache_path: Optional[PathLike] = None, progress: bool = True,
                 log: LogFn = print) -> EngineBuild:
    """Build a strongly typed engine from an exported ONNX graph and write it with its manifest.

    `manifest` is the export manifest (a mapping, a path, or None for the `.json` beside the ONNX file).
    `compute_capability` defaults to the local GPU's; on a machine without a GPU it must be given (only
    TensorRT-RTX can build for a GPU it cannot see). The timing cache, where the flavour has one, is
    shared by all builds in `engine_dir` unless `timing_cache_path` names another file.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise EngineError(f"ONNX file {onnx_path} does not exist")
    export_manifest = load_export_manifest(manifest, onnx_path)
    named = export_manifest.get("onnx_file")
    if isinstance(named, str) and named != onnx_path.name:
        log(f"Warning: the manifest describes {named}, not {onnx_path.name}; check that they belong together")
    trt, flavour, version = import_tensorrt()
    target = _target_compute_capability(compute_capability)
    _check_target(trt, flavour, target)
    key = expected_key(export_manifest, flavour, version, target)
    engine_dir = Path(engine_dir)
    engine_dir.mkdir(parents=True, exist_ok=True)
    cache_path = _timing_cache_file(flavour, key, engine_dir, timing_cache_path, log)

    log(f"Building {key.file_stem()} from {onnx_path} ({flavour} {version}, {target}, {key.precision})")
    serialized, seconds = _build_serialized(trt, flavour, onnx_path, export_manifest, target,
                                            workspace_gib, cache_path, progress, log)
    engine_path = engine_dir / f"{key.file_stem()}{ENGINE_SUFFIX}"
    manifest_path = engine_manifest_path(engine_path)
    atomic_write(engine_path, serialized)
    record = _engine_record(key, export_manifest, onnx_path, engine_path, serialized, seconds, workspace_gib,
                            cache_path)
    atomic_write(manifest_path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    log(f"Engine written to {engine_path} ({len(serialized) / 2**20:.1f} MiB) in {seconds:.1f} s")
    return EngineBuild(engine_path=engine_path, manifest_path=manifest_path, key=key, build_seconds=seconds)


def _target_compute_capability(requested: Optional[str]) -> str:
    """The compute capability to build for: the requested one, else the local GPU's; error with neither."""
    if requested:
        return normalize_compute_capability(requested)
    local = current_compute_capability()
    if local is None:
        raise EngineError("no GPU here to build for: name the target with compute_capability "
                          "(--compute-capability), e.g. sm89")
    return local


def _timing_cache_file(flavour: str, key: EngineKey, engine_dir: Path, requested: Optional[PathLike],
                       log: LogFn) -> Optional[Path]:
    """The timing cache file to load/save, or None where the flavour has no builder timing cache.

    TensorRT-RTX compiles its kernels at run time; its timing-cache calls are deprecated no-ops, so
    they are not made at all. The default file is per flavour, version and GPU (a cache is only valid
    for those) and shared by every model and bucket built in the folder.
    """
    if flavour != "tensorrt":
        if requested is not None:
            log(f"{flavour} has no builder timing cache; ignoring {requested}")
        return None
    if requested is not None:
        return Path(requested)
    stem = f"timing_{safe_name(key.flavour)}-{safe_name(key.trt_version)}_{safe_name(key.compute_capability)}"
    return engine_dir / f"{stem}.cache"


def _build_serialized(trt: ModuleType, flavour: str, onnx_path: Path, manifest: Mapping[str, Any], target: str,
                      workspace_gib: float, cache_path: Optional[Path], progress: bool,
                      log: LogFn) -> tuple[bytes, float]:
    """Parse, configure and build; returns the serialized engine and the seconds the build itself took."""
    logger = make_trt_logger(trt, log)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    _parse_onnx(parser, onnx_path)
    _check_network(network, manifest)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    _set_target(trt, flavour, config, target)
    _add_static_profile(builder, network, config, manifest)
    if cache_path is not None:
        _load_timing_cache(config, cache_path, log)
    printer = ProgressPrinter(log) if progress else None
    monitor = make_progress_monitor(trt, printer) if printer is not None else None
    if monitor is not None:
        config.progress_monitor = monitor
    started = time.perf_counter()
    with Heartbeat(printer if monitor is not None else None):
        serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        reason = logger.errors[-1] if logger.errors else "no reason given"
        raise EngineError(f"TensorRT could not build an engine from {onnx_path}: {reason}")
    if cache_path is not None:
        _save_timing_cache(config, cache_path)
    return bytes(serialized), seconds


def _network_flags(trt: ModuleType) -> int:
    """STRONGLY_TYPED where the module has it: precision then comes from the graph, as in TensorRT-RTX."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _parse_onnx(parser: Any, onnx_path: Path) -> None:
    """Parse from the file (not bytes) so weights stored as external data beside it are found."""
    if parser.parse_from_file(str(onnx_path.resolve())):
        return
    errors = [_describe_parser_error(parser.get_error(index)) for index in range(parser.num_errors)]
    raise EngineError(f"the ONNX parser rejected {onnx_path} ({len(errors)} error(s)): " + " | ".join(errors))


def _describe_parser_error(error: Any) -> str:
    """One parser error as a line: the node (if any), the error code and the description."""
    node = error.node()
    name, operator = (getattr(error, attr, lambda: "?")() for attr in ("node_name", "node_operator"))  # TRT >= 8.6
    where = f"node {node} '{name}' ({operator}): " if node >= 0 else ""
    return f"{where}{error.code().name}: {error.desc()}"


def _check_network(network: Any, manifest: Mapping[str, Any]) -> None:
    """Refuse a graph that does not match its manifest, before spending minutes on a build.

    Checks the input names and static shapes the manifest lists, and that the manifest's precision is
    actually present among the network's tensor types: in a strongly typed network nothing else sets
    precision, so an fp32 graph labelled fp16 would silently become an fp32 engine keyed as fp16.
    """
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    for entry in manifest.get("inputs") or []:
        name = entry.get("name") if isinstance(entry, Mapping) else None
        if name is None:
            continue
        if name not in inputs:
            raise EngineError(f"manifest input {name!r} is not an input of the ONNX graph ({', '.join(inputs)})")
        wanted = entry.get("shape")
        actual = list(inputs[name].shape)
        if _all_ints(wanted) and all(dim >= 0 for dim in actual) and list(wanted) != actual:
            raise EngineError(f"input {name!r} has shape {actual} in the ONNX graph but {wanted} in the manifest")
    wanted_type = _PRECISION_TYPES[manifest["precision"]]
    present = _network_types(network)
    if wanted_type not in present:
        raise EngineError(f"manifest says {manifest['precision']} but the ONNX graph has no {wanted_type} tensors "
                          f"(it has {', '.join(sorted(present))}); TensorRT-style strong typing takes precision "
                          "from the graph, so re-export in the precision you want")


def _network_types(network: Any) -> set[str]:
    """The data type names of all layer outputs and network inputs (e.g. {"FLOAT", "HALF", "INT64"})."""
    tensors = [network.get_input(i) for i in range(network.num_inputs)]
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        tensors += [layer.get_output(o) for o in range(layer.num_outputs)]
    return {tensor.dtype.name for tensor in tensors if tensor is not None}


def _all_ints(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(d, int) and not isinstance(d, bool) for d in value)


def _set_target(trt: ModuleType, flavour: str, config: Any, target: str) -> None:
    """Point the builder at `target`.

    TensorRT-RTX takes the target as `config.set_compute_capability(trt.ComputeCapability.SMxy, 0)`
    after `config.num_compute_capabilities = 1`, and then needs no GPU at all. Full TensorRT builds for
    the GPU it runs on (checked by `_check_target`), so there is nothing to set.
    """
    member = _cross_target(trt, flavour, target)
    if member is None:
        return
    config.num_compute_capabilities = 1
    if not config.set_compute_capability(member, 0):
        raise EngineError(f"{flavour} refused compute capability {target}")


def _check_target(trt: ModuleType, flavour: str, target: str) -> None:
    """Fail before parsing anything when this TensorRT cannot build for `target`."""
    if _cross_target(trt, flavour, target) is not None:
        return
    local = current_compute_capability()
    if local != target:
        raise EngineError(f"{flavour} builds only for the GPU it runs on ({local or 'none here'}), "
                          f"not for {target}; build on a {target} machine")


def _cross_target(trt: ModuleType, flavour: str, target: str) -> Optional[Any]:
    """The `trt.ComputeCapability` member for `target` where the module can build for any listed GPU
    (TensorRT-RTX), None where it builds for the local GPU only; EngineError for an unlisted target."""
    capabilities = getattr(trt, "ComputeCapability", None)
    if capabilities is None or not hasattr(trt.IBuilderConfig, "set_compute_capability"):
        return None
    member = getattr(capabilities, target.upper(), None)
    if member is None:
        supported = [name.lower() for name in capabilities.__members__ if name.startswith("SM")]
        raise EngineError(f"{flavour} {getattr(trt, '__version__', '')} cannot build for {target}; "
                          f"it supports {', '.join(supported)}")
    return member


def _add_static_profile(builder: Any, network: Any, config: Any, manifest: Mapping[str, Any]) -> None:
    """Pin dynamic input dimensions to the bucket's shapes (min = opt = max); a no-op for static graphs."""
    dynamic = [network.get_input(i) for i in range(network.num_inputs)
               if any(dim < 0 for dim in network.get_input(i).shape)]
    if not dynamic:
        return
    shapes = {entry.get("name"): entry.get("shape") for entry in manifest.get("inputs") or []
              if isinstance(entry, Mapping)}
    profile = builder.create_optimization_profile()
    for tensor in dynamic:
        shape = shapes.get(tensor.name)
        if not _all_ints(shape):
            raise EngineError(f"input {tensor.name!r} has dynamic shape {list(tensor.shape)} and the manifest "
                              "gives no fixed shape for it")
        profile.set_shape(tensor.name, shape, shape, shape)
    config.add_optimization_profile(profile)


def _load_timing_cache(config: Any, path: Path, log: LogFn) -> None:
    """Start from the saved timing cache so rebuilds skip tactic timing already done; fresh if unusable."""
    data = path.read_bytes() if path.is_file() else b""
    if config.set_timing_cache(config.create_timing_cache(data), False):
        if data:
            log(f"Using timing cache {path}")
        return
    log(f"Timing cache {path} does not fit this TensorRT/GPU; starting a new one")
    config.set_timing_cache(config.create_timing_cache(b""), False)


def _save_timing_cache(config: Any, path: Path) -> None:
    cache = config.get_timing_cache()
    if cache is not None:
        atomic_write(path, bytes(cache.serialize()))


def _engine_record(key: EngineKey, export_manifest: Mapping[str, Any], onnx_path: Path, engine_path: Path,
                   serialized: bytes, seconds: float, workspace_gib: float,
                   cache_path: Optional[Path]) -> dict[str, Any]:
    """The manifest written beside an engine: its key, checksum, provenance and the export manifest."""
    return {
        "format": MANIFEST_FORMAT,
        "key": key.to_dict(),
        "engine_file": engine_path.name,
        "engine_sha256": sha256_bytes(serialized),
        "engine_bytes": len(serialized),
        "build_seconds": round(seconds, 3),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "onnx_path": str(onnx_path.resolve()),
        "workspace_gib": workspace_gib,
        "timing_cache": str(cache_path) if cache_path is not None else None,
        "export_manifest": dict(export_manifest),
    }
