"""Which metric scale applies to a window, and how trustworthy it is.

G2VLM reconstructs every window in its own arbitrary unit, so the scale is measured per window
(see g2vlm_ros.geometry.scale). When a window cannot be measured (the robot stopped, TF or the depth
image is late), the last fit is held for at most `max_age_s`, and the estimate says so; after that
the window gets no scale and the node publishes relative outputs only, never unscaled "metres".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from g2vlm_ros.geometry.scale import ScaleFit

METRIC_SOURCES = ("fixed", "tf", "depth_topic", "rig")


@dataclass(frozen=True)
class ScaleEstimate:
    source: str
    metres_per_unit: Optional[float]  # None: no metric scale for this window
    residual_m: float = math.nan
    samples: int = 0
    age_s: float = 0.0
    status: str = ""
    fits_total: int = 0
    failures_total: int = 0

    @property
    def valid(self) -> bool:
        return self.metres_per_unit is not None

    @property
    def metric_expected(self) -> bool:
        """True when the user configured a metric source: then unscaled geometry is withheld."""
        return self.source != "none"


class ScaleTracker:
    """Turns per-window fits (or the reasons they failed) into the scale each window is published with."""

    def __init__(self, source: str, fixed_scale: float = 1.0, max_age_s: float = 10.0):
        if source not in ("none",) + METRIC_SOURCES:
            raise ValueError(f"unknown scale source '{source}'")
        self.source = source
        self.fixed_scale = fixed_scale
        self.max_age_s = max_age_s
        self.fits_total = 0
        self.failures_total = 0
        self._last_fit: Optional[ScaleFit] = None
        self._last_fit_s = -math.inf
        self.latest = self._initial()

    @property
    def metric(self) -> bool:
        return self.source != "none"

    @property
    def measured(self) -> bool:
        """True for sources measured on every window (everything except none and fixed)."""
        return self.source not in ("none", "fixed")

    def _initial(self) -> ScaleEstimate:
        if self.source == "none":
            return ScaleEstimate("none", None, status="scale_source none: outputs are relative (up to scale)")
        if self.source == "fixed":
            return ScaleEstimate("fixed", self.fixed_scale, 0.0, 0, status="fixed factor set by the user")
        return ScaleEstimate(self.source, None, status="no window measured yet")

    def _record(self, estimate: ScaleEstimate) -> ScaleEstimate:
        self.latest = estimate
        return estimate

    def fixed(self) -> ScaleEstimate:
        """The estimate of a window for the sources that are not measured (none, fixed)."""
        return self._record(self._initial())

    def add_fit(self, fit: ScaleFit, now_s: float) -> ScaleEstimate:
        self.fits_total += 1
        self._last_fit, self._last_fit_s = fit, now_s
        return self._record(ScaleEstimate(
            self.source, fit.metres_per_unit, fit.residual_m, fit.samples, 0.0,
            f"measured on this window: residual {fit.residual_m:.3g} m over {fit.samples} samples",
            self.fits_total, self.failures_total))

    def add_failure(self, reason: str, now_s: float) -> ScaleEstimate:
        self.failures_total += 1
        age = now_s - self._last_fit_s
        if self._last_fit is not None and age <= self.max_age_s:
            fit = self._last_fit
            return self._record(ScaleEstimate(
                self.source, fit.metres_per_unit, fit.residual_m, fit.samples, age,
                f"held from a fit {age:.1f} s old; this window: {reason}", self.fits_total, self.failures_total))
        why = reason if self._last_fit is None else f"{reason} (last fit {age:.1f} s old > {self.max_age_s} s)"
        return self._record(ScaleEstimate(self.source, None, status=why, fits_total=self.fits_total,
                                          failures_total=self.failures_total))

    def reset(self) -> None:
        self.fits_total = self.failures_total = 0
        self._last_fit, self._last_fit_s = None, -math.inf
        self.latest = self._initial()
