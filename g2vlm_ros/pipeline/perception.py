"""The perception pipeline: frames in; windows through a backend on a worker thread; results out through a
callback. ROS-free: the node translates messages into Frames and results into messages, and nothing else.

Life cycle (driven by the node's lifecycle transitions):
  load(backend)  a fresh window assembler, inference health, scale tracker, map and worker around a loaded backend
  activate()     frames are taken and windows run
  deactivate()   frames are ignored; keyframes and the map are forgotten
  unload()       the worker stops, the backend is closed, the latest result dropped
Threads: `add_frame` runs on the caller's thread (the executor's camera callbacks) and only assembles; the
model runs on the worker thread with a single pending slot (the newest window wins, never a queue), so a slow
model cannot delay message handling. `status()` and `latest_snapshot()` may be called from any thread.
Every window with known units is placed in one persistent map (mapping_stage.MapStage): its outputs are then in
the map frame, and in map units (metres iff the scale source is metric).
"""
from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Optional, Protocol

from g2vlm_ros.geometry.scale import ScaleFit, ScaleUnavailable
from g2vlm_ros.pipeline.frame import Frame
from g2vlm_ros.pipeline.inference_health import InferenceHealth, release_cached_memory, run_window
from g2vlm_ros.pipeline.mapping_stage import MapStage, MapStageSettings
from g2vlm_ros.pipeline.postprocess import OutputPolicy, WindowOutputs, window_outputs
from g2vlm_ros.pipeline.rate_limiter import RateLimiter
from g2vlm_ros.pipeline.scale_tracker import ScaleEstimate, ScaleTracker
from g2vlm_ros.pipeline.status import BackendStatus, HealthReport, PipelineStatus, WorkerStatus
from g2vlm_ros.pipeline.stream_health import Activity
from g2vlm_ros.pipeline.windowing import Motion, Window, WindowAssembler, WindowPolicy
from g2vlm_ros.pipeline.worker import LatestOnlyWorker
from g2vlm_ros.process_memory import HeapTrimmer

if TYPE_CHECKING:
    from g2vlm_ros.backends.backend import GeometryBackend, GeometryResult
    from g2vlm_ros.mapping.world_map import Placement

ERROR_LOG_PERIOD_S = 2.0  # failing windows are logged at most this often (each is counted)


@dataclass(frozen=True)
class PipelineSettings:
    """The node's parameters that shape perception; all may change at runtime (see update)."""

    cameras: tuple[str, ...]
    window: WindowPolicy
    max_rate_hz: float = 0.0  # 0: no limit
    out_of_memory_policy: str = "reduce_window"
    scale_source: str = "none"
    fixed_scale: float = 1.0
    scale_max_age_s: float = 10.0
    cloud_stride: int = 1
    confidence_threshold: float = 0.0
    voxel_size: float = 0.0
    mapping: MapStageSettings = MapStageSettings()  # read at load


@dataclass(frozen=True)
class Snapshot:
    """The latest completed window and its geometry, as /g2vlm/ask reads it."""

    window: Window[Frame]
    result: GeometryResult
    scale: ScaleEstimate
    placement: Optional[Placement] = None  # the window (scaled as `scale` says) in the map; None: not mapped


class ScaleMeasurement(Protocol):
    """Measures a window's metric scale from the robot's own data (TF, a depth topic, a rig's baseline)."""

    def fit(self, frames: list[Frame], result: GeometryResult) -> ScaleFit:
        """The fit for this window; raises ScaleUnavailable saying why there is none."""


class Logger(Protocol):
    def warning(self, message: str) -> None: ...

    def error(self, message: str) -> None: ...


ResultCallback = Callable[[Snapshot, WindowOutputs], None]


class PerceptionPipeline:
    def __init__(self, settings: PipelineSettings, on_result: ResultCallback, logger: Logger,
                 shutting_down: Callable[[], bool] = lambda: False):
        """`on_result(snapshot, outputs)` runs on the worker thread for every completed window (an exception there
        counts as a failed window); `shutting_down()` true: errors of a window in flight are not failures."""
        self._settings = settings
        self._on_result = on_result
        self._log = logger
        self._shutting_down = shutting_down
        self.activity = Activity()  # when sets matched and windows completed: stale/skew checks of diagnostics
        self._rate_limiter = RateLimiter(settings.max_rate_hz)
        self._window_lock = threading.Lock()  # the assembler: camera callbacks run on several executor threads
        self._snapshot_lock = threading.Lock()
        self._snapshot: Optional[Snapshot] = None
        self._active = False
        self._backend: Optional[GeometryBackend] = None
        self._assembler: Optional[WindowAssembler[Frame]] = None
        self._worker: Optional[LatestOnlyWorker[Window[Frame]]] = None
        self._scale_measurement: Optional[ScaleMeasurement] = None
        self._map: Optional[MapStage] = None
        self._processed_keyframe_ns = -1  # first camera's frame of the newest keyframe set that went through the model
        self._health = InferenceHealth(settings.out_of_memory_policy)
        self._scale = self._new_scale_tracker()
        self._windows_rate_limited = 0
        self._trim_heap = HeapTrimmer()
        self._last_error_log = -ERROR_LOG_PERIOD_S

    # ---------------------------------------------------------------- life cycle
    @property
    def backend(self) -> Optional[GeometryBackend]:
        return self._backend

    @property
    def active(self) -> bool:
        return self._active

    def load(self, backend: GeometryBackend, motion: Optional[Motion] = None,
             scale_measurement: Optional[ScaleMeasurement] = None) -> None:
        """Starts inference state around `backend`: limits found after out-of-memory and scale fits start over.
        `motion(previous, candidate)`: the robot's motion between keyframe candidates (motion keyframes)."""
        settings = self._settings
        self._processed_keyframe_ns = -1
        # a new keyframe waits for the previous one to be processed: consecutive windows share one, and chain
        self._assembler = WindowAssembler(list(settings.cameras), settings.window, motion=motion,
                                          keyframe_processed=self._keyframe_processed)
        self._health = InferenceHealth(settings.out_of_memory_policy)
        self._scale = self._new_scale_tracker()
        self._scale_measurement = scale_measurement
        self._map = MapStage(settings.mapping, metric=settings.scale_source != "none", log_error=self._throttled_error)
        self._backend = backend
        self._worker = LatestOnlyWorker(self._infer, self._on_inference_error)

    def activate(self) -> None:
        self.activity.activated()
        self._active = True

    def deactivate(self) -> None:
        self._active = False
        self.activity.deactivated()
        with self._window_lock:
            if self._assembler is not None:
                self._assembler.reset()
            self._processed_keyframe_ns = -1
        if self._map is not None:
            self._map.reset()

    def unload(self, wait_s: float, exiting: bool = False) -> bool:
        """Stops inference and frees the model; safe in any state, twice. Waits up to `wait_s` for a window in
        flight; False when it is still running (abandoned). `exiting`: the process ends, so the backend is not
        closed under a window that may still use it and memory is not handed back (the exit does both)."""
        self._active = False
        self.activity.deactivated()
        worker, self._worker = self._worker, None
        finished = worker.stop(wait_s) if worker is not None else True
        backend, self._backend = self._backend, None
        if backend is not None and not exiting:
            backend.close()
        with self._window_lock:
            self._assembler = None
        with self._snapshot_lock:
            self._snapshot = None
        self._scale_measurement = None
        self._map = None
        if not exiting:
            gc.collect()  # the model may sit in reference cycles; free it before emptying the cache
            release_cached_memory()  # so that other processes see the memory free
        return finished

    def update(self, settings: PipelineSettings) -> None:
        """Runtime parameter changes; each takes effect with the next frame or window."""
        if settings.cameras != self._settings.cameras:
            raise ValueError("cameras cannot change while the pipeline runs")
        self._settings = settings
        self._rate_limiter.set_rate(settings.max_rate_hz)
        self._scale.fixed_scale, self._scale.max_age_s = settings.fixed_scale, settings.scale_max_age_s
        self._health.policy = settings.out_of_memory_policy
        with self._window_lock:
            if self._assembler is not None:
                self._assembler.policy = settings.window

    def _new_scale_tracker(self) -> ScaleTracker:
        settings = self._settings
        return ScaleTracker(settings.scale_source, settings.fixed_scale, settings.scale_max_age_s)

    @property
    def map(self) -> Optional[MapStage]:
        """The persistent map while loaded (trajectory, cloud, status; safe from any thread)."""
        return self._map

    # ---------------------------------------------------------------- frames in
    def add_frame(self, frame: Frame) -> None:
        """Assembles `frame`; a completed window goes to the worker (replacing one still waiting)."""
        if not self._active:
            return
        with self._window_lock:
            assembler = self._assembler
            if assembler is None:
                return
            if frame.clock_reset:
                assembler.reset()
                self._processed_keyframe_ns = -1
                if self._map is not None:
                    self._map.reset()
                self._log.warning(
                    f"camera '{frame.camera}': stamps jumped back to {frame.stamp_ns / 1e9:.3f} s (a restarted "
                    "clock: looping bag, driver restart, simulator reset); windows, keyframes and the map start over")
            sets_before = assembler.stats.sets_matched
            assembler.add(frame)
            window = assembler.poll()
            if assembler.stats.sets_matched != sets_before:
                self.activity.set_matched()
            if window is None:
                return
            if not self._rate_limiter.admit(time.monotonic()):
                self._windows_rate_limited += 1
                return
        worker = self._worker
        if worker is not None:
            worker.submit(window)

    # ---------------------------------------------------------------- inference (worker thread)
    def _infer(self, window: Window[Frame]) -> None:
        backend, health = self._backend, self._health
        if backend is None or not self._active:
            return
        window, result = run_window(backend, window, health, self._on_out_of_memory)
        result.validate()
        if result.num_views != len(window.frames):
            raise ValueError(f"backend returned {result.num_views} views for {len(window.frames)} images")
        if not self._active:
            return  # deactivated while the model ran: publish nothing
        scale = self._measure_scale(window.frames, result)
        # a window withheld for lack of scale is not mapped: its unit is unknown
        withhold = scale.metric_expected and not scale.valid
        placement, world_map = None, self._map
        if not withhold and world_map is not None:
            placement = world_map.place(window, result, scale.metres_per_unit or 1.0, window.newest_stamp_ns)
            withhold = placement is None  # the map failed on it (logged): its frame is not the map's
        snapshot = Snapshot(window, result, scale, placement)
        with self._snapshot_lock:  # before the outputs: a client that saw them can ask about them at once
            self._snapshot = snapshot
        settings = self._settings
        policy = OutputPolicy(scale.metres_per_unit, settings.cloud_stride, settings.confidence_threshold,
                              settings.voxel_size, withhold_geometry=withhold)
        self._on_result(snapshot, window_outputs(window.frames, result, policy, settings.cameras[0], placement))
        health.record_success()
        self.activity.window_completed()
        first_camera_keyframes = [frame.stamp_ns for index, frame in enumerate(window.frames[:window.keyframes])
                                  if window.is_keyframe(index)]
        self._processed_keyframe_ns = max([self._processed_keyframe_ns, *first_camera_keyframes])
        if world_map is not None and self._active:  # after the outputs: a loop check never delays them
            world_map.check_loop(backend)
        self._trim_heap(time.monotonic())  # freed window memory back to the system (see process_memory)

    def _measure_scale(self, frames: list[Frame], result: GeometryResult) -> ScaleEstimate:
        """The scale that applies to this window (see ScaleTracker for holding and expiry)."""
        tracker, measurement = self._scale, self._scale_measurement
        if not tracker.measured:
            return tracker.fixed()
        now = time.monotonic()
        if measurement is None:
            return tracker.add_failure("no scale measurement is set up", now)
        try:
            fit = measurement.fit(frames, result)
        except ScaleUnavailable as error:
            return tracker.add_failure(str(error), now)
        return tracker.add_fit(fit, now)

    def _on_out_of_memory(self, window: Window[Frame], smaller: Window[Frame], reason: str) -> None:
        self._log.warning(
            f"out of memory on a window of {len(window.frames)} views ({reason}); retrying with "
            f"{len(smaller.frames)} and keeping at most {smaller.keyframes} keyframe(s) per camera")

    def _keyframe_processed(self, keyframe_set) -> bool:
        return keyframe_set[0].stamp_ns <= self._processed_keyframe_ns

    def _throttled_error(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_LOG_PERIOD_S:
            self._last_error_log = now
            self._log.error(message)

    def _on_inference_error(self, window: Window[Frame], error: BaseException) -> None:
        if self._shutting_down():
            return  # Ctrl-C ended the process while a window was in flight: nothing failed
        self._health.record_failure(error)
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_LOG_PERIOD_S:
            self._last_error_log = now
            self._log.error(f"inference failed on a window of {len(window.frames)} frames: "
                            f"{type(error).__name__}: {error}")

    # ---------------------------------------------------------------- read from other threads
    def latest_snapshot(self) -> Optional[Snapshot]:
        with self._snapshot_lock:
            return self._snapshot

    def status(self) -> PipelineStatus:
        backend, worker, assembler, health = self._backend, self._worker, self._assembler, self._health
        snapshot = self.latest_snapshot()
        worker_status = None
        if worker is not None:
            p50, p95 = worker.latency_percentiles_ms()
            worker_status = WorkerStatus(worker.submitted, worker.processed, worker.dropped, worker.failed, p50, p95)
        condition = health.status()
        activity = self.activity
        return PipelineStatus(
            loaded=backend is not None,
            active=self._active,
            backend=None if backend is None else BackendStatus(
                backend.describe(), backend.precision, dict(backend.details()), backend.is_placeholder),
            worker=worker_status,
            health=HealthReport(condition.level, condition.message, health.consecutive_failures,
                                health.out_of_memory_events, health.policy, health.keyframe_limit, health.last_error),
            windows_rate_limited=self._windows_rate_limited,
            window_size=None if assembler is None else assembler.policy.window_size,
            assembly=None if assembler is None else replace(assembler.stats),
            confidence_source=None if snapshot is None else snapshot.result.confidence_source,
            seconds_since_last_window=activity.since(activity.last_window_at),
            seconds_since_last_set=activity.since(activity.last_set_at),
            scale=self._scale.latest,
            map=None if self._map is None else self._map.status(),
        )
