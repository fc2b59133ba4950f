"""The play tool: image folders, videos, synthetic rooms and rosbag2/MCAP recordings as topics.

ROS-free sources are checked directly; the tool itself runs as its own process and is heard
over DDS by the test's client node, as a perception node would hear it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from conftest import FIXTURES, wait_until
from g2vlm_ros.playback.bag import BagError, Recording, camera_info_beside, shift_header_stamps
from g2vlm_ros.playback.frames import FolderSequence, SyntheticSequence, VideoSequence, open_sequence
from g2vlm_ros.ros.conversions import compressed_to_rgb, image_to_rgb

sys.path.insert(0, str(FIXTURES))
from bags import CUSTOM_TYPE, gradient_frames, write_camera_bag  # noqa: E402

RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
START_NS = 1_700_000_000_000_000_000


def write_folder(folder: Path, frames: list[np.ndarray]) -> Path:
    folder.mkdir()
    for index, rgb in enumerate(frames):
        PILImage.fromarray(rgb).save(folder / f"frame_{index:03d}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def write_video(path: Path, frames: list[np.ndarray], fps: int) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.bit_rate = 4_000_000
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return path


def solid_frames(count: int, width: int = 96, height: int = 64) -> list[np.ndarray]:
    """Flat colours survive lossy video coding, so decoded frames can be compared with the originals."""
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40), (40, 220, 220), (128, 128, 128)]
    return [np.full((height, width, 3), colours[i % len(colours)], np.uint8) for i in range(count)]


def run_play(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    # -X faulthandler: a native crash (in the middleware, say) leaves its Python stack in stderr
    return subprocess.run([sys.executable, "-X", "faulthandler", "-m", "g2vlm_ros.cli.play", *args],
                          capture_output=True, text=True, timeout=timeout_s, env=os.environ.copy())


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


# --- ROS-free sources ------------------------------------------------------------------------------------------

def test_a_folder_plays_in_name_order_and_wide_images_are_shrunk(tmp_path):
    frames = gradient_frames(3)
    folder = write_folder(tmp_path / "frames", frames)
    PILImage.fromarray(np.zeros((20, 1280, 3), np.uint8)).save(folder / "frame_999.png")
    played = [frame.rgb for frame in FolderSequence(folder, max_width=640)]
    assert len(played) == 4
    for ours, expected in zip(played[:3], frames, strict=True):
        np.testing.assert_array_equal(ours, expected)
    assert played[3].shape == (10, 640, 3)
    assert len(list(FolderSequence(folder))) == 4  # a second pass (looping) reads the folder again


def test_a_video_decodes_every_frame_at_its_recorded_rate(tmp_path):
    frames = solid_frames(12)
    video = VideoSequence(write_video(tmp_path / "walk.mp4", frames, fps=15))
    assert video.rate_hz == pytest.approx(15.0)
    decoded = [frame.rgb for frame in video]
    assert len(decoded) == 12
    for ours, expected in zip(decoded, frames, strict=True):
        assert np.abs(ours.astype(int) - expected).mean() < 8


def test_synthetic_rooms_walk_forwards_and_back_with_exact_intrinsics():
    from g2vlm_ros.training.scenes import render_scenes

    sequence = SyntheticSequence(seed=5, views=4, width=64, height=48)
    frames = list(sequence)
    scene = render_scenes(1, 4, 48, 64, seed=5)
    expected = (scene.images[0].permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
    assert len(frames) == 6  # 0 1 2 3 2 1, then the loop starts again at 0 without a jump
    for frame, view in zip(frames, (0, 1, 2, 3, 2, 1), strict=True):
        np.testing.assert_array_equal(frame.rgb, expected[view])
        np.testing.assert_allclose(frame.intrinsics, scene.intrinsics[0, view].numpy(), rtol=1e-6)


def test_sources_that_cannot_be_played_are_named(tmp_path):
    image = tmp_path / "one.png"
    PILImage.fromarray(np.zeros((4, 4, 3), np.uint8)).save(image)
    with pytest.raises(ValueError, match="single image"):
        open_sequence(str(image))
    with pytest.raises(FileNotFoundError, match="not 'synthetic', a folder of images, a video"):
        open_sequence(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        open_sequence(str(tmp_path / "empty"))
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="cannot open video"):
        open_sequence(str(tmp_path / "broken.mp4"))


def test_camera_info_is_found_by_the_image_transport_convention():
    infos = ["/front/camera_info", "/rig/left/camera_info"]
    assert camera_info_beside("/front/image_raw", infos) == "/front/camera_info"
    assert camera_info_beside("/front/image_raw/compressed", infos) == "/front/camera_info"
    assert camera_info_beside("/rig/left/color/image", infos) == "/rig/left/camera_info"
    assert camera_info_beside("/back/image_raw", infos) == ""


def test_stamps_shift_in_nested_headers_and_zero_stamps_stay_unset():
    from rosbags.typesys import Stores, get_typestore

    types = get_typestore(Stores.ROS2_HUMBLE).types
    Header, Time = types["std_msgs/msg/Header"], types["builtin_interfaces/msg/Time"]
    Stamped, Transform = types["geometry_msgs/msg/TransformStamped"], types["geometry_msgs/msg/Transform"]
    Vector, Quaternion = types["geometry_msgs/msg/Vector3"], types["geometry_msgs/msg/Quaternion"]

    def transform(sec: int, nanosec: int):
        return Stamped(header=Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id="odom"), child_frame_id="base",
                       transform=Transform(translation=Vector(x=0.0, y=0.0, z=0.0),
                                           rotation=Quaternion(x=0.0, y=0.0, z=0.0, w=1.0)))

    message = types["tf2_msgs/msg/TFMessage"](transforms=[transform(10, 999_999_999), transform(0, 0)])
    shift_header_stamps(message, 2_000_000_001)
    assert (message.transforms[0].header.stamp.sec, message.transforms[0].header.stamp.nanosec) == (13, 0)
    assert (message.transforms[1].header.stamp.sec, message.transforms[1].header.stamp.nanosec) == (0, 0)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_a_recording_lists_its_cameras_and_reads_its_messages_in_order(tmp_path, storage):
    frames = write_camera_bag(tmp_path / "bag", storage, start_ns=START_NS)
    paths = [tmp_path / "bag"] + ([next((tmp_path / "bag").glob("*.mcap"))] if storage == "mcap" else [])
    for path in paths:  # a rosbag2 folder, or a lone .mcap file as other recorders write them
        with Recording(path) as recording:
            assert [(t.name, t.count) for t in recording.topics()] == [
                ("/battery", 6), ("/front/camera_info", 6), ("/front/image_raw", 6),
                ("/front/image_raw/compressed", 6)]
            assert [(s.image_topic, s.transport, s.camera_info_topic) for s in recording.camera_streams()] == [
                ("/front/image_raw", "raw", "/front/camera_info"),
                ("/front/image_raw/compressed", "compressed", "/front/camera_info")]
            messages = list(recording.messages())
            times = [m.log_time_ns for m in messages]
            assert times == sorted(times) and recording.start_time_ns == START_NS
            raw = [m.message for m in messages if m.topic == "/front/image_raw"]
            for message, rgb in zip(raw, frames, strict=True):
                np.testing.assert_array_equal(np.asarray(message.data).reshape(rgb.shape), rgb)


def test_unreadable_recordings_and_unknown_topics_raise_bag_errors(tmp_path):
    write_camera_bag(tmp_path / "bag", "mcap")
    with pytest.raises(BagError, match="has no topic /rear/image_raw"):
        Recording(tmp_path / "bag", topics=["/rear/image_raw"])
    corrupt = tmp_path / "corrupt.mcap"
    corrupt.write_bytes(b"\x89MCAP0\r\n" + os.urandom(300))
    with pytest.raises(BagError, match="cannot read"):
        with Recording(corrupt) as recording:
            list(recording.messages())
    with pytest.raises(BagError, match="not a rosbag2 folder"):
        Recording(tmp_path)


# --- the tool, heard over DDS ----------------------------------------------------------------------------------

def test_play_publishes_a_bag_at_its_pace_with_live_stamps(ros_client, tmp_path):
    frames = write_camera_bag(tmp_path / "bag", "mcap", camera="/bag_live", start_ns=START_NS)
    raw = ros_client.collect(Image, "/bag_live/image_raw", RELIABLE)
    compressed = ros_client.collect(CompressedImage, "/bag_live/image_raw/compressed", RELIABLE)
    infos = ros_client.collect(CameraInfo, "/bag_live/camera_info", RELIABLE)
    before = ros_client.node.get_clock().now().nanoseconds
    result = run_play(str(tmp_path / "bag"), "--wait-for-subscriber", "20")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: len(raw) == 6 and len(compressed) == 6 and len(infos) == 6, 10,
               f"got {len(raw)} raw, {len(compressed)} compressed, {len(infos)} camera_info of 6 each")
    for message, rgb in zip(raw, frames, strict=True):
        np.testing.assert_array_equal(image_to_rgb(message), rgb)
    for message, rgb in zip(compressed, frames, strict=True):
        np.testing.assert_array_equal(compressed_to_rgb(message), rgb)
    # every stamp moved by one offset (timing between topics kept), onto this run's clock
    offsets = {stamp_ns(m) - (START_NS + round(i * 1e8)) for m_list in (raw, compressed)
               for i, m in enumerate(m_list)}
    offsets |= {stamp_ns(m) - (START_NS + round(i * 1e8) - 1_000_000) for i, m in enumerate(infos)}
    assert len(offsets) == 1, offsets
    assert before < START_NS + offsets.pop() < ros_client.node.get_clock().now().nanoseconds
    assert f"skipping /battery: message type {CUSTOM_TYPE} is not installed" in result.stderr + result.stdout


def test_play_keeps_recorded_stamps_and_selected_topics_when_asked(ros_client, tmp_path):
    write_camera_bag(tmp_path / "bag", "sqlite3", camera="/bag_kept", start_ns=START_NS, count=4)
    raw = ros_client.collect(Image, "/bag_kept/image_raw", RELIABLE)
    infos = ros_client.collect(CameraInfo, "/bag_kept/camera_info", RELIABLE)
    result = run_play(str(tmp_path / "bag"), "--keep-stamps", "--topics", "/bag_kept/image_raw", "--speed", "4",
                      "--wait-for-subscriber", "20")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: len(raw) == 4, 10, f"got {len(raw)} of 4 images")
    assert [stamp_ns(m) for m in raw] == [START_NS + round(i * 1e8) for i in range(4)]
    assert not infos  # not selected


def test_play_publishes_a_folder_looping_and_a_video_once_as_a_camera(ros_client, tmp_path):
    frames = gradient_frames(3)
    folder_images = ros_client.collect(Image, "/play_folder/image_raw", RELIABLE)
    result = run_play(str(write_folder(tmp_path / "frames", frames)), "--camera", "play_folder", "--rate", "20",
                      "--count", "5", "--wait-for-subscriber", "20")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: len(folder_images) == 5, 10, f"got {len(folder_images)} of 5 images")
    for message, index in zip(folder_images, (0, 1, 2, 0, 1), strict=True):
        np.testing.assert_array_equal(image_to_rgb(message), frames[index])
        assert message.encoding == "rgb8" and message.header.frame_id == "play_folder_optical"
    stamps = [stamp_ns(m) for m in folder_images]
    assert all(later > earlier for earlier, later in pairwise(stamps))

    # topics are relative, so a namespace moves them, as it moves a namespaced node's camera inputs
    video_images = ros_client.collect(Image, "/play_ns/play_video/image_raw", RELIABLE)
    video = write_video(tmp_path / "walk.mp4", solid_frames(8), fps=25)
    result = run_play(str(video), "--camera", "play_video", "--no-loop", "--wait-for-subscriber", "20",
                      "--ros-args", "-r", "__ns:=/play_ns")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: len(video_images) == 8, 10, f"got {len(video_images)} of 8 video frames")
    span_s = (stamp_ns(video_images[-1]) - stamp_ns(video_images[0])) / 1e9
    assert 7 / 25 * 0.8 < span_s < 7 / 25 * 2.5, span_s  # paced at the video's 25 fps


def test_play_holds_the_first_frame_until_as_many_subscribers_as_asked(ros_client, tmp_path):
    """With --subscribers 2 (the demo: its node and its monitor) a subscriber that comes second still gets the
    first frame, which would otherwise go out as soon as the first one matched."""
    folder = write_folder(tmp_path / "frames", gradient_frames(3))
    camera = f"play_two_{uuid.uuid4().hex[:8]}"  # the client's subscriptions outlive the test
    first = ros_client.collect(Image, f"/{camera}/image_raw", RELIABLE)
    log_path = tmp_path / "play.log"
    with log_path.open("w") as log:
        player = subprocess.Popen([sys.executable, "-m", "g2vlm_ros.cli.play", str(folder), "--camera", camera,
                                   "--rate", "20", "--count", "3", "--delay", "0", "--wait-for-subscriber", "60",
                                   "--subscribers", "2"], stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        try:
            wait_until(lambda: "waiting up to 60 s for 2 subscriber(s)" in log_path.read_text()
                       or player.poll() is not None, 30, "play did not start waiting")
            assert player.poll() is None, log_path.read_text()
            wait_until(lambda: ros_client.node.count_publishers(f"/{camera}/image_raw"), 30, "play's publisher unseen")
            time.sleep(0.5)  # matched both ways by now: with one subscriber, a wrong count would publish here
            assert not first and player.poll() is None, log_path.read_text()  # one subscriber: still held
            second = ros_client.collect(Image, f"/{camera}/image_raw", RELIABLE)
            assert player.wait(60) == 0, log_path.read_text()
        finally:
            if player.poll() is None:
                player.kill()
    wait_until(lambda: len(first) == 3 and len(second) == 3, 10, f"got {len(first)} and {len(second)} of 3 frames")


def test_play_refuses_unplayable_sources_with_a_reason(tmp_path):
    result = run_play(str(tmp_path / "missing.mp4"))
    assert result.returncode == 2 and "is not 'synthetic', a folder of images, a video" in result.stderr, result
    corrupt = tmp_path / "corrupt.mcap"
    corrupt.write_bytes(b"garbage")
    result = run_play(str(corrupt), "--delay", "0")
    assert result.returncode == 2 and "cannot read" in result.stderr + result.stdout, result
    result = run_play("synthetic", "--rate", "0")
    assert result.returncode == 2 and "--rate must be positive" in result.stderr, result


def test_the_node_processes_a_compressed_camera_from_a_looping_bag(start_node, ros_client, tmp_path):
    write_camera_bag(tmp_path / "bag", "mcap", camera="/bag_node", count=5)
    node = start_node(backend="placeholder", cameras=["bagcam"], **{
        "bagcam.image_topic": "/bag_node/image_raw/compressed", "bagcam.transport": "compressed",
        "bagcam.camera_info_topic": "/bag_node/camera_info"})
    depth = ros_client.collect(Image, "/g2vlm/bagcam/depth_relative", RELIABLE)
    player = subprocess.Popen([sys.executable, "-m", "g2vlm_ros.cli.play", str(tmp_path / "bag"), "--loop"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    try:
        wait_until(lambda: len(depth) >= 8, 30, f"{len(depth)} depth images from the looping bag")
    finally:
        player.terminate()
        player.wait(10)
    stamps = [stamp_ns(m) for m in depth]
    assert all(later > earlier for earlier, later in pairwise(stamps))  # loops never go back in time
    assert depth[-1].width == 64 and depth[-1].height == 48 and node.alive()


def caught_signals(pid: int) -> int:
    """The process's mask of signals with a handler installed (Linux /proc); 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)


def stop_play_at(moment: str, signum: int, folder: Path, images: list, log_path: Path) -> tuple[int, str]:
    """Starts play on `folder`, sends `signum` at `moment`, returns (exit status, stderr)."""
    camera = "play_stop_idle" if moment == "waiting for a subscriber" else "play_stop"
    args = [folder, "--camera", camera, "--rate", "50", "--delay", "0", "--wait-for-subscriber", "30"]
    args += ["--count", "3"] if moment in ("after the last frame", "while exiting") else []
    log = log_path.open("w")
    player = subprocess.Popen([sys.executable, "-m", "g2vlm_ros.cli.play", *map(str, args)], stdout=log,
                              stderr=subprocess.STDOUT, env=os.environ.copy())
    seen = len(images)
    conditions = {
        # play's SIGTERM handler is in place before its slow imports (numpy, rclpy): stop during those
        "at start": lambda: caught_signals(player.pid) & (1 << (signal.SIGTERM - 1)),
        "waiting for a subscriber": lambda: "playing " in log_path.read_text(),  # nobody subscribes to idle
        "while publishing": lambda: len(images) >= seen + 3,
        "after the last frame": lambda: "done: 3 messages" in log_path.read_text(),  # the acknowledgement wait
        "while exiting": lambda: "done: 3 messages" in log_path.read_text(),
    }
    try:
        wait_until(lambda: conditions[moment]() or player.poll() is not None, 30, f"{moment}: not reached")
        if moment == "while exiting":
            # Python's finalisation, where it resets signal handlers; DDS teardown keeps it there for
            # longer than this (0.2 to 0.4 s after "done" were all inside it on a 2-core machine)
            time.sleep(0.2)
        player.send_signal(signum)
        player.wait(20)
    finally:
        if player.poll() is None:
            player.kill()
        log.close()
    return player.returncode, log_path.read_text()


def test_play_exits_cleanly_on_sigint_and_sigterm_at_any_moment(ros_client, tmp_path):
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs /proc to see when play has installed its signal handlers")
    folder = write_folder(tmp_path / "frames", gradient_frames(3))
    images = ros_client.collect(Image, "/play_stop/image_raw", RELIABLE)
    moments = ["waiting for a subscriber", "while publishing", "after the last frame", "while exiting"]
    moments += ["at start"] * 2  # the cheapest stop (no DDS), and the one that lands in imports and rclpy.init
    started = time.monotonic()
    for signum in (signal.SIGINT, signal.SIGTERM):
        for moment in moments:
            code, output = stop_play_at(moment, signum, folder, images, tmp_path / "play.log")
            where = f"{signal.Signals(signum).name} {moment}: exit {code}"
            assert code == 0 and "Traceback" not in output and "Failed to wait" not in output, \
                f"{where}\n{output[-3000:]}"
    print(f"\n{2 * len(moments)} stops in {time.monotonic() - started:.1f} s")
