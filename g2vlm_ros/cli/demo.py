"""End-to-end demo: node + camera player + a monitoring client, with a printed report and previews.

  demo [--images FOLDER] [--seconds 10] [--backend test_pattern] [--output demo_output]

Starts the perception node and an image player as separate processes on a private loopback DDS
domain, listens to the outputs, asks one question through /g2vlm/ask, prints topic rates,
latency and the answer, and writes a colour-mapped depth PNG and a PLY of the cloud.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

REPO_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "arkitscenes"
CAMERA = "camera"
QUESTION = "How much free space is straight ahead of the camera?"  # a form the geometric answerer grounds


def isolated_ros_environment() -> dict[str, str]:
    """Loopback-only DDS on a random domain, so the demo never talks to a robot on the network."""
    env = os.environ.copy()
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["ROS_DOMAIN_ID"] = str(random.randint(1, 100))
    env.pop("RMW_IMPLEMENTATION", None)
    profile = Path(__file__).resolve().parents[2] / "config" / "fastdds_large_shm.xml"
    if profile.exists():
        env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(profile))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def banner(text: str) -> None:
    line = "=" * 78
    print(f"\n{line}\n{text}\n{line}", flush=True)


class Monitor:
    """Counts messages and keeps the latest of each output topic."""

    def __init__(self, node, metric: bool):
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import Image, PointCloud2

        self.node = node
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.latest: dict[str, object] = {}
        self.latency_ms: list[float] = []
        depth_topic = f"/g2vlm/{CAMERA}/depth" if metric else f"/g2vlm/{CAMERA}/depth_relative"
        self.topics = {
            "depth": (Image, depth_topic), "points": (PointCloud2, "/g2vlm/points"),
            "pose": (PoseStamped, f"/g2vlm/{CAMERA}/pose"), "diagnostics": (DiagnosticArray, "/diagnostics"),
        }
        for key, (message_type, topic) in self.topics.items():
            node.create_subscription(message_type, topic, lambda msg, k=key: self._on(k, msg), 10)

    def _on(self, key: str, msg) -> None:
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1
            self.latest[key] = msg
            if key == "depth":
                now = self.node.get_clock().now().nanoseconds
                stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                self.latency_ms.append((now - stamp) / 1e6)


def spin_for(executor, seconds: float, done=lambda: False) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not done():
        executor.spin_once(timeout_sec=0.05)


def run(args: argparse.Namespace) -> int:
    env = isolated_ros_environment()
    os.environ.update(env)
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from g2vlm_interfaces.srv import Ask
    from g2vlm_ros.cli.previews import colorize, save_ply, save_png
    from g2vlm_ros.ros.conversions import image_to_numpy_float, unpack_point_cloud, unpack_rgb_float

    if args.backend == "test_pattern":
        banner("DEMO WITH THE TEST PATTERN BACKEND: this build ships no trained model yet.\n"
               "Depth = 1 + image brightness, poses are fixed: the ROS plumbing is real, the geometry is not.")
    images = args.images if args.images else (REPO_DATA if REPO_DATA.is_dir() else None)
    source = ["--folder", str(images)] if images else ["--synthetic"]
    print(f"camera source: {images or 'synthetic frames'}", flush=True)

    lib = Path(sys.prefix) / "lib" / "g2vlm_ros"
    node_cmd = [str(lib / "perception_node"), "--ros-args", "-p", f"cameras:=[{CAMERA}]",
                "-p", f"backend:={args.backend}", "-p", f"max_rate_hz:={args.rate}"]
    if args.checkpoint:
        node_cmd += ["-p", f"checkpoint_path:={args.checkpoint}"]
    player_cmd = [sys.executable, "-m", "g2vlm_ros.cli.play_images", *source, "--camera", CAMERA,
                  "--rate", str(args.rate)]
    args.output.mkdir(parents=True, exist_ok=True)
    logs = {name: open(args.output / f"{name}.log", "w") for name in ("node", "player")}
    processes = [
        subprocess.Popen(node_cmd, env=env, stdout=logs["node"], stderr=subprocess.STDOUT),
        subprocess.Popen(player_cmd, env=env, stdout=logs["player"], stderr=subprocess.STDOUT),
    ]
    rclpy.init()
    client = rclpy.create_node("g2vlm_demo_monitor")
    executor = SingleThreadedExecutor()
    executor.add_node(client)
    monitor = Monitor(client, metric=False)
    try:
        print("waiting for the first outputs ...", flush=True)
        spin_for(executor, 60.0, done=lambda: monitor.counts.get("depth", 0) > 0)
        if not monitor.counts.get("depth"):
            print(f"no depth output within 60 s; see {args.output / 'node.log'}", file=sys.stderr)
            return 1
        start_counts, start = dict(monitor.counts), time.monotonic()
        spin_for(executor, args.seconds)
        elapsed = time.monotonic() - start
        ask = client.create_client(Ask, "/g2vlm/ask")
        ask.wait_for_service(timeout_sec=5.0)
        future = ask.call_async(Ask.Request(question=QUESTION))
        spin_for(executor, 15.0, done=future.done)
        response = future.result()
    finally:
        for process in processes:
            process.send_signal(signal.SIGINT)
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in logs.values():
            log.close()

    banner("g2vlm demo report")
    for key, (_, topic) in monitor.topics.items():
        rate = (monitor.counts.get(key, 0) - start_counts.get(key, 0)) / elapsed
        print(f"  {topic:<40s} {rate:6.2f} Hz")
    latency = np.array(monitor.latency_ms[-50:])
    print(f"  image stamp -> depth received latency: p50 {np.median(latency):.1f} ms, "
          f"max {latency.max():.1f} ms (last {len(latency)} frames)")
    print(f"  /g2vlm/ask: '{QUESTION}'")
    if response is None:
        print("    no response within 15 s")
    elif response.success:
        print(f"    answer: {response.answer}  value: {response.value} {response.unit}")
    else:
        print(f"    not answered: {response.error}")

    depth = image_to_numpy_float(monitor.latest["depth"])
    cloud = unpack_point_cloud(monitor.latest["points"])
    xyz = np.stack([cloud["x"], cloud["y"], cloud["z"]], axis=-1)
    written = [
        save_png(colorize(depth), args.output / "depth.png"),
        save_ply(xyz, unpack_rgb_float(cloud["rgb"]), args.output / "points.ply"),
    ]
    print("  previews: " + ", ".join(str(path) for path in written))
    rclpy.try_shutdown()
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, help="folder of camera images (default: example frames or synthetic)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to measure rates")
    parser.add_argument("--rate", type=float, default=5.0, help="camera frames per second")
    parser.add_argument("--backend", default="test_pattern", help="node backend (see config/g2vlm.yaml)")
    parser.add_argument("--checkpoint", default="", help="checkpoint folder for model backends")
    parser.add_argument("--output", type=Path, default=Path("demo_output"), help="where previews and logs go")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
