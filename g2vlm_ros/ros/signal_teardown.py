"""Teardown after Ctrl-C that rclpy's own signal thread cannot crash.

On SIGINT, rclpy's signal handler wakes a thread of its own, which triggers the wake-up guard condition of
every executor (reading their list without a lock) and then shuts the contexts down. The main thread sees
its KeyboardInterrupt independently, as soon as any message wakes the executor, and may destroy the
executor, and that guard condition with it, while the signal thread is still about to trigger it. When
that thread is scheduled late (a busy machine), this is a use after free: SIGSEGV in
rcl_trigger_guard_condition, seen in CI and in about 1 of 250 node stops in test loops on a 2-core machine
(Humble, Jazzy and Kilted share this code). Uninstalling rclpy's handlers joins that thread, so teardown
starts only after it is done.
"""
from __future__ import annotations

import os
import signal
import sys

SECOND_SIGINT_EXIT_CODE = 128 + signal.SIGINT


def stop_rclpy_signal_handling() -> None:
    """Waits for rclpy's signal thread to finish, then lets a second Ctrl-C end the process at once (teardown
    can wait for a window in flight, and a user pressing Ctrl-C again means it). Call before destroying
    executors; safe when rclpy installed no handlers."""
    from rclpy.signals import uninstall_signal_handlers

    uninstall_signal_handlers()
    signal.signal(signal.SIGINT, _exit_without_cleanup)


def _exit_without_cleanup(signum, frame) -> None:
    sys.stderr.write("Ctrl-C during shutdown: exiting without cleanup\n")
    sys.stderr.flush()
    os._exit(SECOND_SIGINT_EXIT_CODE)
