"""End-to-end demo: the perception node on a camera player, with a printed report and previews.

  make demo                                           # a synthetic room and the embedded demo model
  make demo DEMO_ARGS="../shared/data/arkitscenes"    # a folder of images, a video or a rosbag2/MCAP
  python -m g2vlm_ros.cli.demo [SOURCE] [--seconds 20] [--window 4] [--checkpoint DIR] [--output DIR]

Starts perception_node and `play SOURCE` as separate processes on a private loopback DDS domain,
waits for the first outputs, measures topic rates and latency, asks one question through
/g2vlm/ask, and prints a report. Then it writes to --output (default demo_output/):
  depth.png        the camera image beside its predicted depth, with a colour bar in the depth's unit
  confidence.png   the camera image beside the per-pixel confidence
  points.ply       the newest window's point cloud with colours
  topdown.png      that cloud seen from above, with the cameras and their path
  node.log, player.log
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
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from g2vlm_ros.cli.demo_map import InputLog, SyntheticTruth, pose_matrix, write_map_report
from g2vlm_ros.playback.frames import SYNTHETIC_SEED

CAMERA = "camera"
QUESTION = "How much free space is straight ahead of the camera?"  # a form the geometric answerer grounds
FIRST_OUTPUT_TIMEOUT_S = 240.0  # model load plus the first window on a slow 2-core machine
KEPT_STAMPS = 64  # recent messages kept per topic, to pair a window's outputs and its input by stamp


def isolated_ros_environment(domain_id: Optional[int] = None) -> dict[str, str]:
    """Loopback-only DDS on `domain_id` or a random domain, so the demo never talks to a robot on the network."""
    env = os.environ.copy()
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["ROS_DOMAIN_ID"] = str(random.randint(1, 100) if domain_id is None else domain_id)
    env.pop("RMW_IMPLEMENTATION", None)
    profile = Path(__file__).resolve().parents[2] / "config" / "fastdds_large_shm.xml"
    if profile.exists():
        env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(profile))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def banner(text: str) -> None:
    line = "=" * 78
    print(f"\n{line}\n{text}\n{line}", flush=True)


@dataclass
class CameraSource:
    """Where the demo's camera comes from and how the node must subscribe to it."""

    image_topic: str
    transport: str  # raw | compressed
    camera_info_topic: str  # "" when the source has none
    player_args: list[str]


def camera_source(source: str) -> CameraSource:
    """Synthetic, a folder or a video play as /camera/...; a bag plays as recorded (its first camera)."""
    from g2vlm_ros.playback.bag import Recording, is_bag

    if not is_bag(Path(source)):
        return CameraSource(f"/{CAMERA}/image_raw", "raw", f"/{CAMERA}/camera_info",
                            [source, "--camera", CAMERA])
    with Recording(Path(source)) as recording:
        streams = recording.camera_streams()
    if not streams:
        raise ValueError(f"{source} has no sensor_msgs/Image or CompressedImage topic")
    first = streams[0]
    return CameraSource(first.image_topic, first.transport, first.camera_info_topic, [source, "--loop"])


class Monitor:
    """Counts messages per output and keeps the recent ones by stamp."""

    def __init__(self, node, camera: CameraSource, inputs=None):
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseArray
        from nav_msgs.msg import Path as PathMsg
        from sensor_msgs.msg import CompressedImage, Image, PointCloud2

        self.node = node
        self.lock = threading.Lock()
        self.arrivals: dict[str, list[float]] = {}  # monotonic arrival times: counts and rates
        self.recent: dict[str, OrderedDict] = {}
        self.latency_ms: list[float] = []
        self.diagnostics: dict[str, object] = {}
        self.inputs = inputs  # demo_map.InputLog: which image each stamp was, to find keyframes' true poses
        self.topics = {
            "input": (CompressedImage if camera.transport == "compressed" else Image, camera.image_topic),
            "depth": (Image, f"/g2vlm/{CAMERA}/depth"),
            "depth_relative": (Image, f"/g2vlm/{CAMERA}/depth_relative"),
            "confidence": (Image, f"/g2vlm/{CAMERA}/confidence"),
            "points": (PointCloud2, "/g2vlm/points"),
            "poses": (PoseArray, "/g2vlm/poses"),
            "path": (PathMsg, "/g2vlm/path"),
            "map": (PointCloud2, "/g2vlm/map"),
        }
        for key, (message_type, topic) in self.topics.items():
            node.create_subscription(message_type, topic, lambda msg, k=key: self._on(k, msg), 10)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on(self, key: str, msg) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        if key == "input" and self.inputs is not None:
            self.inputs.record(stamp, camera_rgb(msg))
        with self.lock:
            self.arrivals.setdefault(key, []).append(time.monotonic())
            kept = self.recent.setdefault(key, OrderedDict())
            kept[stamp] = msg
            while len(kept) > KEPT_STAMPS:
                kept.popitem(last=False)
            if key in ("depth", "depth_relative"):
                self.latency_ms.append((self.node.get_clock().now().nanoseconds - stamp) / 1e6)

    def _on_diagnostics(self, msg) -> None:
        with self.lock:
            for status in msg.status:
                self.diagnostics[status.name] = status

    def rate_hz(self, key: str, since: float) -> float:
        """Messages per second between the first and the last arrival after `since` (0 if < 2)."""
        with self.lock:
            times = [t for t in self.arrivals.get(key, []) if t >= since]
        return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0

    def count(self, key: str) -> int:
        with self.lock:
            return len(self.arrivals.get(key, ()))

    def outputs(self) -> int:
        return self.count("depth") + self.count("depth_relative")

    def newest(self, key: str):
        with self.lock:
            kept = self.recent.get(key)
            return next(reversed(kept.items())) if kept else (None, None)

    def at(self, key: str, stamp: int):
        with self.lock:
            return self.recent.get(key, {}).get(stamp)

    def status_value(self, status_name: str, key: str) -> Optional[str]:
        with self.lock:
            status = self.diagnostics.get(status_name)
        return next((kv.value for kv in status.values if kv.key == key), None) if status else None


MIN_MEASURED_OUTPUTS = 3  # depth images, so that a rate spans at least two intervals


def spin_for(executor, seconds: float, done=lambda: False) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not done():
        executor.spin_once(timeout_sec=0.05)


def node_command(args: argparse.Namespace, camera: CameraSource) -> list[str]:
    lib = Path(sys.prefix) / "lib" / "g2vlm_ros"
    parameters = {
        "cameras": f"[{CAMERA}]", f"{CAMERA}.image_topic": camera.image_topic,
        f"{CAMERA}.transport": camera.transport, f"{CAMERA}.camera_info_topic": camera.camera_info_topic or "''",
        "backend": args.backend, "window_size": str(args.window), "max_rate_hz": str(args.max_rate),
    }
    if args.checkpoint:
        parameters["checkpoint_path"] = args.checkpoint
    command = [str(lib / "perception_node"), "--ros-args"]
    for name, value in parameters.items():
        command += ["-p", f"{name}:={value}"]
    return command


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    for process in processes:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run(args: argparse.Namespace) -> int:
    env = isolated_ros_environment(args.ros_domain_id)
    os.environ.update(env)
    try:
        camera = camera_source(args.source)
    except (ValueError, OSError) as error:
        print(f"demo: {error}", file=sys.stderr)
        return 2
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from g2vlm_interfaces.srv import Ask
    from g2vlm_ros.backends.registry import PLACEHOLDER_BACKEND, RENAMED_BACKENDS
    from g2vlm_ros.ros.spin import tear_down

    if RENAMED_BACKENDS.get(args.backend, args.backend) == PLACEHOLDER_BACKEND:
        banner("DEMO WITH THE PLACEHOLDER BACKEND: depth = 1 + image brightness, poses are fixed.\n"
               "The ROS plumbing is real, the geometry is not.")
    print(f"camera source: {args.source} -> {camera.image_topic} ({camera.transport})", flush=True)
    player_cmd = [sys.executable, "-m", "g2vlm_ros.cli.play", *camera.player_args, "--wait-for-subscriber", "600",
                  "--subscribers", "2"]  # the node and this monitor: which input a keyframe was needs every frame
    if args.rate:
        player_cmd += ["--rate", str(args.rate)]
    args.output.mkdir(parents=True, exist_ok=True)
    logs = {name: open(args.output / f"{name}.log", "w") for name in ("node", "player")}
    processes = [
        subprocess.Popen(node_command(args, camera), env=env, stdout=logs["node"], stderr=subprocess.STDOUT),
        subprocess.Popen(player_cmd, env=env, stdout=logs["player"], stderr=subprocess.STDOUT),
    ]
    rclpy.init()
    client = rclpy.create_node("g2vlm_demo_monitor")
    executor = SingleThreadedExecutor()
    executor.add_node(client)
    inputs = InputLog()
    monitor = Monitor(client, camera, inputs)
    started = time.monotonic()
    try:
        print("waiting for the node's first outputs (model load and first window) ...", flush=True)
        spin_for(executor, FIRST_OUTPUT_TIMEOUT_S,
                 done=lambda: monitor.outputs() > 0 or any(p.poll() is not None for p in processes))
        if not monitor.outputs():
            tail = (args.output / "node.log").read_text(errors="replace").splitlines()[-15:]
            print(f"no depth output after {time.monotonic() - started:.0f} s; the node's log ends with:\n  "
                  + "\n  ".join(tail) + f"\n(all of it in {args.output}/node.log, the player's in "
                  f"{args.output}/player.log)", file=sys.stderr)
            return 1
        print(f"first depth after {time.monotonic() - started:.1f} s; measuring for {args.seconds:g} s ...",
              flush=True)
        start = time.monotonic() - 1.0  # the first window's outputs (they arrive together) count too
        spin_for(executor, args.seconds)
        # a slow (or busy) machine may finish fewer windows than that: measure until a rate can be given
        spin_for(executor, FIRST_OUTPUT_TIMEOUT_S, done=lambda: monitor.outputs() >= MIN_MEASURED_OUTPUTS)
        args.measured_s = time.monotonic() - start
        rates = {key: monitor.rate_hz(key, start) for key in monitor.topics}
        ask = client.create_client(Ask, "/g2vlm/ask")
        response = None
        if ask.wait_for_service(timeout_sec=10.0):
            future = ask.call_async(Ask.Request(question=args.question))
            spin_for(executor, 30.0, done=future.done)
            response = future.result() if future.done() else None
        spin_for(executor, 1.5)  # the newest diagnostics
    except KeyboardInterrupt:
        print("demo: interrupted; stopping the node and the player", file=sys.stderr)
        return 130
    finally:
        tear_down(executor, client)  # first: the safe order for rclpy (see spin.tear_down)
        stop(processes)
        for log in logs.values():
            log.close()

    report(args, monitor, rates, response)
    truth = SyntheticTruth(SYNTHETIC_SEED) if args.source == "synthetic" else None
    unit = "m" if monitor.count("depth") else "relative"
    for line in write_map_report(monitor.newest("path")[1], monitor.newest("map")[1], inputs, truth, unit,
                                 args.output):
        print(line, flush=True)
    written = write_previews(monitor, args.output)
    print("  previews:\n" + "\n".join(f"    {path}" for path in written), flush=True)
    return 0


def report(args, monitor: Monitor, rates: dict[str, float], response) -> None:
    banner("g2vlm demo report")
    backend = monitor.status_value("g2vlm: model", "backend") or "unknown"
    checkpoint = monitor.status_value("g2vlm: model", "checkpoint") or args.checkpoint or "-"
    print(f"  model: {backend}, checkpoint: {checkpoint}")
    print(f"  source: {args.source}; window: {args.window} view(s)")
    print(f"  topic rates over {args.measured_s:.1f} s:")
    for key, (_, topic) in monitor.topics.items():
        if monitor.count(key):
            print(f"    {topic:<42s} {rates[key]:6.2f} Hz")
    latency = np.array(monitor.latency_ms[1:] or monitor.latency_ms)  # the first includes warm-up
    print(f"  latency, image stamp -> depth received: p50 {np.median(latency):.0f} ms, "
          f"p95 {np.percentile(latency, 95):.0f} ms, max {latency.max():.0f} ms ({len(latency)} windows)")
    p50 = monitor.status_value("g2vlm: inference", "latency_p50_ms")
    if p50 is not None:
        print(f"  inference in the node: p50 {float(p50):.0f} ms, "
              f"p95 {float(monitor.status_value('g2vlm: inference', 'latency_p95_ms')):.0f} ms; windows dropped "
              f"(newer input replaced them): {monitor.status_value('g2vlm: inference', 'windows_dropped')}")
    print(f"  /g2vlm/ask: {args.question!r}")
    if response is None:
        print("    no response")
    elif response.success:
        print(f"    answer: {response.answer}\n    value: {response.value:.3f} {response.unit}")
        for line in response.reasoning.splitlines():
            print(f"    reasoning: {line}")
    else:
        print(f"    not answered: {response.error}")


def camera_rgb(msg) -> Optional[np.ndarray]:
    from sensor_msgs.msg import CompressedImage

    from g2vlm_ros.ros.conversions import ImageConversionError, compressed_to_rgb, image_to_rgb

    if msg is None:
        return None
    try:
        return compressed_to_rgb(msg) if isinstance(msg, CompressedImage) else image_to_rgb(msg)
    except ImageConversionError:
        return None


def write_previews(monitor: Monitor, output: Path) -> list[Path]:
    """depth.png, confidence.png (with the camera image of the same stamp), points.ply, topdown.png."""
    from g2vlm_ros.cli.previews import confidence_preview, depth_preview, save_ply, save_png
    from g2vlm_ros.cli.topdown import render_topdown
    from g2vlm_ros.ros.conversions import image_to_numpy_float, unpack_point_cloud, unpack_rgb_float

    written = []
    metric = monitor.count("depth") > 0
    stamp, depth_msg = monitor.newest("depth" if metric else "depth_relative")
    unit = "m" if metric else "relative"
    depth = image_to_numpy_float(depth_msg)
    rgb = camera_rgb(monitor.at("input", stamp))
    if rgb is None:  # the input frame was not kept (e.g. a compressed frame that did not decode)
        rgb = np.zeros(depth.shape + (3,), np.uint8)
    what = "metres" if metric else "relative units: G2VLM is up to scale, and no metric scale source is configured"
    written.append(save_png(depth_preview(rgb, depth, unit, f"camera image | predicted depth (near = dark), in {what}"),
                            output / "depth.png"))
    confidence = monitor.at("confidence", stamp)
    if confidence is not None:
        source = monitor.status_value("g2vlm: inference", "confidence_source") or "model"
        meaning = ("the model's two point heads agree (1) or not (0)" if source == "head_agreement"
                   else "the model's confidence head")
        written.append(save_png(confidence_preview(rgb, image_to_numpy_float(confidence),
                                                   f"camera image | confidence: {meaning}"),
                                output / "confidence.png"))
    cloud_stamp, cloud_msg = monitor.newest("points")
    poses = monitor.at("poses", cloud_stamp)  # the same window's views
    if cloud_msg is not None:
        cloud = unpack_point_cloud(cloud_msg)
        xyz = np.stack([cloud["x"], cloud["y"], cloud["z"]], axis=-1).astype(np.float64)
        colors = unpack_rgb_float(cloud["rgb"])
        written.append(save_ply(xyz, colors, output / "points.ply"))
        if poses is not None and poses.poses:
            camera_to_world = np.stack([pose_matrix(p) for p in poses.poses])
            caption = (f"the newest window's cloud from above ({len(xyz)} points, {unit} units) and its "
                       f"{len(poses.poses)} cameras in time order,\nthe newest filled; points well above the "
                       f"cameras (the ceiling) are left out")
            written.append(save_png(render_topdown(xyz, colors, camera_to_world, unit, caption),
                                    output / "topdown.png"))
    return written


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("source", nargs="?", default="synthetic",
                        help="synthetic (default) | folder of images | video file | rosbag2 folder, .mcap or .db3")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to measure rates")
    parser.add_argument("--rate", type=float, default=2.0, help="camera frames per second (bags: as recorded)")
    parser.add_argument("--window", type=int, default=4, help="views per inference (keyframes + newest)")
    parser.add_argument("--max-rate", type=float, default=10.0, help="node max_rate_hz")
    parser.add_argument("--backend", default="auto", help="node backend: auto runs the checkpoint, or the "
                        "embedded demo model without one")
    parser.add_argument("--checkpoint", default="", help="G2VLM checkpoint folder (default: the embedded demo model)")
    parser.add_argument("--question", default=QUESTION, help="asked through /g2vlm/ask")
    parser.add_argument("--output", type=Path, default=Path("demo_output"), help="where previews and logs go")
    parser.add_argument("--ros-domain-id", type=int, default=None,
                        help="DDS domain of the demo's processes (default: a random one of 1-100, loopback only)")
    args = parser.parse_args(argv)
    from g2vlm_ros.playback.bag import is_bag

    if is_bag(Path(args.source)):
        args.rate = None
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
