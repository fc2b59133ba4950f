"""Health that tells the truth, camera_info that fits its image, and TF frames that never re-parent a robot frame:
across processes, the node in its own process and this one its cameras and observers."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from test_faults import ERROR, RELIABLE, WARN, fault_env, status, value
from test_runtime_robustness import FAULTY, SMALL

from conftest import wait_until
from test_node_process import rgb_image


def camera_name() -> str:
    return f"hp_{uuid.uuid4().hex[:8]}"


def test_a_camera_that_stops_is_reported_stalled_with_its_age_and_its_rate_decays(start_node, ros_client, camera):
    cam = camera(size=SMALL)
    diagnostics = ros_client.collect(DiagnosticArray, "/diagnostics", RELIABLE)
    start_node(backend="placeholder", cameras=[cam.name], input_qos="reliable", camera_timeout_s=1.0,
               inference_timeout_s=2.0)
    name = f"g2vlm: camera {cam.name}"
    wait_until(lambda: (entry := status(diagnostics, name)) and float(value(entry, "rate_hz") or 0) > 5, 20,
               "camera rate not reported")
    cam.stop()
    entry = wait_until(lambda: (found := status(diagnostics, name)) and found.level == WARN
                       and "stalled" in found.message and found, 10, "a stopped camera is not reported as stalled")
    assert "no image for" in entry.message and float(value(entry, "seconds_since_last_image")) >= 1.0  # 2 decimals
    wait_until(lambda: float(value(status(diagnostics, name), "rate_hz")) < 1.0, 10, "the rate does not decay")
    inference = wait_until(lambda: (found := status(diagnostics, "g2vlm: inference")) and "stale" in found.message
                           and found, 10, "inference without input is not reported stale")
    assert inference.level == WARN and cam.name in inference.message


def test_a_camera_stamped_in_the_future_is_reported_as_a_sync_failure_with_its_skew(start_node, ros_client,
                                                                                   camera):
    live, skewed = camera(size=SMALL), camera(offset_s=10.0, size=SMALL)
    diagnostics = ros_client.collect(DiagnosticArray, "/diagnostics", RELIABLE)
    start_node(backend="placeholder", cameras=[live.name, skewed.name], input_qos="reliable", camera_timeout_s=1.0)
    entry = wait_until(lambda: (found := status(diagnostics, "g2vlm: inference")) and found.level == WARN
                       and "no synchronized set" in found.message and found, 15, "no sync failure reported")
    # the skew is between the two cameras' newest frames: 10 s, give or take the frames in flight on a busy machine
    skew = re.search(rf"camera '{skewed.name}' is stamped ([0-9.]+) s after", entry.message)
    assert skew and float(skew.group(1)) == pytest.approx(10.0, abs=0.5), entry.message
    assert value(entry, "synchronized_sets") == "0"


def test_inference_that_completes_no_window_is_reported_stale(start_node, ros_client, camera):
    cam = camera(size=SMALL)
    diagnostics = ros_client.collect(DiagnosticArray, "/diagnostics", RELIABLE)
    start_node(backend=FAULTY, cameras=[cam.name], input_qos="reliable", inference_timeout_s=1.5,
               extra_env=fault_env("slow_30"))
    # until the camera's first images arrive (discovery on a busy machine can take longer than the timeout) the
    # stale window is blamed on the camera, rightly; then on the model
    entry = wait_until(lambda: (found := status(diagnostics, "g2vlm: inference")) and "stale" in found.message
                       and "the model has not finished a window" in found.message and found, 15,
                       "a hung model is not reported as stale")
    assert entry.level == WARN


def test_camera_info_is_rescaled_or_ignored_never_contradicting_the_depth_image(start_node, ros_client):
    cam = camera_name()
    images = ros_client.node.create_publisher(Image, f"/{cam}/image_raw", RELIABLE)
    infos = ros_client.node.create_publisher(CameraInfo, f"/{cam}/camera_info", RELIABLE)
    depth = ros_client.collect(Image, f"/g2vlm/{cam}/depth_relative", RELIABLE)
    republished = ros_client.collect(CameraInfo, f"/g2vlm/{cam}/camera_info", RELIABLE)
    node = start_node(backend="placeholder", cameras=[cam], input_qos="reliable")

    def send(info_width: int, info_height: int) -> None:
        info = CameraInfo(header=Header(frame_id="x"), width=info_width, height=info_height)
        fx = info_width * 0.8
        info.k = [fx, 0.0, info_width / 2, 0.0, fx, info_height / 2, 0.0, 0.0, 1.0]
        info.p = [fx, 0.0, info_width / 2, 0.0, 0.0, fx, info_height / 2, 0.0, 0.0, 0.0, 1.0, 0.0]
        infos.publish(info)
        time.sleep(0.2)
        header = Header(frame_id=f"{cam}_optical", stamp=ros_client.node.get_clock().now().to_msg())
        images.publish(rgb_image((9, 9, 9), header, width=64, height=48))

    given = (128 * 0.8, 128 * 0.8 / 2)  # fx as sent, and rescaled to the images
    # same aspect ratio: the intrinsics rescaled to the 64x48 images
    wait_until(lambda: republished and republished[-1].k[0] == given[1], 20, "no rescaled camera_info out",
               action=lambda: send(128, 96))
    # another aspect ratio: the model's intrinsics for these images, never the info's
    wait_until(lambda: republished[-1].k[0] not in given, 20, "the mismatched camera_info is still used",
               action=lambda: send(128, 72))
    assert all((info.width, info.height) == (64, 48) for info in republished)
    assert all((d.width, d.height) == (64, 48) for d in depth)
    log = node.log()
    assert "intrinsics are rescaled" in log and "another aspect ratio" in log and "ignored" in log


STATIC_TF = """
import sys, time, rclpy
from geometry_msgs.msg import TransformStamped
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from tf2_msgs.msg import TFMessage
rclpy.init()
node = rclpy.create_node('robot_static_tf')
qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
publisher = node.create_publisher(TFMessage, '/tf_static', qos)
transforms = []
for pair in sys.argv[1:]:
    parent, child = pair.split('>')
    t = TransformStamped()
    t.header.frame_id, t.child_frame_id = parent, child
    t.header.stamp = node.get_clock().now().to_msg()
    t.transform.rotation.w = 1.0
    transforms.append(t)
publisher.publish(TFMessage(transforms=transforms))
print('published', flush=True)
rclpy.spin(node)
"""

TF_RECORDER = """
import json, rclpy
from tf2_msgs.msg import TFMessage
rclpy.init()
node = rclpy.create_node('tf_recorder')
def on_tf(msg):
    for t in msg.transforms:
        print(json.dumps([t.header.frame_id, t.child_frame_id]), flush=True)
node.create_subscription(TFMessage, '/tf', on_tf, 100)
print('listening', flush=True)
rclpy.spin(node)
"""


def _process(script: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    import os

    process = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, **env})
    assert process.stdout.readline().strip() in ("published", "listening")
    return process


def test_node_frames_never_re_parent_robot_frames_and_clashes_are_refused(start_node, ros_client, tf2_msgs_env,
                                                                         camera):
    """Drivers (and play) call their optical frames <camera>_optical: the node's own frames carry frame_prefix, so
    the robot's frames keep their parents. A frame the node would publish that is already in the tree fails
    configure; one that another node starts publishing later turns diagnostics to ERROR."""
    cam = camera(size=SMALL)
    robot = _process(STATIC_TF, [f"base_link>{cam.name}_optical", "odom>base_link"], tf2_msgs_env)
    recorder = _process(TF_RECORDER, [], tf2_msgs_env)
    others: list[subprocess.Popen] = []
    try:
        depth = ros_client.collect(Image, f"/g2vlm/{cam.name}/depth_relative", RELIABLE)
        diagnostics = ros_client.collect(DiagnosticArray, "/diagnostics", RELIABLE)
        node = start_node(backend="placeholder", cameras=[cam.name], input_qos="reliable", extra_env=tf2_msgs_env)
        wait_until(lambda: len(depth) >= 5, 20, f"no output:\n{node.log()[-3000:]}")
        others.append(_process(STATIC_TF, [f"base_link>g2vlm/{cam.name}_optical"], tf2_msgs_env))
        entry = wait_until(lambda: (found := status(diagnostics, "g2vlm: inference")) and found.level == ERROR
                           and found, 20, "a second publisher of the node's frame is not reported")
        assert f"'g2vlm/{cam.name}_optical' under 'base_link'" in entry.message, entry.message
        node.stop()
        recorder.kill()  # what it printed stays in the pipe (flushed per line); a rclpy process may ignore SIGTERM
        pairs = [json.loads(line) for line in recorder.communicate(timeout=10)[0].splitlines() if line.startswith("[")]
        assert ["g2vlm_map", f"g2vlm/{cam.name}_optical"] in pairs
        children = {child for parent, child in pairs if parent == "g2vlm_map"}
        assert children == {f"g2vlm/{cam.name}_optical"}, children  # never base_link, odom or the driver's frame

        clash = camera_name()
        others.append(_process(STATIC_TF, [f"base_link>g2vlm/{clash}_optical"], tf2_msgs_env))
        # configured once discovery is done, as a lifecycle manager would: the tree is then there to be read
        # in a namespace of its own: /g2vlm/change_state may still be matched to the node stopped above, and a
        # request sent there is lost
        failing = start_node(backend="placeholder", cameras=[clash], autostart=False, extra_env=tf2_msgs_env,
                             ros_args=("-r", f"__ns:=/{clash}"))
        time.sleep(2.0)
        change = ros_client.call(ChangeState, f"/{clash}/g2vlm/change_state",
                                 ChangeState.Request(transition=Transition(id=Transition.TRANSITION_CONFIGURE)),
                                 timeout_s=30)
        log = failing.log()
        assert not change.success and "configure failed" in log, log
        assert f"'g2vlm/{clash}_optical'" in log and "frame_prefix" in log, log
    finally:
        for process in [robot, recorder, *others]:
            process.kill()
