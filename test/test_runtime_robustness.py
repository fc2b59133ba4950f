"""Robustness across processes, round 2: runtime parameters, lifecycle storms, exceptions in callbacks, bursts
of action goals, shutdown. The node runs in its own process; this process is its clients, over DDS.
"""
from __future__ import annotations

import random
import signal
import threading
import time

from action_msgs.msg import GoalStatus
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.action import ActionClient
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from test_faults import RELIABLE, WARN, fault_env, status, value

from conftest import wait_until
from g2vlm_interfaces.action import Ask as AskAction
from g2vlm_interfaces.srv import Ask

FAULTY = "plugin:faulty_backend:FaultyBackend"
SMALL = (64, 48)  # images: enough for the placeholder backend, cheap to send at 15-30 Hz


def parameter(name: str, value_) -> Parameter:
    if isinstance(value_, bool):
        return Parameter(name=name, value=ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value_))
    if isinstance(value_, int):
        return Parameter(name=name, value=ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value_))
    if isinstance(value_, float):
        return Parameter(name=name, value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value_))
    return Parameter(name=name, value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value_))


def set_parameter(ros_client, name: str, value_):
    response = ros_client.call(SetParameters, "/g2vlm/set_parameters",
                               SetParameters.Request(parameters=[parameter(name, value_)]))
    return response.results[0]


# every runtime-changeable parameter: (default, a value that turns its behaviour on)
RUNTIME_PARAMETERS = {
    "keyframe_min_interval_s": (0.0, 0.3),
    "keyframe_min_image_change": (0.0, 0.05),
    "max_rate_hz": (10.0, 3.0),
    "fixed_scale": (1.0, 2.5),
    "scale_max_age_s": (10.0, 0.5),
    "cloud_stride": (2, 5),
    "voxel_size": (0.0, 0.05),
    "confidence_threshold": (0.0, 0.5),
    "max_answer_tokens": (128, 8),
    "ask_timeout_s": (10.0, 1.0),
    "imu_max_age_s": (0.5, 0.1),
    "out_of_memory_policy": ("reduce_window", "skip_window"),
    "camera_timeout_s": (2.0, 0.5),
    "inference_timeout_s": (15.0, 0.5),
}
NEEDS_ODOM = {"keyframe_min_motion_m": 0.2, "keyframe_min_rotation_deg": 10.0}


def test_every_runtime_parameter_toggled_while_frames_flow_keeps_the_node_publishing(start_node, ros_client, camera):
    """Each runtime-changeable parameter off -> on -> off with frames flowing: the node stays up and publishes after
    every change (turning keyframe_min_image_change on used to kill it: old keyframes had no thumbnail)."""
    cam = camera(size=SMALL)
    depth = ros_client.collect(Image, f"/g2vlm/{cam.name}/depth_relative", RELIABLE)
    node = start_node(backend="placeholder", cameras=[cam.name], input_qos="reliable", window_size=2)
    wait_until(lambda: len(depth) >= 3, 20, "no output before the changes")
    for name, (default, on) in RUNTIME_PARAMETERS.items():
        for setting in (on, default):
            result = set_parameter(ros_client, name, setting)
            assert result.successful, f"{name} := {setting} refused: {result.reason}"
            target = len(depth) + 2
            wait_until(lambda target=target: len(depth) >= target or not node.alive(), 15,
                       f"no output after {name} := {setting}")
            assert node.alive(), f"node died after {name} := {setting}:\n{node.log()[-3000:]}"
    # content criteria that read motion from TF are refused at runtime exactly as at start-up
    for name, setting in NEEDS_ODOM.items():
        result = set_parameter(ros_client, name, setting)
        assert not result.successful and "need parameter 'odom_frame'" in result.reason, result.reason
    assert "Traceback" not in node.log() and "raised" not in node.log(), node.log()


def test_runtime_keyframe_interval_takes_effect(start_node, ros_client, camera):
    """keyframe_min_interval_s set at runtime spaces the keyframes (the assembler cached the start-up value)."""
    cam = camera(rate_hz=10.0, size=SMALL)
    diagnostics = ros_client.collect(DiagnosticArray, "/diagnostics", RELIABLE)
    start_node(backend="placeholder", cameras=[cam.name], input_qos="reliable", window_size=2,
               diagnostics_period_s=0.2)

    def keyframes_per_s(seconds: float) -> float:
        def keyframes() -> int:
            entry = status(diagnostics, "g2vlm: inference")
            return int(value(entry, "keyframes") or 0)
        wait_until(keyframes, 20, "no keyframes in diagnostics")
        start_count, start = keyframes(), time.monotonic()
        time.sleep(seconds)
        return (keyframes() - start_count) / (time.monotonic() - start)

    before = keyframes_per_s(3.0)
    assert set_parameter(ros_client, "keyframe_min_interval_s", 1.0).successful
    after = keyframes_per_s(4.0)
    print(f"keyframes per second: {before:.2f} before, {after:.2f} with keyframe_min_interval_s 1.0")
    assert after <= 1.3 and before > 2 * after, (before, after)


TRANSITIONS = (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE, Transition.TRANSITION_DEACTIVATE,
               Transition.TRANSITION_CLEANUP)


def test_three_clients_sending_random_transitions_with_questions_in_flight(start_node, ros_client, camera_rig):
    """3 clients x 100 random lifecycle transitions, questions and frames all the while: entities created and
    destroyed by transitions used to race the executor's wait set and end the process (InvalidHandle)."""
    # two cameras with camera_info at 15 Hz: four subscriptions (and their event handlers) made and destroyed per
    # activate/deactivate, and the executor woken often, which is when it walks its entity lists. Triggered
    # together: two timers of this busy client drifted a tick apart, and then rightly no set formed after the storm
    cams = camera_rig(2, rate_hz=15.0, info_frame="info", size=SMALL)
    # the fault plugin widens the race window (fixtures/faulty_backend.py: pause_entity_walk), so that a missing
    # serialization fails within the 300 transitions instead of once in a while
    node = start_node(backend=FAULTY, cameras=[cam.name for cam in cams], input_qos="reliable",
                      extra_env=fault_env("pause_entity_walk"))
    stop = threading.Event()
    failures: list[str] = []

    def transitions(seed: int) -> None:
        rng = random.Random(seed)
        client = ros_client.node.create_client(ChangeState, "/g2vlm/change_state")
        if not client.wait_for_service(timeout_sec=30):  # a request sent before discovery is lost
            failures.append("the change_state service did not show up")
            return
        for _ in range(100):
            future = client.call_async(ChangeState.Request(transition=Transition(id=rng.choice(TRANSITIONS))))
            deadline = time.monotonic() + 30
            while not future.done() and time.monotonic() < deadline:
                time.sleep(0.002)
            if not future.done():
                failures.append(f"a transition got no response in 30 s (node alive: {node.alive()})")
                return

    def questions() -> None:
        client = ros_client.node.create_client(Ask, "/g2vlm/ask")
        client.wait_for_service(timeout_sec=30)
        while not stop.is_set():
            client.call_async(Ask.Request(question="What is the depth at (10, 10)?"))
            time.sleep(0.02)

    asker = threading.Thread(target=questions, daemon=True)
    asker.start()
    clients = [threading.Thread(target=transitions, args=(seed,)) for seed in range(3)]
    for client in clients:
        client.start()
    for client in clients:
        client.join(300)
    stop.set()
    assert not failures, f"{failures}\n{node.log()[-4000:]}"
    assert node.alive(), node.log()[-5000:]
    log = node.log()
    assert "InvalidHandle" not in log and "Traceback" not in log, log[-5000:]
    # still fully working afterwards. The fault's pauses make each executor pass longer than a 15 Hz frame
    # period: the node skips frames, and cameras taken in different passes get frames of different ticks, which
    # rightly match nothing. At 3 Hz it takes every frame of both.
    cams[0].set_rate(3.0)
    change = ros_client.node.create_client(ChangeState, "/g2vlm/change_state")
    assert change.wait_for_service(timeout_sec=30)
    replies = []
    for transition in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_CLEANUP, Transition.TRANSITION_CONFIGURE,
                       Transition.TRANSITION_ACTIVATE):
        future = change.call_async(ChangeState.Request(transition=Transition(id=transition)))
        wait_until(future.done, 30, "no response to a transition after the storm")
        replies.append((transition, future.result().success))
    depth = ros_client.collect(Image, f"/g2vlm/{cams[0].name}/depth_relative", RELIABLE)
    diagnostics = ros_client.collect(DiagnosticArray, "/diagnostics", RELIABLE)
    try:
        wait_until(lambda: depth, 20, "no output after the storm")
    except AssertionError:
        last = {entry.name: {kv.key: kv.value for kv in entry.values} | {"_": entry.message}
                for array in diagnostics[-3:] for entry in array.status}
        node.process.send_signal(signal.SIGUSR1)  # every thread's stack into the log (spin.py)
        time.sleep(2.0)
        raise AssertionError(f"no output after the storm; replies {replies}; diagnostics {last}\n"
                             f"{node.log()[-30000:]}") from None


def test_slow_image_conversion_neither_starves_a_camera_nor_unsynchronizes_them(start_node, ros_client,
                                                                               camera_rig):
    """Two cameras at 15 Hz whose images take 50 ms each to convert (as large compressed images do). With all
    cameras in one callback group the second got about 3 Hz and most frames of the first matched no set."""
    cams = camera_rig(2, rate_hz=15.0, info_frame="info", size=SMALL)
    start_node(backend=FAULTY, cameras=[cam.name for cam in cams], input_qos="reliable",
               extra_env=fault_env("image_delay_0.05"))
    diagnostics = ros_client.collect(DiagnosticArray, "/diagnostics", RELIABLE)

    def counts() -> tuple[list[int], int]:
        received = [int(value(status(diagnostics, f"g2vlm: camera {cam.name}"), "frames_received")) for cam in cams]
        return received, int(value(status(diagnostics, "g2vlm: inference"), "synchronized_sets"))

    def reported() -> bool:
        names = ["g2vlm: inference"] + [f"g2vlm: camera {cam.name}" for cam in cams]
        return all(status(diagnostics, name) is not None for name in names) and counts()[1] >= 10

    wait_until(reported, 30, "no synchronized sets")
    before = counts()
    time.sleep(5.0)
    after = counts()
    received = [late - early for late, early in zip(after[0], before[0], strict=True)]
    sets = after[1] - before[1]
    assert min(received) >= 0.8 * max(received), f"a camera starved: frames received {received} in 5 s"
    assert sets >= 0.8 * min(received), f"{sets} synchronized sets of {received} frames received in 5 s"


def test_exceptions_in_callbacks_are_contained_logged_throttled_and_counted(start_node, ros_client, camera):
    """A callback that raises (here the camera_info handler, by an injected fault) no longer ends the process: it
    is logged at most once per 2 s per kind, counted in diagnostics, and everything else goes on."""
    cam = camera(info_frame="raise", size=SMALL)
    depth = ros_client.collect(Image, f"/g2vlm/{cam.name}/depth_relative", RELIABLE)
    diagnostics = ros_client.collect(DiagnosticArray, "/diagnostics", RELIABLE)
    node = start_node(backend=FAULTY, cameras=[cam.name], input_qos="reliable",
                      extra_env=fault_env("raise_on_camera_info"))
    wait_until(lambda: len(depth) >= 10, 20, f"no output with a raising callback:\n{node.log()[-3000:]}")
    entry = wait_until(lambda: (found := status(diagnostics, "g2vlm: inference")) and int(
        value(found, "callback_errors") or 0) >= 10 and found, 15, "callback errors not counted")
    assert "scripted camera_info failure" in value(entry, "last_callback_error")
    assert node.alive()
    logged = node.log().count("raised (contained")
    assert 1 <= logged <= 4, f"{logged} log lines for ~20 identical errors: not throttled"


def test_two_hundred_concurrent_action_goals_all_get_an_answer(start_node, ros_client, camera):
    """Every one of 200 goals sent at once is accepted or rejected, and every accepted one gets a result (an answer
    or a refusal such as 'busy'); with the action services' default depth of 10 most never heard back."""
    cam = camera(size=SMALL)
    depth = ros_client.collect(Image, f"/g2vlm/{cam.name}/depth_relative", RELIABLE)
    start_node(backend="placeholder", cameras=[cam.name], input_qos="reliable")
    wait_until(lambda: depth, 20, "no output")
    deep = QoSProfile(depth=500, reliability=ReliabilityPolicy.RELIABLE)  # the client's side must not drop either
    client = ActionClient(ros_client.node, AskAction, "/g2vlm/ask_stream", goal_service_qos_profile=deep,
                          result_service_qos_profile=deep, cancel_service_qos_profile=deep)
    assert client.wait_for_server(timeout_sec=10)
    goals = [client.send_goal_async(AskAction.Goal(question="What is the depth at (10, 10)?")) for _ in range(200)]
    wait_until(lambda: all(goal.done() for goal in goals), 60,
               f"{sum(goal.done() for goal in goals)} of 200 goals got an accept or reject")
    handles = [goal.result() for goal in goals]
    accepted = [handle for handle in handles if handle.accepted]
    results = [handle.get_result_async() for handle in accepted]
    wait_until(lambda: all(result.done() for result in results), 60,
               f"{sum(result.done() for result in results)} of {len(results)} accepted goals got a result")
    outcomes = [result.result() for result in results]
    assert all(o.status in (GoalStatus.STATUS_SUCCEEDED, GoalStatus.STATUS_ABORTED) for o in outcomes)
    answered = sum(o.result.success for o in outcomes)
    refused = [o.result.error for o in outcomes if not o.result.success]
    print(f"200 goals: {len(accepted)} accepted, {answered} answered, {len(refused)} refused with a reason")
    assert answered > 0 and all(refused), "a refusal without its reason"
    client.destroy()


def test_after_shutdown_the_reasons_say_so(start_node, ros_client):
    node = start_node(backend="placeholder")
    change = ros_client.call(ChangeState, "/g2vlm/change_state",
                             ChangeState.Request(transition=Transition(label="shutdown")), timeout_s=20)
    assert change.success
    response = ros_client.call(Ask, "/g2vlm/ask", Ask.Request(question="What is the depth at (10, 10)?"))
    assert not response.success and "shut down" in response.error, response.error
    assert not response.error.rstrip().endswith(":") and "loaded: )" not in response.error, response.error
    assert node.alive()


def test_use_sim_time_without_clock_is_said_once_and_diagnostics_go_on(start_node, ros_client):
    diagnostics = ros_client.collect(DiagnosticArray, "/diagnostics", RELIABLE)
    node = start_node(backend="placeholder", use_sim_time=True)
    entry = wait_until(lambda: (found := status(diagnostics, "g2vlm: inference")) and "no /clock" in found.message
                       and found, 20, "diagnostics do not say that /clock is missing")
    assert entry.level == WARN
    time.sleep(2.5)
    assert node.log().count("no /clock message has arrived") == 1, node.log()


def test_ctrl_c_with_a_window_in_flight_exits_fast(start_node, ros_client, camera):
    """Under `ros2 launch`, a teardown slower than the SIGINT timeout escalates to SIGTERM. With a 30 s window in
    the model, Ctrl-C must not wait for it (cleanup does; exit need not): the bound of 5 s is generous (the
    teardown itself takes well under a second) so that it holds on a loaded machine, and far below 30 s."""
    cam = camera(size=SMALL)
    depth = ros_client.collect(Image, f"/g2vlm/{cam.name}/depth_relative", RELIABLE)
    node = start_node(backend=FAULTY, cameras=[cam.name], input_qos="reliable", extra_env=fault_env("slow_30"))
    time.sleep(1.0)  # the first window is in the model now
    assert not depth
    start = time.monotonic()
    node.process.send_signal(signal.SIGINT)
    code = node.process.wait(30)
    elapsed = time.monotonic() - start
    print(f"teardown with a window in flight: {elapsed:.2f} s")
    assert code == 0 and elapsed < 5.0, (code, elapsed, node.log()[-3000:])
    assert "Traceback" not in node.log()
