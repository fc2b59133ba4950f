"""Plays camera data as ROS 2 topics: synthetic rooms, a folder of images, a video or a rosbag2/MCAP.

  ros2 run g2vlm_ros play synthetic                       # /camera/image_raw + /camera/camera_info
  ros2 run g2vlm_ros play ~/frames --camera front --rate 10
  ros2 run g2vlm_ros play walk.mp4                        # at the video's frame rate
  ros2 run g2vlm_ros play recording.mcap --speed 0.5      # or a rosbag2 folder, or a .db3 file

Images (synthetic, folder, video) go out as sensor_msgs/Image rgb8 on <camera>/image_raw in the
frame <camera>_optical, stamped with the current time, looping until Ctrl-C (--no-loop: once).
Synthetic rooms also publish their exact intrinsics on <camera>/camera_info. These names are relative,
like the node's default camera topics: `play ... --ros-args -r __ns:=/robot1` feeds a node launched
with namespace:=robot1 (/robot1/<camera>/image_raw).

A bag publishes every topic whose message type is installed here under its own name, paced by
its recording times (--speed), once (--loop: again and again). Header stamps are shifted by
(playback start - recording start), so the data looks live and keeps its timing between topics;
--keep-stamps publishes them as recorded (for use_sim_time setups). Bags are read with `rosbags`
(PyPI), so no ROS install is needed for this.

Publishers are reliable (depth 10): they reach both SensorData (best effort) and reliable
subscribers. /tf_static is transient local, as tf2 expects. DDS discovery takes up to about 3 s
and messages sent before it are lost: --wait-for-subscriber S holds the first message until
something subscribes (at most S s; with --subscribers N, until N do), and at the end play waits for
subscribers to acknowledge.
Ctrl-C (SIGINT) and SIGTERM stop it at any moment with exit status 0.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from g2vlm_ros.playback.bag import BagError, Recording, is_bag, shift_header_stamps
from g2vlm_ros.ros.signal_teardown import SECOND_SIGINT_EXIT_CODE

# g2vlm_ros.playback.frames (numpy, and torch for synthetic rooms) is imported in main(), after the signal
# handlers are in place: a stop during those slow imports then ends play cleanly too.

DEFAULT_IMAGE_RATE_HZ = 5.0


class Stopped(Exception):
    """Ctrl-C or SIGTERM asked play to stop: main() ends with exit status 0."""


class StopSignals:
    """SIGINT and SIGTERM only note a stop request; play acts on it at its waits (sleep(), check()).

    An exception raised from a signal handler lands wherever the main thread happens to be: inside an import
    (numpy then reports a broken install), inside rclpy's set-up or teardown, or inside the final wait for
    acknowledgements. rclpy's own handlers are not installed either (SignalHandlerOptions.NO, as in the ask
    tool): they shut the context down from a thread of their own while the main thread may still publish or
    wait ("publisher's context is invalid"), and on Humble they leave SIGTERM to kill the process. A second
    signal exits at once, without cleanup, for a play stuck in a long import or decode.
    """

    POLL_S = 0.05  # the longest a requested stop waits while play sleeps

    def __init__(self):
        self.requested = self.installed = False

    def install(self) -> None:
        self.requested = False  # main() may run more than once in one process
        self.installed = threading.current_thread() is threading.main_thread()
        if not self.installed:
            return  # only the main thread may set handlers; an embedding program keeps its own
        # set explicitly, SIGINT too: a background job of a script inherits it ignored
        signal.signal(signal.SIGINT, self._note)
        signal.signal(signal.SIGTERM, self._note)

    def _note(self, signum, frame) -> None:
        if self.requested:
            os.write(2, b"play: second stop signal, exiting without cleanup\n")
            os._exit(SECOND_SIGINT_EXIT_CODE)
        self.requested = True

    def ignore_from_now(self) -> None:
        """For the way out: Python resets signals that have Python handlers to their defaults while it finalises,
        and a stop arriving then would kill the process (exit -2 or -15) after a clean run; ignored ones stay
        ignored. main() calls it last, so an embedding program's main thread is left with them ignored."""
        if self.installed:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def check(self) -> None:
        if self.requested:
            raise Stopped()

    def sleep(self, seconds: float) -> None:
        """time.sleep(seconds) that raises Stopped within POLL_S of a stop request."""
        deadline = time.monotonic() + seconds
        self.check()
        while (remaining := deadline - time.monotonic()) > 0:
            time.sleep(min(remaining, self.POLL_S))
            self.check()


STOP = StopSignals()


@dataclass(frozen=True)
class StartPolicy:
    """When the first message goes out, once the publishers exist (messages published before
    DDS discovery matched a subscriber are lost to it; discovery takes 0.2-3 s on one host)."""

    delay_s: float  # always pause this long
    wait_for_subscriber_s: float  # and wait up to this long for subscribers (0: do not wait)
    subscribers: int = 1  # how many: the demo waits for the node and its own monitor, so both see every frame


def wait_for_subscribers(node, publishers: list, start: StartPolicy) -> None:
    """Until a topic has `start.subscribers` subscribers, at most `start.wait_for_subscriber_s` s."""
    def enough() -> bool:
        return any(p.get_subscription_count() >= start.subscribers for p in publishers)

    if start.wait_for_subscriber_s and not enough():
        node.get_logger().info(f"waiting up to {start.wait_for_subscriber_s:g} s for {start.subscribers} "
                               f"subscriber(s) on {', '.join(p.topic_name for p in publishers)}")
    deadline = time.monotonic() + start.wait_for_subscriber_s
    while time.monotonic() < deadline and not enough():
        STOP.sleep(0.05)
    if start.wait_for_subscriber_s and not enough():
        node.get_logger().warning(f"fewer than {start.subscribers} subscriber(s) after "
                                  f"{start.wait_for_subscriber_s:g} s; playing anyway")
    STOP.sleep(start.delay_s)  # also lets the subscriber's side finish matching this publisher


def message_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> the rclpy message class, or None when the package is not installed."""
    package, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError):
        return None


def looped(make_iterator, loop: bool) -> Iterator:
    """Items of make_iterator() once, or again and again while `loop`; stops on an empty source."""
    while True:
        produced = False
        for item in make_iterator():
            produced = True
            yield item
        if not loop or not produced:
            return


class Pacer:
    """Sleeps until each item's time on a schedule that starts when the first item is due."""

    def __init__(self):
        self.start: Optional[float] = None

    def wait(self, offset_s: float) -> None:
        if self.start is None:
            self.start = time.monotonic() - offset_s
        STOP.sleep(max(0.0, self.start + offset_s - time.monotonic()))


def play_frames(node, sequence, camera: str, rate_hz: float, loop: bool, count: Optional[int],
                start: StartPolicy) -> int:
    """Publishes a frame sequence as <camera>/image_raw (+ camera_info); returns frames sent."""
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header

    from g2vlm_ros.ros.conversions import numpy_to_image
    from g2vlm_ros.ros.outputs import pinhole_camera_info

    images = node.create_publisher(Image, f"{camera}/image_raw", 10)  # relative: in the node's namespace
    infos = node.create_publisher(CameraInfo, f"{camera}/camera_info", 10)
    node.get_logger().info(f"playing {sequence.description} on {images.topic_name} at {rate_hz:g} Hz"
                           + ("" if loop else ", once"))
    wait_for_subscribers(node, [images], start)
    pacer, sent = Pacer(), 0
    for frame in looped(lambda: iter(sequence), loop):  # PlaybackFrame
        if count is not None and sent >= count:
            break
        pacer.wait(sent / rate_hz)
        header = Header(frame_id=f"{camera}_optical", stamp=node.get_clock().now().to_msg())
        if frame.intrinsics is not None:
            height, width = frame.rgb.shape[:2]
            infos.publish(pinhole_camera_info(header, frame.intrinsics, width, height))
        images.publish(numpy_to_image(frame.rgb, "rgb8", header))
        sent += 1
    return sent


def bag_publishers(node, recording: Recording) -> dict:
    """One publisher per topic whose type is installed; the others are reported and skipped."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    publishers = {}
    for topic in recording.topics():
        message_type = message_class(topic.msgtype)
        if message_type is None:
            node.get_logger().warning(f"skipping {topic.name}: message type {topic.msgtype} is not installed")
            continue
        static = topic.name.endswith("/tf_static")
        qos = QoSProfile(depth=100 if static else 10, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL if static else DurabilityPolicy.VOLATILE)
        publishers[topic.name] = node.create_publisher(message_type, topic.name, qos)
        node.get_logger().info(f"  {topic.name} [{topic.msgtype}] {topic.count} messages")
    return publishers


def play_bag(node, path: Path, topics: Optional[list[str]], speed: float, loop: bool, keep_stamps: bool,
             count: Optional[int], start: StartPolicy) -> int:
    """Publishes a rosbag2 recording's messages at their recorded pace; returns messages sent."""
    sent = 0
    with Recording(path, topics) as recording:
        node.get_logger().info(f"playing {path} ({recording.duration_s:.1f} s) at {speed:g}x"
                               + (", looping" if loop else ""))
        publishers = bag_publishers(node, recording)
        if not publishers:
            raise BagError(f"{path}: none of its message types is installed here")
        wait_for_subscribers(node, list(publishers.values()), start)
        while True:
            pacer = Pacer()
            # one offset per pass: the stamps of a pass move together, and every pass is later than the last
            offset_ns = node.get_clock().now().nanoseconds - recording.start_time_ns
            for item in recording.messages():
                if count is not None and sent >= count:
                    return sent
                publisher = publishers.get(item.topic)
                if publisher is None:
                    continue
                pacer.wait((item.log_time_ns - recording.start_time_ns) / 1e9 / speed)
                if not keep_stamps:
                    shift_header_stamps(item.message, offset_ns)
                publisher.publish(recording.serialize(item.message, item.msgtype))
                sent += 1
            if not loop or sent == 0:
                return sent


def deliver_before_exit(node, timeout_s: float = 4.0, slice_s: float = 0.1) -> None:
    """Waits (bounded) until subscribers acknowledged what was sent: a reliable writer destroyed
    right after its last publish loses samples a reader has not confirmed yet. Fast DDS asks for
    acknowledgements with its 3 s heartbeat, hence up to about 3 s at exit. Waits in short slices so
    that a stop request ends the wait, and gives up without an error once the context is invalid:
    nothing can be delivered then."""
    from rclpy.duration import Duration

    deadline = time.monotonic() + timeout_s
    pending = list(node.publishers)
    while pending and time.monotonic() < deadline and not STOP.requested and node.context.ok():
        try:
            pending = [p for p in pending if not p.wait_for_all_acked(Duration(seconds=slice_s))]
        except RuntimeError:  # rclpy's RCLError: "publisher's context is invalid", shut down meanwhile
            return


def close(node, deliver: bool) -> None:
    """Ends playback: waits for acknowledgements unless play was stopped (the user wants it gone), then
    destroys the node and shuts rclpy down."""
    import rclpy

    if node is not None:
        if deliver:
            deliver_before_exit(node)
        node.destroy_node()
    rclpy.try_shutdown()


def parse_args(argv: Optional[list[str]]) -> tuple[argparse.Namespace, list[str]]:
    from g2vlm_ros.playback.frames import SYNTHETIC_SEED

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("source", help="synthetic | folder of images | video file | rosbag2 folder, .mcap or .db3")
    parser.add_argument("--camera", default="camera", help="images: topics <camera>/image_raw and camera_info")
    parser.add_argument("--rate", type=float, help=f"images: frames per second (default: the video's rate, "
                        f"else {DEFAULT_IMAGE_RATE_HZ:g})")
    parser.add_argument("--max-width", type=int, default=640, help="images: shrink wider images to this width")
    parser.add_argument("--seed", type=int, default=SYNTHETIC_SEED, help="synthetic: which room")
    parser.add_argument("--speed", type=float, default=1.0, help="bags: playback speed factor")
    parser.add_argument("--topics", nargs="+", help="bags: play only these topics")
    parser.add_argument("--keep-stamps", action="store_true", help="bags: publish header stamps as recorded")
    parser.add_argument("--loop", action=argparse.BooleanOptionalAction, default=None,
                        help="play again from the start (default: images loop, bags play once)")
    parser.add_argument("--count", type=int, help="stop after this many frames (bags: messages)")
    parser.add_argument("--delay", type=float, default=0.5,
                        help="seconds between creating the publishers and the first message")
    parser.add_argument("--wait-for-subscriber", type=float, default=0.0, metavar="SECONDS",
                        help="before playing, wait up to this long until something subscribes")
    parser.add_argument("--subscribers", type=int, default=1, metavar="N",
                        help="with --wait-for-subscriber: wait for N subscribers (e.g. a node and a recorder, so "
                             "that both get the first message)")
    args, ros_args = parser.parse_known_args(argv)
    for name in ("rate", "speed"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            parser.error(f"--{name} must be positive")
    return args, ros_args


def main(argv: Optional[list[str]] = None) -> int:
    STOP.install()  # first: a stop during the imports and set-up below must end play cleanly too
    try:
        return _play(argv)
    finally:
        STOP.ignore_from_now()


def _play(argv: Optional[list[str]]) -> int:
    args, ros_args = parse_args(argv)
    from g2vlm_ros.playback.frames import open_sequence

    bag = is_bag(Path(args.source))
    try:
        sequence = None if bag else open_sequence(args.source, args.max_width, args.seed)
    except (FileNotFoundError, ValueError, ImportError) as error:
        print(f"play: {error}", file=sys.stderr)
        return 2
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(args=ros_args, signal_handler_options=SignalHandlerOptions.NO)
    node, stopped = None, False
    try:
        node = rclpy.create_node("g2vlm_play")
        STOP.check()  # a stop during the set-up above
        start = StartPolicy(max(0.0, args.delay), max(0.0, args.wait_for_subscriber), max(1, args.subscribers))
        if bag:
            loop = bool(args.loop)
            sent = play_bag(node, Path(args.source), args.topics, args.speed, loop, args.keep_stamps, args.count,
                            start)
        else:
            loop = args.loop is not False
            rate = args.rate or sequence.rate_hz or DEFAULT_IMAGE_RATE_HZ
            sent = play_frames(node, sequence, args.camera, rate, loop, args.count, start)
        node.get_logger().info(f"done: {sent} messages published")
        return 0
    except BagError as error:
        node.get_logger().error(str(error))
        return 2
    except Stopped:
        stopped = True
        return 0
    finally:
        close(node, deliver=not stopped)


if __name__ == "__main__":
    sys.exit(main())
