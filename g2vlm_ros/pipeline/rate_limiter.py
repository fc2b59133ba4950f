"""Bounds how often inference starts, without dropping frames that arrive a little early."""
from __future__ import annotations


class RateLimiter:
    """Admits events at no more than `rate_hz` on average.

    A plain "at least 1/rate since the last one" rule rejects about half of a camera stream that
    runs at exactly `rate_hz` with timing jitter. Here an event may come up to half a period before
    its scheduled time; each admission moves the schedule one period past the later of the schedule
    and the event, so k admissions still span at least (k-1) periods minus half a period.
    """

    def __init__(self, rate_hz: float):
        self.period_s = 1.0 / rate_hz
        self._next_s = float("-inf")

    def set_rate(self, rate_hz: float) -> None:
        self.period_s = 1.0 / rate_hz

    def admit(self, now_s: float) -> bool:
        slack = 0.5 * self.period_s
        if now_s < self._next_s - slack:
            return False
        self._next_s = max(self._next_s, now_s) + self.period_s
        return True
