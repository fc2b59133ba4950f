"""The pipeline's map stage: every window with known units joins one persistent WorldMap (g2vlm_ros.mapping).

Per window (on the worker thread, after the scale is measured): each view becomes a ViewObservation (its pose in
the window, strided local points, confidence, colours and the model's global descriptor when it has one), in
metres when the map is metric, and `add_window` places the window in the map. The map may then ask for a loop
check: the model runs on the two-view window [candidate keyframe image, current image] and `verify_loop` judges
it, after the window's outputs are out, so that a loop check never delays them. For this, the images of recent
keyframes are kept, thinned evenly over the whole run when there are more than the bound.

The WorldMap is used from the worker thread (windows), the node's services (save, publish) and lifecycle
transitions (reset): one lock serializes them. The model's run for a loop check holds no lock.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from g2vlm_ros.mapping.world_map import MapSettings, Placement, ViewObservation, WorldMap
from g2vlm_ros.pipeline.frame import Frame
from g2vlm_ros.pipeline.windowing import Window

if TYPE_CHECKING:
    from g2vlm_ros.backends.backend import GeometryBackend, GeometryResult

KeyframeKey = tuple[str, int]


@dataclass(frozen=True)
class MapStageSettings:
    stride: int = 8  # every n-th pixel of each view goes to the map: alignment and map cloud cost stay small
    map: MapSettings = MapSettings()
    loop_images: int = 200  # keyframe images kept for loop checks


@dataclass(frozen=True)
class MapStatus:
    """The map as diagnostics report it (a copy)."""

    metric: bool
    windows_placed: int
    windows_failed: int  # the map refused or failed on a window: its geometry was withheld
    last_status: str  # of the last placement: initialized | chained | reinitialized; "" before the first
    last_shared_keyframes: int
    last_residual: float
    last_scale_ratio: float
    last_scale_spread: float
    loop_checks: int  # two-view windows run for a loop candidate
    loop_checks_failed: int  # the model or the check raised
    loop_candidates_without_image: int  # the candidate's image was no longer kept
    loop_images: int  # keyframe images kept for loop checks (<= MapStageSettings.loop_images)
    loop_image_bytes: int  # their memory: the map's largest store
    last_error: str
    stats: dict[str, Any]  # WorldMap.stats(): keyframes, edges, loops, points, scale drift ...


class KeyframeImages:
    """Images of keyframes by key, at most `capacity`. When full, the image with the shortest time gap to its
    predecessor goes (never the oldest or the newest): the kept images stay spread over the whole run, so that
    loops to old places can still be checked, while memory stays bounded."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._images: dict[KeyframeKey, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._images)

    @property
    def nbytes(self) -> int:
        return sum(image.nbytes for image in self._images.values())

    def add(self, key: KeyframeKey, rgb: np.ndarray) -> None:
        self._images[key] = rgb
        while len(self._images) > max(self.capacity, 0):
            self._evict()

    def get(self, key: KeyframeKey) -> Optional[np.ndarray]:
        return self._images.get(key)

    def clear(self) -> None:
        self._images.clear()

    def _evict(self) -> None:
        keys = sorted(self._images, key=lambda key: (key[1], key[0]))
        if len(keys) <= 2:
            del self._images[keys[0]]
            return
        inner = keys[1:-1]
        gaps = [key[1] - before[1] for before, key in zip(keys[:-2], inner, strict=True)]
        del self._images[inner[int(np.argmin(gaps))]]


def view_observations(keys: Sequence[KeyframeKey], keyframes: Sequence[bool], result: GeometryResult,
                      units_per_result_unit: float, stride: int) -> list[ViewObservation]:
    """One ViewObservation per view of `result`, in result units times `units_per_result_unit` (metres per model
    unit for a metric map), every `stride`-th pixel."""
    poses = result.camera_to_world.detach().double().cpu().numpy()
    poses[:, :3, 3] *= units_per_result_unit
    points = (result.local_points[:, ::stride, ::stride].float() * units_per_result_unit).cpu().numpy()
    confidence = None if result.confidence is None else (
        result.confidence[:, ::stride, ::stride].float().cpu().numpy())
    colors = result.colors[:, ::stride, ::stride].cpu().numpy()
    descriptors = getattr(result, "descriptors", None)  # backends that compute global descriptors give them
    if descriptors is not None:
        descriptors = descriptors.detach().float().cpu().numpy()
    return [ViewObservation(
        key=key, keyframe=bool(keyframe), camera_to_window=poses[index],
        points=points[index], confidence=None if confidence is None else confidence[index], colors=colors[index],
        descriptor=None if descriptors is None else descriptors[index])
        for index, (key, keyframe) in enumerate(zip(keys, keyframes, strict=True))]


class MapStage:
    def __init__(self, settings: MapStageSettings, metric: bool, log_error: Callable[[str], None]):
        self.settings, self.metric = settings, metric
        self._log_error = log_error
        self._lock = threading.Lock()
        self._map = WorldMap(settings.map, metric=metric)
        self._images = KeyframeImages(settings.loop_images)
        self._pending_loop: Optional[Any] = None  # the LoopRequest of the last window
        self._last: Optional[Placement] = None
        self._windows_placed = self._windows_failed = 0
        self._loop_checks = self._loop_checks_failed = self._loop_no_image = 0
        self._last_error = ""

    # ---------------------------------------------------------------- windows (worker thread)
    def place(self, window: Window[Frame], result: GeometryResult, units_per_result_unit: float,
              stamp_ns: int) -> Optional[Placement]:
        """Adds the window to the map; None (the error logged and counted) when the map cannot place it."""
        frames = window.frames
        keyframes = [window.is_keyframe(index) for index in range(len(frames))]
        keys = [(frame.camera, frame.stamp_ns) for frame in frames]
        views = view_observations(keys, keyframes, result, units_per_result_unit, self.settings.stride)
        with self._lock:
            try:
                placement = self._map.add_window(views, stamp_ns)
                request = self._map.loop_request() if self.settings.map.loop_closure else None
            except Exception as error:  # noqa: BLE001 - a map failure withholds this window's geometry only
                self._windows_failed += 1
                self._last_error = f"{type(error).__name__}: {error}"
                self._log_error(f"the map could not place a window: {self._last_error}")
                return None
            self._windows_placed += 1
            self._last = placement
            keep_images = self.settings.map.loop_closure and self.settings.loop_images > 0
            for frame, view in zip(frames, views, strict=True):
                # only keyframes the map kept can be loop candidates: a culled one's image would take a place
                if view.keyframe and keep_images and self._map.holds_keyframe(view.key):
                    self._images.add(view.key, frame.rgb)
            self._pending_loop = request
        return placement

    def check_loop(self, backend: GeometryBackend) -> Optional[bool]:
        """Runs the pending loop check, if any: the model on [candidate, current], then verify_loop. Returns
        whether the loop was accepted (None: no check ran). Errors are logged and counted, never raised."""
        with self._lock:
            request, self._pending_loop = self._pending_loop, None
            if request is None:
                return None
            candidate_key, current_key = _request_keys(request)
            candidate_image, current_image = self._images.get(candidate_key), self._images.get(current_key)
            if candidate_image is None or current_image is None:
                self._loop_no_image += 1
                return None
            self._loop_checks += 1
        try:
            result = backend.run([candidate_image, current_image])
            result.validate()
            if result.num_views != 2:
                raise ValueError(f"backend returned {result.num_views} views for a two-view loop window")
            # in the loop window's own unit: verification measures it against the candidate's stored depths
            views = view_observations((candidate_key, current_key), (True, True), result, 1.0, self.settings.stride)
            with self._lock:
                return bool(self._map.verify_loop(request, views))
        except Exception as error:  # noqa: BLE001 - a failed loop check must not fail the window
            with self._lock:
                self._loop_checks_failed += 1
                self._last_error = f"loop check: {type(error).__name__}: {error}"
            self._log_error(self._last_error)
            return None

    # ---------------------------------------------------------------- any thread
    def reset(self) -> None:
        with self._lock:
            self._map.reset()
            self._images.clear()
            self._pending_loop = None
            self._last = None

    def trajectory(self, camera: Optional[str] = None) -> list[tuple[KeyframeKey, np.ndarray]]:
        """The optimized keyframe trajectory in time order (camera-to-map), of one camera when given."""
        with self._lock:
            trajectory = self._map.keyframe_trajectory()
        return [(key, pose) for key, pose in trajectory if camera is None or key[0] == camera]

    def cloud(self) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            return self._map.cloud()

    def status(self) -> MapStatus:
        with self._lock:
            stats = self._map.stats()
            last = self._last
            return MapStatus(
                metric=self.metric, windows_placed=self._windows_placed, windows_failed=self._windows_failed,
                last_status="" if last is None else last.status,
                last_shared_keyframes=0 if last is None else last.shared_keyframes,
                last_residual=float("nan") if last is None else last.residual,
                last_scale_ratio=float("nan") if last is None else last.scale_ratio,
                last_scale_spread=float("nan") if last is None else last.scale_spread,
                loop_checks=self._loop_checks, loop_checks_failed=self._loop_checks_failed,
                loop_candidates_without_image=self._loop_no_image, loop_images=len(self._images),
                loop_image_bytes=self._images.nbytes, last_error=self._last_error,
                stats=_as_dict(stats))


def _request_keys(request: Any) -> tuple[KeyframeKey, KeyframeKey]:
    """(candidate, current) keyframe keys of a LoopRequest."""
    return tuple(request.candidate), tuple(request.current)


def _as_dict(stats: Any) -> dict[str, Any]:
    if isinstance(stats, dict):
        return dict(stats)
    try:
        return {field.name: getattr(stats, field.name) for field in fields(stats)}
    except TypeError:
        return {"stats": str(stats)}
