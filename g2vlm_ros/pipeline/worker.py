"""A single-slot inference worker: the newest submitted item wins, older pending ones are dropped.

Perception must react to the present, so a slow model never builds a queue: when a new window
arrives while one is still pending, the pending one is discarded and counted as dropped.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, Optional, TypeVar

import numpy as np

Item = TypeVar("Item")


class LatestOnlyWorker(Generic[Item]):
    """Runs `process(item)` on a background thread for the most recent submitted item.

    Exceptions from `process` are passed to `on_error` and never stop the thread.
    """

    def __init__(
        self,
        process: Callable[[Item], None],
        on_error: Callable[[Item, BaseException], None],
        name: str = "inference",
        latency_window: int = 200,
    ):
        self._process = process
        self._on_error = on_error
        self._condition = threading.Condition()
        self._pending: Optional[Item] = None
        self._stopping = False
        self.submitted = 0
        self.dropped = 0
        self.processed = 0
        self.failed = 0
        self._latencies_s: deque[float] = deque(maxlen=latency_window)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Item) -> None:
        with self._condition:
            self.submitted += 1
            if self._pending is not None:
                self.dropped += 1
            self._pending = item
            self._condition.notify()

    def latency_percentiles_ms(self) -> tuple[float, float]:
        """(p50, p95) of recent processing latencies in ms; NaN before the first item."""
        with self._condition:
            samples = list(self._latencies_s)
        if not samples:
            return float("nan"), float("nan")
        p50, p95 = np.percentile(np.asarray(samples) * 1e3, [50, 95])
        return float(p50), float(p95)

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Drops the pending item and waits up to timeout_s for the one in progress; True when the thread ended."""
        with self._condition:
            self._stopping = True
            self._pending = None
            self._condition.notify()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            with self._condition:
                while self._pending is None and not self._stopping:
                    self._condition.wait()
                if self._stopping:
                    return
                item, self._pending = self._pending, None
            start = time.perf_counter()
            try:
                self._process(item)
                succeeded = True
            except BaseException as error:  # noqa: BLE001 - the worker must survive any failure
                succeeded = False
                self._on_error(item, error)
            elapsed = time.perf_counter() - start
            with self._condition:
                if succeeded:
                    self.processed += 1
                    self._latencies_s.append(elapsed)
                else:
                    self.failed += 1
