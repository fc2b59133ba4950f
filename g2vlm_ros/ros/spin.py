"""Spinning that no callback and no lifecycle transition can end.

Two ways an rclpy process dies from inside its own spin, both seen on this node:
- An exception in a subscription, timer or service callback is re-raised by the executor's spin in the
  main thread, which ends the process. `CallbackGuard.wrap` contains it: logged (throttled per kind of
  error), counted for /diagnostics, and the callback returns normally.
- A lifecycle transition runs on an executor thread and creates or destroys subscriptions while the
  main thread builds or walks the executor's wait set from the node's entity lists: rclpy then raises
  InvalidHandle ("destruction was requested") in the spinning thread. `EntityGate` serializes the two:
  the spinning thread holds the gate for each spin_once, and a transition changes entities only while
  holding it. After a change the next spin_once gets a different timeout argument, which makes rclpy
  start a fresh wait set instead of resuming the one that still lists destroyed entities (a public-API
  way to drop it, the same on Humble, Jazzy and Kilted).
`spin_until_shutdown` also survives anything that still escapes spin_once: it logs it and spins on.
"""
from __future__ import annotations

import faulthandler
import functools
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Optional

SPIN_PERIOD_S = 0.05  # upper bound of how long a transition waits for the spinning thread to let it in
# Ctrl-C to the end of teardown: one that takes longer is stuck (a DDS call that never returns): every thread's stack
# is printed and the process ends with 1. Well below the 10 s perception.launch.py waits before SIGTERM; teardown
# waits at most 1 s for a window in flight.
TEARDOWN_LIMIT_S = 4.0
LOG_THROTTLE_S = 2.0
MAX_THROTTLE_KEYS = 256


class EntityGate:
    """Lets one thread at a time either spin the executor or create/destroy the node's entities."""

    def __init__(self):
        self._lock = threading.RLock()
        self._count_lock = threading.Lock()  # `+=` on an attribute is not atomic across threads
        self._waiting = 0  # threads waiting to change entities: the spinning thread lets them in first
        self.changes = 0  # entity changes so far; the spinning thread starts a fresh wait set after each

    def _count_waiting(self, step: int) -> None:
        with self._count_lock:
            self._waiting += step

    @contextmanager
    def changing_entities(self) -> Iterator[None]:
        self._count_waiting(+1)
        try:
            with self._lock:
                try:
                    yield
                finally:
                    self.changes += 1  # under the gate: only one thread at a time gets here
        finally:
            self._count_waiting(-1)

    @contextmanager
    def spinning(self) -> Iterator[None]:
        while self._waiting:  # a transition is waiting: give it the gate before taking it again
            time.sleep(0.001)
        with self._lock:
            yield


class LogThrottle:
    """Admits one log line per LOG_THROTTLE_S per kind of message: its text without numbers or hex addresses,
    so that a stream of out-of-order stamps or odd sizes is one kind, not one line per value."""

    def __init__(self, period_s: float = LOG_THROTTLE_S):
        self._period_s = period_s
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}

    def admit(self, *parts: str) -> bool:
        key = "|".join(re.sub(r"0x[0-9a-fA-F]+|[-+]?\d[\d.e+-]*", "#", part)[:200] for part in parts)
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self._period_s) < self._period_s:
                return False
            if len(self._last) >= MAX_THROTTLE_KEYS:  # the texts carry sizes and names: bound the table
                self._last.clear()
            self._last[key] = now
            return True


class CallbackGuard:
    """Contains exceptions of callbacks: logged at most once per LOG_THROTTLE_S per kind, counted per callback."""

    def __init__(self, logger):
        self._logger = logger
        self._lock = threading.Lock()
        self._throttle = LogThrottle()
        self.errors: dict[str, int] = {}  # callback name -> exceptions contained
        self.last_error = ""

    @property
    def total(self) -> int:
        return sum(self.errors.values())

    def wrap(self, name: str, callback: Callable[..., Any], fallback: Optional[Callable[..., Any]] = None):
        """`callback` that never raises; after an exception it returns fallback(*args) (or None)."""

        @functools.wraps(callback)
        def guarded(*args, **kwargs):
            try:
                return callback(*args, **kwargs)
            except Exception as error:
                self.record(name, error)
                return fallback(*args, **kwargs) if fallback is not None else None

        return guarded

    def record(self, name: str, error: BaseException) -> None:
        with self._lock:
            self.errors[name] = self.errors.get(name, 0) + 1
            self.last_error = f"{name}: {type(error).__name__}: {error}"[:500]
        if not self._throttle.admit(name, type(error).__name__, str(error)):
            return
        stack = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self._logger.error(f"{name} raised (contained, the node keeps running; see diagnostics "
                           f"callback_errors): {type(error).__name__}: {error}\n{stack}")


def spin_until_shutdown(executor, gate: EntityGate, guard: CallbackGuard) -> None:
    """Spins `executor` until its context shuts down (KeyboardInterrupt and ExternalShutdownException pass
    through to the caller); what escapes a spin_once is recorded by `guard` and spinning goes on."""
    from rclpy.executors import ExternalShutdownException

    context = executor.context
    seen_changes, fresh = gate.changes, False
    while context.ok():
        try:
            with gate.spinning():
                if gate.changes != seen_changes:
                    seen_changes, fresh = gate.changes, not fresh
                # the timeout differs after an entity change: rclpy builds a new wait set (module docstring)
                executor.spin_once(timeout_sec=SPIN_PERIOD_S * (1.01 if fresh else 1.0))
        except (KeyboardInterrupt, ExternalShutdownException):
            raise
        except Exception as error:
            if not context.ok():
                return  # Ctrl-C shut the context down while a wait set was being built: not a fault
            guard.record("executor", error)


def dump_stacks_on_sigusr1() -> None:
    """`kill -USR1 <pid>` prints every thread's Python stack to stderr and the process goes on: how a user (or
    a test) sees where a node that does not stop or does not answer is waiting."""
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True, chain=False)


def spin_and_tear_down(executor, node, gate: Optional[EntityGate] = None, guard: Optional[CallbackGuard] = None,
                       start: Optional[Callable[[], None]] = None,
                       before_destroy: Optional[Callable[[], None]] = None) -> None:
    """Spins `node` on `executor` until Ctrl-C or an external shutdown, then `tear_down`. `start` runs as the
    executor's first task, so that what it does (configure) sees messages arriving as it would later. A node that
    changes entities from callbacks passes its own gate; others get a private one."""
    from rclpy.executors import ExternalShutdownException

    dump_stacks_on_sigusr1()
    gate = gate or EntityGate()
    guard = guard or CallbackGuard(node.get_logger())
    executor.add_node(node)
    if start is not None:
        executor.create_task(guard.wrap("start", start))
    try:
        spin_until_shutdown(executor, gate, guard)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        tear_down(executor, node, before_destroy=before_destroy)


def tear_down(executor, *nodes, before_destroy: Optional[Callable[[], None]] = None) -> None:
    """Ends an rclpy process's ROS side in the one safe order, for the node and every tool that spins: rclpy's signal
    thread first (see signal_teardown), then the executor (callbacks still running, e.g. an answer being waited
    for, are not waited for: destroying the node ends them), `before_destroy`, the nodes and the context."""
    import inspect

    import rclpy

    from g2vlm_ros.ros.signal_teardown import stop_rclpy_signal_handling

    # a C thread: fires even while the main thread is stuck in native code holding the GIL
    faulthandler.dump_traceback_later(TEARDOWN_LIMIT_S, exit=True, file=sys.stderr)
    stop_rclpy_signal_handling()  # first: its thread may still be about to wake this executor
    if executor is not None:
        if "wait_for_threads" in inspect.signature(executor.shutdown).parameters:  # not every executor has it
            executor.shutdown(timeout_sec=0.0, wait_for_threads=False)
        else:
            executor.shutdown(timeout_sec=0.0)
    if before_destroy is not None:
        before_destroy()
    for node in nodes:
        node.destroy_node()
    rclpy.try_shutdown()
    faulthandler.cancel_dump_traceback_later()


def end_process(code: int = 0) -> None:
    """Ends a node's process after tear_down while a model thread is still inside a window: finalizing the
    interpreter under it can abort the process (native thread pools torn down while in use). Only for that case:
    a normal exit also finalizes the DDS participant, which tells peers at once that the node's endpoints are
    gone (without it, a client of a node restarted under the same name may send its first request to the dead
    one until the participant's lease expires)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
