"""What the pipeline reports about itself: read by /diagnostics and /g2vlm/ask through these types, never
through the pipeline's attributes. A status is a copy taken at one moment; reading it needs no lock."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from g2vlm_ros.pipeline.mapping_stage import MapStatus
from g2vlm_ros.pipeline.scale_tracker import ScaleEstimate
from g2vlm_ros.pipeline.windowing import WindowStats


@dataclass(frozen=True)
class BackendStatus:
    description: str  # e.g. "torch (cuda, bf16)"
    precision: str
    details: dict[str, Any]  # backend-specific facts for diagnostics (device, engine, warm-up time, ...)
    is_placeholder: bool  # geometry-free: its outputs are not geometry


@dataclass(frozen=True)
class WorkerStatus:
    submitted: int
    processed: int
    dropped: int  # replaced by a newer window before the model took them
    failed: int
    latency_p50_ms: float  # NaN before the first window
    latency_p95_ms: float


@dataclass(frozen=True)
class HealthReport:
    level: str  # "ok" | "warn" | "error"
    message: str
    consecutive_failures: int
    out_of_memory_events: int
    out_of_memory_policy: str
    keyframe_limit: Optional[int]  # windows cut to this many sets per camera after running out of memory
    last_error: str


@dataclass(frozen=True)
class PipelineStatus:
    loaded: bool  # a backend is loaded (configured)
    active: bool  # frames are taken and windows run
    backend: Optional[BackendStatus]
    worker: Optional[WorkerStatus]
    health: HealthReport
    windows_rate_limited: int
    window_size: Optional[int]  # keyframes per camera; None while not configured
    assembly: Optional[WindowStats]  # synchronized sets, keyframes, dropped frames; None while not configured
    confidence_source: Optional[str]  # of the latest window: head | head_agreement | none
    seconds_since_last_window: Optional[float]  # None while inactive (since activation until the first)
    seconds_since_last_set: Optional[float]
    scale: ScaleEstimate
    map: Optional[MapStatus] = None  # None while not configured
