#!/usr/bin/env python3
"""Soak run: the perception node for minutes under a steady camera load and periodic questions.

  .venv/bin/python scripts/soak.py                          # 10 min, 2 cameras at 30 Hz, the default model
  .venv/bin/python scripts/soak.py --minutes 1 --backend placeholder

The node runs in its own process with its default model (the embedded demo model unless a
--checkpoint is given); this process plays two cameras of a synthetic room (a stereo pair, same
stamps) and asks a question every --question-period seconds. The printed report has the windows
processed and dropped, the image-to-depth latency (p50/p95/max), the node's RSS (sampled every
second), what the map holds, and the questions answered, refused and unanswered.
Targets (exit code 1 if one is missed): RSS floor growth under 5 % over the second half of the run,
p95 latency under twice p50, no unanswered question.

Memory is judged on floors, the lowest sample of each tenth of the run: a window's temporary tensors
come and go within seconds (hundreds of MiB for the model on a CPU), so single samples swing by that
much. And it is judged on the second half because the map's stores are bounded but take a while to
fill: the keyframe images kept for loop checks (`loop_closure_images`, 200 camera images: 176 MiB at
640x480) fill as the map gains keyframes, and a leak keeps growing after they are full. The growth
after warm-up and the peak are printed too. `--param loop_closure_images:=20` fills the image store
within the first minutes.
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from g2vlm_ros.cli.demo import isolated_ros_environment

QUESTIONS = ("How much free space is straight ahead of left?", "What is the depth at (320, 240) in right?",
             "How far is (100, 400)?")


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


class Load:
    """Two cameras at a fixed rate, questions at a fixed period, and what came back."""

    def __init__(self, node, frames: list[np.ndarray], rate_hz: float, question_period_s: float):
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import Image

        from g2vlm_interfaces.srv import Ask

        self.node, self.frames = node, frames
        self.lock = threading.Lock()
        self.latency_ms: list[float] = []
        self.latency_times: list[float] = []  # monotonic arrival times, to drop the warm-up
        self.asked = self.answered = self.refused = 0
        self.pending: list = []
        self.sent = 0
        self.publishers = {name: node.create_publisher(Image, f"/{name}/image_raw", qos_profile_sensor_data)
                           for name in ("left", "right")}
        node.create_subscription(Image, "/g2vlm/left/depth_relative", self._on_depth, 10)
        node.create_subscription(Image, "/g2vlm/left/depth", self._on_depth, 10)
        self.client = node.create_client(Ask, "/g2vlm/ask", qos_profile=QoSProfile(
            depth=100, reliability=ReliabilityPolicy.RELIABLE))
        self.ask_type = Ask
        node.create_timer(1.0 / rate_hz, self._publish)
        node.create_timer(question_period_s, self._ask)

    def _publish(self) -> None:
        from std_msgs.msg import Header

        from g2vlm_ros.ros.conversions import numpy_to_image

        stamp = self.node.get_clock().now().to_msg()
        for offset, (name, publisher) in enumerate(self.publishers.items()):
            frame = self.frames[(self.sent + 3 * offset) % len(self.frames)]
            publisher.publish(numpy_to_image(frame, "rgb8", Header(stamp=stamp, frame_id=f"{name}_optical")))
        self.sent += 1

    def _on_depth(self, msg) -> None:
        now = self.node.get_clock().now().nanoseconds
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.latency_ms.append((now - stamp) / 1e6)
            self.latency_times.append(time.monotonic())

    def _ask(self) -> None:
        if not self.client.service_is_ready():
            return
        future = self.client.call_async(self.ask_type.Request(question=QUESTIONS[self.asked % len(QUESTIONS)]))
        future.add_done_callback(self._on_answer)
        with self.lock:
            self.asked += 1
            self.pending.append((time.monotonic(), future))

    def _on_answer(self, future) -> None:
        with self.lock:
            if future.result().success:
                self.answered += 1
            else:
                self.refused += 1

    def unanswered(self, older_than_s: float) -> int:
        with self.lock:
            now = time.monotonic()
            return sum(1 for sent, future in self.pending if not future.done() and now - sent > older_than_s)


def diagnostics_values(node, names: tuple[str, ...], timeout_s: float = 5.0) -> dict[str, dict[str, str]]:
    """The newest values of these diagnostics statuses (e.g. 'g2vlm: inference', 'g2vlm: map')."""
    from diagnostic_msgs.msg import DiagnosticArray

    found: dict[str, dict[str, str]] = {}

    def on_diagnostics(msg) -> None:
        for status in msg.status:
            if status.name in names:
                found[status.name] = {kv.key: kv.value for kv in status.values}

    subscription = node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    deadline = time.monotonic() + timeout_s
    while len(found) < len(names) and time.monotonic() < deadline:
        time.sleep(0.1)
    node.destroy_subscription(subscription)
    return found


@dataclass(frozen=True)
class RssFigures:
    """The node's resident memory, judged on floors: a window's temporary tensors (hundreds of MiB for the model
    on a CPU) come and go within seconds, so single samples swing by that much; the lowest sample of a span is
    what stays between windows, where a leak or an unbounded store shows."""

    span_s: float
    spans: list[tuple[float, float, float]]  # (end of span in s, floor MiB, peak MiB)
    after_warmup: float  # floor of the first span after warm-up
    at_half: float  # floor of the first span from half time on
    at_end: float  # floor of the last span
    peak: float

    @property
    def growth(self) -> float:
        return (self.at_end - self.after_warmup) / self.after_warmup * 100

    @property
    def second_half_growth(self) -> float:
        return (self.at_end - self.at_half) / self.at_half * 100


def rss_figures(samples: list[tuple[float, float]], duration_s: float, warmup_s: float) -> RssFigures:
    """Floors and peaks of 1-s RSS samples over spans of a tenth of the run (at least 5 s)."""
    span_s = max(duration_s / 10, 5.0)

    def between(begin_s: float, end_s: float) -> list[float]:
        return [rss for at, rss in samples if begin_s <= at < end_s]

    def floor_from(begin_s: float) -> float:
        inside = between(begin_s, begin_s + span_s)
        return min(inside) if inside else samples[-1][1]

    spans = []
    count = max(1, round(samples[-1][0] / span_s))  # the last span takes the few samples past the nominal end
    for index in range(count):
        inside = between(index * span_s, (index + 1) * span_s if index < count - 1 else math.inf)
        if inside:
            spans.append((min((index + 1) * span_s, samples[-1][0]), min(inside), max(inside)))
    end_floor = min(between(samples[-1][0] - span_s, math.inf))
    return RssFigures(span_s, spans, floor_from(warmup_s), floor_from(max(duration_s / 2, warmup_s)), end_floor,
                      max(rss for _, rss in samples))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=60.0, help="excluded from RSS growth and latency")
    parser.add_argument("--rate", type=float, default=30.0, help="frames per second per camera")
    parser.add_argument("--question-period", type=float, default=1.0, help="seconds between questions")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--checkpoint", default="")
    parser.add_argument("--log", type=Path, default=Path("soak_node.log"))
    parser.add_argument("--ros-domain-id", type=int, default=None, help="DDS domain (default: a random one of 1-100)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                        help="a node parameter (repeatable), e.g. loop_closure_images:=20 to fill the bounded "
                             "stores early")
    args = parser.parse_args(argv)
    bad = [param for param in args.param if ":=" not in param]
    if bad:
        parser.error(f"--param takes NAME:=VALUE, got {', '.join(bad)}")

    env = isolated_ros_environment(args.ros_domain_id)
    os.environ.update(env)
    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    from g2vlm_ros.playback.frames import SyntheticSequence
    from g2vlm_ros.ros.spin import tear_down

    frames = [frame.rgb for frame in SyntheticSequence().frames]
    command = [str(Path(sys.prefix) / "lib" / "g2vlm_ros" / "perception_node"), "--ros-args",
               "-p", "cameras:=[left,right]", "-p", f"backend:={args.backend}", "-p", "max_rate_hz:=30.0"]
    if args.checkpoint:
        command += ["-p", f"checkpoint_path:={args.checkpoint}"]
    for param in args.param:
        command += ["-p", param]
    log = open(args.log, "w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    rclpy.init()
    node = rclpy.create_node("g2vlm_soak")
    executor = MultiThreadedExecutor(num_threads=3)
    executor.add_node(node)
    spinning = threading.Thread(target=executor.spin, daemon=True)
    spinning.start()
    load = Load(node, frames, args.rate, args.question_period)
    start = time.monotonic()
    samples: list[tuple[float, float]] = []  # (seconds since start, RSS MiB), one a second
    try:
        while time.monotonic() - start < args.minutes * 60:
            time.sleep(1.0)
            if process.poll() is not None:
                print(f"the node exited with {process.returncode}; see {args.log}", file=sys.stderr)
                return 1
            samples.append((time.monotonic() - start, rss_mib(process.pid)))
        statuses = diagnostics_values(node, ("g2vlm: inference", "g2vlm: map"))
        counts, map_values = statuses.get("g2vlm: inference", {}), statuses.get("g2vlm: map", {})
        time.sleep(5.0)  # the last questions' answers
        unanswered = load.unanswered(older_than_s=5.0)
    finally:
        # the safe order for rclpy (see spin.tear_down); the spinning thread ends before the node is destroyed
        tear_down(executor, node, before_destroy=lambda: spinning.join(timeout=5.0))
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()

    warm = np.array([ms for ms, at in zip(load.latency_ms, load.latency_times, strict=True)
                     if at - start >= args.warmup_s])
    if warm.size == 0:
        print("no depth output after warm-up", file=sys.stderr)
        return 1
    p50, p95, worst = np.percentile(warm, 50), np.percentile(warm, 95), warm.max()
    memory = rss_figures(samples, args.minutes * 60, args.warmup_s)
    checks = {"RSS floor growth over the second half < 5 %": memory.second_half_growth < 5.0,
              "p95 latency < 2 x p50": p95 < 2 * p50, "no unanswered question": unanswered == 0}
    print(f"soak: {args.minutes:g} min, 2 cameras at {args.rate:g} Hz, a question every {args.question_period:g} s, "
          f"backend {args.backend}{' ' + args.checkpoint if args.checkpoint else ''}"
          f"{''.join(' ' + param for param in args.param)}, exit {process.returncode}")
    print(f"  frames published per camera: {load.sent}")
    print(f"  windows processed: {counts.get('windows_processed', '?')}, dropped (newer window replaced them): "
          f"{counts.get('windows_dropped', '?')}, failed: {counts.get('windows_failed', '?')}, rate-limited: "
          f"{counts.get('windows_rate_limited', '?')}")
    print(f"  latency image stamp -> depth (after warm-up, {warm.size} windows): p50 {p50:.0f} ms, "
          f"p95 {p95:.0f} ms, max {worst:.0f} ms")
    print(f"  node RSS floor (the lowest 1-s sample of each {memory.span_s:g} s): {memory.after_warmup:.1f} MiB "
          f"after {args.warmup_s:g} s warm-up, {memory.at_half:.1f} MiB at half time, {memory.at_end:.1f} MiB at the "
          f"end ({memory.second_half_growth:+.2f} % over the second half, {memory.growth:+.2f} % after warm-up); "
          f"peak {memory.peak:.1f} MiB")
    print("  node RSS floor / peak: " + ", ".join(
        f"{at / 60:.3g} min {floor:.0f} / {peak:.0f}" for at, floor, peak in memory.spans))
    if map_values:  # what the map holds at the end: its stores are bounded (keyframes are culled, clouds evicted)
        print("  map: " + ", ".join(f"{key} {map_values[key]}" for key in (
            "windows_placed", "keyframes", "redundant_sets", "cloud_points", "evicted_keyframes", "loop_keyframes",
            "loop_images", "loop_image_mib")
            if key in map_values))
    print(f"  questions: {load.asked} asked, {load.answered} answered, {load.refused} refused, {unanswered} unanswered")
    for name, passed in checks.items():
        print(f"  {'PASS' if passed else 'FAIL'}  {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
