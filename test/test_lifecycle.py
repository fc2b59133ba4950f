"""The managed node's lifecycle, driven over its lifecycle services from another process."""
from __future__ import annotations

import uuid

from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from conftest import wait_until
from test_node_process import rgb_image, stamped


def change(ros_client, transition_id: int) -> bool:
    request = ChangeState.Request(transition=Transition(id=transition_id))
    return ros_client.call(ChangeState, "/g2vlm/change_state", request, timeout_s=30).success


def state(ros_client) -> int:
    return ros_client.call(GetState, "/g2vlm/get_state", GetState.Request()).current_state.id


def model_status(diagnostics: list[DiagnosticArray]):
    statuses = [s for array in diagnostics for s in array.status if s.name == "g2vlm: model"]
    return statuses[-1] if statuses else None


def test_transitions_start_stop_and_release_the_pipeline(start_node, ros_client):
    camera = f"lc{uuid.uuid4().hex[:6]}"
    node = start_node(backend="placeholder", cameras=[camera], autostart=False)
    depth = ros_client.collect(Image, f"/g2vlm/{camera}/depth_relative")
    diagnostics = ros_client.collect(DiagnosticArray, "/diagnostics")
    publisher = ros_client.node.create_publisher(Image, f"/{camera}/image_raw", qos_profile_sensor_data)

    def publish():
        publisher.publish(rgb_image((7, 7, 7), stamped(ros_client, "opt"), width=64, height=48))

    def publish_for(seconds: float) -> None:
        try:
            wait_until(lambda: False, seconds, action=publish, period_s=0.05)
        except AssertionError:
            pass

    assert state(ros_client) == State.PRIMARY_STATE_UNCONFIGURED
    publish_for(1.0)
    assert not depth, "an unconfigured node must not publish"

    assert change(ros_client, Transition.TRANSITION_CONFIGURE)
    assert state(ros_client) == State.PRIMARY_STATE_INACTIVE
    publish_for(1.0)
    assert not depth, "an inactive node must not publish"

    assert change(ros_client, Transition.TRANSITION_ACTIVATE)
    wait_until(lambda: depth, 20, "no output after activate", action=publish)

    assert change(ros_client, Transition.TRANSITION_DEACTIVATE)
    publish_for(0.5)  # let anything in flight arrive
    count = len(depth)
    publish_for(1.0)
    assert len(depth) == count, "a deactivated node must stop publishing"

    assert change(ros_client, Transition.TRANSITION_CLEANUP)
    assert state(ros_client) == State.PRIMARY_STATE_UNCONFIGURED
    wait_until(lambda: model_status(diagnostics) is not None and "cleaned up" in model_status(diagnostics).message,
               10, "diagnostics do not show the released model")

    # a second cycle works as the first
    assert change(ros_client, Transition.TRANSITION_CONFIGURE) and change(ros_client, Transition.TRANSITION_ACTIVATE)
    count = len(depth)
    wait_until(lambda: len(depth) > count, 20, "no output after the second activate", action=publish)
    assert change(ros_client, Transition.TRANSITION_ACTIVE_SHUTDOWN)
    assert state(ros_client) == State.PRIMARY_STATE_FINALIZED
    assert node.alive()


def test_failed_configure_keeps_the_process_and_says_why(start_node, ros_client):
    camera = f"lf{uuid.uuid4().hex[:6]}"
    node = start_node(backend="torch", checkpoint_path="/nonexistent/g2vlm", cameras=[camera], autostart=False)
    diagnostics = ros_client.collect(DiagnosticArray, "/diagnostics")
    assert not change(ros_client, Transition.TRANSITION_CONFIGURE)
    assert state(ros_client) == State.PRIMARY_STATE_UNCONFIGURED
    assert "configure failed" in node.log() and "/nonexistent/g2vlm" in node.log()
    wait_until(lambda: model_status(diagnostics) is not None
               and "/nonexistent/g2vlm" in model_status(diagnostics).message,
               10, "diagnostics do not carry the configure failure")
    assert not change(ros_client, Transition.TRANSITION_ACTIVATE), "activate needs a configured node"
    assert node.alive()
