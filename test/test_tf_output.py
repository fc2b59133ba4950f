"""/tf output through a plain tf2_msgs publisher, checked from a separate listener process.

tf2_msgs is not on PyPI: conftest's tf2_msgs_env builds a test-only package with the same
TFMessage definition and gives it to the node and the listener only.
"""
import json
import os
import subprocess
import sys
import uuid

import pytest
from geometry_msgs.msg import PoseStamped
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from conftest import wait_until
from test_node_process import rgb_image, stamped

LISTENER = """
import json, sys, rclpy
from tf2_msgs.msg import TFMessage
rclpy.init()
node = rclpy.create_node('tf_listener')
def on_tf(msg):
    for t in msg.transforms:
        if t.child_frame_id == sys.argv[1]:
            stamp = t.header.stamp
            print(json.dumps({'parent': t.header.frame_id, 'child': t.child_frame_id, 'sec': stamp.sec,
                              'nanosec': stamp.nanosec, 'x': t.transform.translation.x,
                              'qw': t.transform.rotation.w}), flush=True)
            raise SystemExit(0)
node.create_subscription(TFMessage, '/tf', on_tf, 100)
print('listening', flush=True)
rclpy.spin(node)
"""


def test_transforms_reach_tf_with_world_parent_camera_child_and_source_stamp(start_node, ros_client, tf2_msgs_env):
    camera = f"tf{uuid.uuid4().hex[:6]}"
    node = start_node(backend="placeholder", cameras=[camera, f"{camera}b"], window_size=1, extra_env=tf2_msgs_env)
    assert "TF output" not in node.log(), "the node should have found tf2_msgs"
    listener = subprocess.Popen([sys.executable, "-c", LISTENER, f"g2vlm/{camera}b_optical"],
                                env={**os.environ, **tf2_msgs_env}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    try:
        assert listener.stdout.readline().strip() == "listening"
        poses = ros_client.collect(PoseStamped, f"/g2vlm/{camera}b/pose")
        pubs = [ros_client.node.create_publisher(Image, f"/{name}/image_raw", qos_profile_sensor_data)
                for name in (camera, f"{camera}b")]

        def publish():
            for publisher, name in zip(pubs, (camera, f"{camera}b"), strict=True):
                publisher.publish(rgb_image((50, 50, 50), stamped(ros_client, f"{name}_optical"), width=64, height=48))

        wait_until(lambda: listener.poll() is not None, 20, "no transform on /tf", action=publish, period_s=0.1)
        transform = json.loads(listener.stdout.readline())
    finally:
        listener.kill()
    assert transform["parent"] == "g2vlm_map" and transform["child"] == f"g2vlm/{camera}b_optical"
    assert transform["sec"] > 0
    # the camera's predicted pose in the map, as published on its pose topic for the same image (the placeholder's
    # pattern only translates: every view is level)
    stamp = (transform["sec"], transform["nanosec"])
    same = wait_until(lambda: [p for p in poses if (p.header.stamp.sec, p.header.stamp.nanosec) == stamp], 10,
                      "no pose message for the transform's image")
    assert transform["x"] == pytest.approx(same[0].pose.position.x) and transform["qw"] == pytest.approx(1.0)
