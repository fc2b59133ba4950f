"""TensorRT engines of the exported G2VLM geometry path: build them, name them, and refuse stale ones.

An engine is only valid for the checkpoint, bucket (views x height x width), precision, TensorRT flavour
and version, and GPU compute capability it was built for. Loading one built for anything else either
fails deep inside TensorRT or, worse, silently runs a different model. So every engine gets a manifest
beside it (`<stem>.engine` + `<stem>.json`) holding an `EngineKey` and the engine's sha256, and
`load_engine_bytes` compares both before it hands out a single byte.

Both TensorRT (`import tensorrt`) and TensorRT-RTX (`import tensorrt_rtx`) are served by one code path:
they share the Python and ONNX-parser API. TensorRT-RTX is strongly typed (precision comes from the
tensor types in the ONNX graph, there are no FP16/BF16 builder flags) and can build on a machine
without a GPU for an explicitly named compute capability. Neither module is imported until needed, so
this file imports fine where neither is installed (ROS-free, CPU-only CI).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any, Optional, Union

PRECISIONS = ("fp32", "fp16", "bf16")
ENGINE_SUFFIX = ".engine"
MANIFEST_FORMAT = "g2vlm-engine/1"
FLAVOURS = (("tensorrt", "tensorrt"), ("tensorrt_rtx", "tensorrt-rtx"))  # (module, flavour), preferred first
FLAVOUR_ENV = "G2VLM_TENSORRT_FLAVOUR"

LogFn = Callable[[str], None]
PathLike = Union[str, "os.PathLike[str]"]
ManifestSource = Union[Mapping[str, Any], PathLike, None]

_CC_PATTERN = re.compile(r"^(?:sm)?_?(\d+)(?:\.(\d+))?$", re.IGNORECASE)
_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")
# The TensorRT tensor type each manifest precision must show up as somewhere in a strongly typed network.
_PRECISION_TYPES = {"fp32": "FLOAT", "fp16": "HALF", "bf16": "BF16"}


class EngineError(RuntimeError):
    """Building or loading an engine failed for a reason the user can act on (message says how)."""


class EngineKeyMismatch(EngineError):
    """An engine on disk was not built for what is asked of it; `problems` lists every difference."""

    def __init__(self, message: str, problems: Optional[list[str]] = None):
        super().__init__(message)
        self.problems = list(problems or [])


# --------------------------------------------------------------------------------------------- TensorRT


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


# ------------------------------------------------------------------------------------------ keys, manifests


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
            _safe(self.model_hash[:12]),
            f"{int(self.views)}x{int(self.height)}x{int(self.width)}",
            _safe(self.precision),
            f"{_safe(self.flavour)}-{_safe(self.trt_version)}",
            _safe(self.compute_capability),
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


def _safe(text: str) -> str:
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


def export_manifest_path(onnx_path: PathLike) -> Path:
    """Where the exporter writes the manifest of `<name>.onnx`: `<name>.json` beside it."""
    return Path(onnx_path).with_suffix(".json")


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
    """The export manifest given as a mapping or a path, or by default the one beside the ONNX file."""
    if isinstance(manifest, Mapping):
        data = dict(manifest)
    else:
        data = read_json(Path(manifest) if manifest is not None else export_manifest_path(onnx_path))
    validate_export_manifest(data)
    return data


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: Union[bytes, str]) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written engine or manifest."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if isinstance(data, str):
        temporary.write_text(data)
    else:
        temporary.write_bytes(data)
    os.replace(temporary, path)


# ------------------------------------------------------------------------------------------------ progress


@dataclass
class _Phase:
    depth: int
    started: float
    steps: int
    shown: bool
    last_heartbeat: float


class ProgressPrinter:
    """Turns TensorRT's phase/step callbacks into a few terminal lines (TensorRT-independent, so testable).

    Top-level phases always print their start and finish. Nested phases and steps print only when
    `min_interval_s` has passed since the last line, so a long build shows where it is about once per
    interval instead of flooding the terminal with thousands of tactic-timing steps. Some phases are a
    single step that runs for minutes; `tick()` (called by a heartbeat thread during the build) then
    names the phase the build is in, and repeats that every `heartbeat_s`, so it never looks hung.
    """

    def __init__(self, log: LogFn = print, min_interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 prefix: str = "[engine build] ", heartbeat_s: float = 30.0):
        self._log = log
        self._interval = min_interval_s
        self._heartbeat = heartbeat_s
        self._clock = clock
        self._prefix = prefix
        self._lock = threading.Lock()  # TensorRT may call from several builder threads
        self._phases: dict[str, _Phase] = {}  # active phases, outermost first
        self._last_line = float("-inf")

    def _emit(self, depth: int, text: str, now: float) -> None:
        self._last_line = now
        self._log(f"{self._prefix}{'  ' * depth}{text}")

    def _due(self, now: float) -> bool:
        return now - self._last_line >= self._interval

    def _show_start(self, name: str, phase: _Phase, now: float) -> None:
        phase.shown, phase.last_heartbeat = True, now
        self._emit(phase.depth, f"{name} ({phase.steps} step{'s' if phase.steps != 1 else ''})", now)

    def phase_start(self, name: str, parent: Optional[str], num_steps: int) -> None:
        with self._lock:
            now = self._clock()
            depth = self._phases[parent].depth + 1 if parent in self._phases else 0
            phase = self._phases[name] = _Phase(depth, now, num_steps, False, now)
            if depth == 0 or self._due(now):
                self._show_start(name, phase, now)

    def step_complete(self, name: str, step: int) -> bool:
        with self._lock:
            now = self._clock()
            phase = self._phases.get(name)
            if phase is not None and self._due(now):
                self._emit(phase.depth, f"{name}: step {step + 1}/{phase.steps}", now)
        return True  # never cancel the build

    def phase_finish(self, name: str) -> None:
        with self._lock:
            now = self._clock()
            phase = self._phases.pop(name, None)
            if phase is not None and (phase.shown or now - phase.started >= self._interval):
                self._emit(phase.depth, f"{name}: done in {now - phase.started:.1f} s", now)

    def tick(self) -> None:
        """Name the innermost running phase if the terminal has been quiet for a while."""
        with self._lock:
            now = self._clock()
            if not self._phases or not self._due(now):
                return
            name, phase = next(reversed(self._phases.items()))
            if not phase.shown:
                self._show_start(name, phase, now)
            elif now - phase.last_heartbeat >= self._heartbeat:
                phase.last_heartbeat = now
                self._emit(phase.depth, f"{name}: still running after {now - phase.started:.0f} s", now)


class _Heartbeat:
    """A daemon thread calling `printer.tick()` while a build runs (TensorRT is silent within a step)."""

    def __init__(self, printer: Optional[ProgressPrinter], period_s: float = 1.0):
        self._printer, self._period = printer, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-build-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            _quietly(self._printer.tick)

    def __enter__(self) -> _Heartbeat:
        if self._printer is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def _make_progress_monitor(trt: ModuleType, printer: ProgressPrinter) -> Optional[Any]:
    """A `trt.IProgressMonitor` forwarding to `printer`, or None where the module has no progress API."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class _Monitor(base):
        def __init__(self) -> None:
            base.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: Optional[str], num_steps: int) -> None:
            _quietly(lambda: printer.phase_start(phase_name, parent_phase, num_steps))

        def step_complete(self, phase_name: str, step: int) -> bool:
            _quietly(lambda: printer.step_complete(phase_name, step))
            return True

        def phase_finish(self, phase_name: str) -> None:
            _quietly(lambda: printer.phase_finish(phase_name))

    return _Monitor()


def _quietly(action: Callable[[], Any]) -> None:
    """Run a progress callback; a broken terminal must never abort an hour-long engine build."""
    try:
        action()
    except Exception:
        pass


def _make_logger(trt: ModuleType, log: Optional[LogFn], min_severity: str = "WARNING") -> Any:
    """A `trt.ILogger` that forwards messages at or above `min_severity` to `log` and remembers errors.

    The remembered errors end up in the EngineError raised when a build fails, so the CLI's one-line
    error says why instead of "see above". `log=None` gives a silent logger (for probes that are
    expected to complain, such as reading GPU properties on a machine without a GPU).
    """
    severity = trt.ILogger.Severity
    threshold = int(getattr(severity, min_severity))

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, level: Any, message: str) -> None:
            if int(level) <= int(severity.ERROR):
                self.errors.append(message)
            if log is not None and int(level) <= threshold:
                _quietly(lambda: log(f"[TensorRT] {level.name}: {message}"))

    return _Logger()


# --------------------------------------------------------------------------------------------------- build


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
    _atomic_write(engine_path, serialized)
    record = _engine_record(key, export_manifest, onnx_path, engine_path, serialized, seconds, workspace_gib,
                            cache_path)
    _atomic_write(manifest_path, json.dumps(record, indent=2, sort_keys=True) + "\n")
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
    return engine_dir / f"timing_{_safe(key.flavour)}-{_safe(key.trt_version)}_{_safe(key.compute_capability)}.cache"


def _build_serialized(trt: ModuleType, flavour: str, onnx_path: Path, manifest: Mapping[str, Any], target: str,
                      workspace_gib: float, cache_path: Optional[Path], progress: bool,
                      log: LogFn) -> tuple[bytes, float]:
    """Parse, configure and build; returns the serialized engine and the seconds the build itself took."""
    logger = _make_logger(trt, log)
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
    monitor = _make_progress_monitor(trt, printer) if printer is not None else None
    if monitor is not None:
        config.progress_monitor = monitor
    started = time.perf_counter()
    with _Heartbeat(printer if monitor is not None else None):
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
        _atomic_write(path, bytes(cache.serialize()))


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


# ---------------------------------------------------------------------------------------------------- load


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


# --------------------------------------------------------------------------------------------- inspection


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
    runtime = trt.Runtime(_make_logger(trt, None))
    if not hasattr(runtime, "get_engine_validity"):
        return None
    if len(data) < int(getattr(runtime, "engine_header_size", 0)):
        return HeaderCheck("INVALID", ("MALFORMED_ENGINE",), False)
    validity, bits = runtime.get_engine_validity(data)
    members = getattr(trt, "EngineInvalidityDiagnostics", None)
    names = tuple(name for name, member in (members.__members__.items() if members else []) if int(bits) & int(member))
    broken = {"MALFORMED_ENGINE", "VERSION_MISMATCH"}.intersection(names)
    return HeaderCheck(validity.name, names, not broken)
