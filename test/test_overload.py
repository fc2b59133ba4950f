"""Overload, end to end: a synthetic robot process publishes faster than the node's model can run.

The node runs the SceneBackend plugin with an artificial inference time; the newest window must
win, older ones must be dropped and counted, and output latency must stay bounded.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image

from conftest import wait_until
from test_scale_sources import SCENE_BACKEND, names, scene_env


def test_overload_drops_old_windows_and_keeps_latency_bounded(start_node, start_robot, ros_client, tf2_msgs_env):
    """Images at 20 Hz into a model that needs 0.3 s: the node must skip windows, not queue them."""
    cameras = names(1)
    delay_s = 0.3
    start_node(backend=SCENE_BACKEND, cameras=cameras, max_rate_hz=100.0,
               extra_env=scene_env(tf2_msgs_env, delay_s=delay_s))
    arrivals: list[tuple[float, float]] = []  # (latency s, arrival s)

    def on_depth(msg: Image) -> None:
        now = time.time()
        arrivals.append((now - (msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9), now))

    ros_client.node.create_subscription(Image, f"/g2vlm/{cameras[0]}/depth_relative", on_depth, 10)
    diagnostics = ros_client.collect(DiagnosticArray, "/diagnostics")
    start_robot(cameras=cameras, rate_hz=20.0)
    wait_until(lambda: len(arrivals) >= 15, 30, "too few outputs under load")

    latencies = np.array([latency for latency, _ in arrivals])
    # a frame waits at most one inference for the worker, then one inference for itself
    assert latencies.max() < 2 * delay_s + 0.4, f"latency {latencies.max():.2f} s is not bounded"
    third = len(latencies) // 3
    assert latencies[-third:].mean() < latencies[:third].mean() + 0.15, "latency grows: windows are queueing"
    period = np.diff([arrival for _, arrival in arrivals]).mean()
    assert period == pytest.approx(delay_s, rel=0.35), "the model should be kept busy, one window at a time"

    def inference_counter(key: str) -> int:
        values = [int(kv.value) for array in diagnostics for status in array.status
                  if status.name == "g2vlm: inference" for kv in status.values if kv.key == key]
        return max(values, default=0)

    # diagnostics come once a second, so they may lag the outputs counted above
    wait_until(lambda: inference_counter("windows_dropped") > 10 and inference_counter("windows_processed") >= 15,
               10, "processed and dropped windows are not counted")
