"""Faults, across processes: broken checkpoints and stale graphs fail `configure` with the reason, a
model that raises or runs out of memory mid-run is reported and lived with, and a subscriber that
stops reading does not slow the node down. The node process never dies and never hangs.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseArray
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from test_backends import IDS

from conftest import FIXTURES, copy_graph, wait_until
from g2vlm_interfaces.srv import Ask

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
ERROR, WARN = b"\x02", b"\x01"
FAULTY = "plugin:faulty_backend:FaultyBackend"


def fault_env(mode: str) -> dict[str, str]:
    return {"G2VLM_TEST_FAULT": mode,
            "PYTHONPATH": os.pathsep.join([str(FIXTURES), os.environ.get("PYTHONPATH", "")])}


def status(diagnostics: list, name: str):
    """The newest status called `name`, or None."""
    for array in reversed(list(diagnostics)):
        for entry in array.status:
            if entry.name == name:
                return entry
    return None


def value(entry, key: str) -> str:
    return next((kv.value for kv in entry.values if kv.key == key), "") if entry is not None else ""


# --- broken models fail configure, with the reason everywhere a user looks ------------------------------------

def truncated_weights(folder):
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def wrong_shapes(folder):
    config = json.loads((folder / "text_config.json").read_text())
    config["intermediate_size"] += 8  # the checkpoint's MLP tensors no longer fit the configured model
    (folder / "text_config.json").write_text(json.dumps(config))


def no_weights(folder):
    (folder / "model.safetensors").unlink()


@pytest.mark.parametrize("damage, reason", [
    (truncated_weights, "is not a valid safetensors file"),
    (wrong_shapes, "tensors with the wrong shape"),
    (no_weights, "no model.safetensors"),
])
def test_a_broken_checkpoint_fails_configure_with_the_reason_and_the_node_stays_up(
        start_node, ros_client, tiny_checkpoint, tmp_path, camera, damage, reason):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "token_ids.json").write_text(json.dumps(IDS))
    damage(folder)
    cam = camera()
    diagnostics = ros_client.collect(DiagnosticArray, "/diagnostics", RELIABLE)
    node = start_node(backend="torch", device="cpu", checkpoint_path=str(folder), cameras=[cam.name])
    assert "configure failed" in node.log() and reason in node.log()
    wait_until(lambda: status(diagnostics, "g2vlm: model") is not None
               and status(diagnostics, "g2vlm: model").level == ERROR
               and reason in status(diagnostics, "g2vlm: model").message, 10, "no ERROR diagnostics with the reason")
    response = ros_client.call(Ask, "/g2vlm/ask", Ask.Request(question="What is the depth at (10, 10)?"))
    assert not response.success and reason in response.error
    assert node.alive()


def test_graphs_exported_from_another_checkpoint_are_refused_with_the_reason(start_node, ros_client, tiny_checkpoint,
                                                                             tiny_graph, tmp_path, camera):
    from g2vlm_ros.deploy.export import checkpoint_fingerprint
    from g2vlm_ros.model import tiny_config, write_random_checkpoint

    engines = tmp_path / "engines"
    copy_graph(tiny_graph, engines)  # tiny_checkpoint's graph (exported once for the session), in a folder of its own
    other = write_random_checkpoint(tiny_config(num_heads=2, num_kv_heads=1), tmp_path / "other", seed=8)
    node = start_node(backend="onnxruntime", device="cpu", checkpoint_path=str(other), engine_dir=str(engines),
                      cameras=[camera().name])
    assert "configure failed" in node.log()
    log = node.log()
    assert "exported from another checkpoint" in log and checkpoint_fingerprint(tiny_checkpoint)[:12] in log
    assert node.alive()


# --- a model that fails mid-run ---------------------------------------------------------------------------------

def test_a_backend_raising_mid_run_is_reported_and_the_other_windows_go_on(start_node, ros_client, camera):
    cam = camera()
    diagnostics = ros_client.collect(DiagnosticArray, "/diagnostics", RELIABLE)
    depth = ros_client.collect(Image, f"/g2vlm/{cam.name}/depth_relative", RELIABLE)
    node = start_node(backend=FAULTY, cameras=[cam.name], input_qos="reliable", window_size=1,
                      extra_env=fault_env("every_third"))
    wait_until(lambda: len(depth) >= 12, 20, f"{len(depth)} depth images: the windows between failures stopped")
    inference = wait_until(lambda: (entry := status(diagnostics, "g2vlm: inference")) and int(
        value(entry, "windows_failed") or 0) >= 3 and entry, 10, "failed windows not counted")
    assert "scripted failure" in value(inference, "last_error")
    assert int(value(inference, "windows_processed")) >= 2 * int(value(inference, "windows_failed")) - 2
    assert "inference failed on a window of 1 frames: RuntimeError: scripted failure" in node.log()
    assert node.alive()


def test_a_backend_failing_every_window_turns_the_status_to_error(start_node, ros_client, camera):
    cam = camera()
    diagnostics = ros_client.collect(DiagnosticArray, "/diagnostics", RELIABLE)
    node = start_node(backend=FAULTY, cameras=[cam.name], input_qos="reliable", extra_env=fault_env("always"))
    wait_until(lambda: (entry := status(diagnostics, "g2vlm: inference")) and entry.level == ERROR
               and "windows failed" in entry.message, 15, "no ERROR status for a model that always fails")
    failures = node.log().count("inference failed")
    time.sleep(3)
    assert node.log().count("inference failed") - failures <= 3  # throttled to one line per 2 s, not 10 a second
    response = ros_client.call(Ask, "/g2vlm/ask", Ask.Request(question="What is the depth at (10, 10)?"))
    assert not response.success and "no perception window" in response.error
    assert node.alive()


def test_out_of_memory_reduces_the_window_and_keeps_the_limit(start_node, ros_client, camera):
    cam = camera()
    diagnostics = ros_client.collect(DiagnosticArray, "/diagnostics", RELIABLE)
    windows = ros_client.collect(PoseArray, "/g2vlm/poses", RELIABLE)  # every view of each window
    node = start_node(backend=FAULTY, cameras=[cam.name], input_qos="reliable", window_size=4,
                      extra_env=fault_env("oom_above_2"))
    wait_until(lambda: len(windows) >= 5, 20, "no outputs after running out of memory")
    assert all(len(window.poses) == 2 for window in windows)  # windows of the 2 newest keyframes, the most that fit
    inference = wait_until(lambda: (entry := status(diagnostics, "g2vlm: inference")) and value(
        entry, "keyframe_limit") == "2" and entry, 10, "the keyframe limit is not in diagnostics")
    assert inference.level == WARN and "limited to 2 keyframe(s)" in inference.message
    assert int(value(inference, "out_of_memory_events")) == 2  # 4 -> 3 -> 2 once, then the limit holds
    assert "out of memory on a window of 4 views" in node.log() and "retrying with 2" in node.log()


def test_out_of_memory_with_skip_window_drops_windows_and_says_so(start_node, ros_client, camera):
    cam = camera()
    diagnostics = ros_client.collect(DiagnosticArray, "/diagnostics", RELIABLE)
    windows = ros_client.collect(PoseArray, "/g2vlm/poses", RELIABLE)
    node = start_node(backend=FAULTY, cameras=[cam.name], input_qos="reliable", window_size=4,
                      out_of_memory_policy="skip_window", extra_env=fault_env("oom_above_2"))
    wait_until(lambda: (entry := status(diagnostics, "g2vlm: inference")) and entry.level == ERROR
               and "OutOfMemoryError" in entry.message, 15, "skipped out-of-memory windows are not an error")
    assert not windows and node.alive()


# --- a subscriber that stops reading ----------------------------------------------------------------------------

STALLING_SUBSCRIBER = """
import sys, rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, PointCloud2
rclpy.init()
node = rclpy.create_node("stalling_subscriber")
qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
got = []
node.create_subscription(PointCloud2, "/g2vlm/points", got.append, qos)
node.create_subscription(Image, sys.argv[1], got.append, qos)
while len(got) < 2:
    rclpy.spin_once(node, timeout_sec=0.1)
print("receiving", flush=True)
while True:
    rclpy.spin_once(node, timeout_sec=0.1)
"""


def test_a_subscriber_that_stops_reading_does_not_slow_the_node(start_node, ros_client, camera):
    cam = camera(rate_hz=10.0)
    depth_topic = f"/g2vlm/{cam.name}/depth_relative"
    depth = ros_client.collect(Image, depth_topic, RELIABLE)
    node = start_node(backend="placeholder", cameras=[cam.name], input_qos="reliable")
    stalled = subprocess.Popen([sys.executable, "-c", STALLING_SUBSCRIBER, depth_topic], stdout=subprocess.PIPE,
                               text=True, env=os.environ.copy())
    try:
        assert stalled.stdout.readline().strip() == "receiving"

        def rate_over(seconds: float) -> float:
            start_count, start = len(depth), time.monotonic()
            time.sleep(seconds)
            return (len(depth) - start_count) / (time.monotonic() - start)

        before = rate_over(4.0)
        stalled.send_signal(signal.SIGSTOP)  # its DDS threads freeze too: no acknowledgements, no reading
        time.sleep(1.0)
        during = rate_over(6.0)
        print(f"depth rate to a healthy subscriber: {before:.1f} Hz before, {during:.1f} Hz with a stalled one")
        # a publisher held back by the frozen reader would drop to ~0; the margin absorbs the rate noise of a
        # loaded machine (both rates are measured in this run)
        assert before > 0 and during > 0.5 * before
        assert node.alive()
    finally:
        stalled.send_signal(signal.SIGCONT)
        stalled.kill()
        stalled.wait(10)


def test_ctrl_c_with_a_window_in_flight_exits_cleanly_and_reports_no_failure(start_node, ros_client, camera):
    """The signal handler shuts the context down while the model still runs: the window's publish then
    fails, and that is the shutdown, not an inference failure to report (exit code 0, no error line)."""
    cam = camera()
    depth = ros_client.collect(Image, f"/g2vlm/{cam.name}/depth_relative", RELIABLE)
    node = start_node(backend=FAULTY, cameras=[cam.name], input_qos="reliable", extra_env=fault_env("slow_1.5"))
    wait_until(lambda: depth, 20, "no output from the slow backend")
    time.sleep(0.5)  # the next window is in the model now (1.5 s each, frames at 10 Hz)
    assert node.stop(timeout_s=30) == 0, node.log()
    assert "inference failed" not in node.log() and "Traceback" not in node.log(), node.log()


@pytest.fixture(scope="session")
def slow_signal_thread(tmp_path_factory) -> Path:
    """test/fixtures/slow_signal_thread.c as a shared library, to LD_PRELOAD into a node."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("needs a C compiler")
    library = tmp_path_factory.mktemp("slow_signal_thread") / "slow_signal_thread.so"
    built = subprocess.run([compiler, "-shared", "-fPIC", "-O1", "-o", str(library),
                            str(FIXTURES / "slow_signal_thread.c"), "-ldl"], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    return library


def test_ctrl_c_waits_for_rclpy_signal_thread_before_destroying_the_executor(start_node, slow_signal_thread):
    """rclpy's signal thread, scheduled late, triggers the executor's guard condition after the main thread
    has begun teardown: the node must wait for that thread, not free what it triggers. Here the thread
    sleeps 3 s before triggering while the main thread wakes within 1 s (the diagnostics timer) and sees its
    KeyboardInterrupt. Without the wait this crashed (SIGSEGV) or logged a failed trigger."""
    node = start_node(backend="placeholder", diagnostics_period_s=1.0,
                      extra_env={"LD_PRELOAD": str(slow_signal_thread), "SLOW_SIGNAL_THREAD_MS": "3000"})
    time.sleep(0.5)  # spinning
    code = node.stop(timeout_s=30)
    log = node.log()
    assert code == 0 and "Fatal Python error" not in log and "rcl_trigger_guard_condition() failed" not in log, log
    assert "slow_signal_thread: trigger delayed" in log, log  # the shim ran in rclpy's signal thread


def test_after_teardown_starts_a_further_ctrl_c_exits_at_once():
    """Teardown may wait for a window in flight; a user pressing Ctrl-C again gets the process ended."""
    script = ("import os, signal, time, rclpy\n"
              "from g2vlm_ros.ros.signal_teardown import stop_rclpy_signal_handling\n"
              "rclpy.init()\n"
              "stop_rclpy_signal_handling()\n"
              "os.kill(os.getpid(), signal.SIGINT)\n"
              "time.sleep(10)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 128 + signal.SIGINT, done.stderr
    assert "Ctrl-C during shutdown: exiting without cleanup" in done.stderr
