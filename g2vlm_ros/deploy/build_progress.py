"""What an engine build shows on the terminal: phase progress, a heartbeat during long silent steps, and
TensorRT's own messages.

Builds run for minutes to an hour, and TensorRT reports either thousands of tactic-timing steps or nothing
for minutes; the printer here keeps that to a few lines that show the build is alive. The printer itself does
not depend on TensorRT, so it is tested without it.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Optional

LogFn = Callable[[str], None]


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


class Heartbeat:
    """A daemon thread calling `printer.tick()` while a build runs (TensorRT is silent within a step)."""

    def __init__(self, printer: Optional[ProgressPrinter], period_s: float = 1.0):
        self._printer, self._period = printer, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-build-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            _quietly(self._printer.tick)

    def __enter__(self) -> Heartbeat:
        if self._printer is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def make_progress_monitor(trt: ModuleType, printer: ProgressPrinter) -> Optional[Any]:
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


def make_trt_logger(trt: ModuleType, log: Optional[LogFn], min_severity: str = "WARNING") -> Any:
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
