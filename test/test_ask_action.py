"""The ask_stream action server and the `ask` CLI, across processes.

test/fixtures/ask_action_node.py serves `~/ask` and `~/ask_stream` (AskActionServer) with a scripted
answer_fn in its own process; this process is the client, through an ActionClient or the installed
`ask` executable, so goals, feedback, cancel and results really go over DDS.
"""
from __future__ import annotations

import math
import signal
import subprocess
import sys
import threading

import pytest

from conftest import FIXTURES, PACKAGE_LIB, wait_until

NODE = "ask_fixture"


class FixtureProcess:
    """ask_action_node.py in its own process; its output lines are collected by a thread."""

    def __init__(self):
        self.process = subprocess.Popen(
            [sys.executable, str(FIXTURES / "ask_action_node.py"), NODE],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = read_lines(self.process)
        wait_until(lambda: "ready" in self.lines or self.process.poll() is not None, 20)
        assert self.process.poll() is None, "fixture node died:\n" + self.output()

    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError("fixture node did not stop on SIGINT:\n" + self.output()) from None


def read_lines(process: subprocess.Popen) -> list[str]:
    lines: list[str] = []

    def read() -> None:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return lines


@pytest.fixture(scope="module")
def ask_node():
    node = FixtureProcess()
    yield node
    assert node.stop() == 0, "fixture node failed:\n" + node.output()


@pytest.fixture(scope="module")
def action_client(ros_client, ask_node):
    from rclpy.action import ActionClient

    from g2vlm_interfaces.action import Ask

    client = ActionClient(ros_client.node, Ask, f"/{NODE}/ask_stream")
    assert client.wait_for_server(timeout_sec=15), "ask_stream action not available"
    yield client
    client.destroy()


def send_goal(client, question: str, cameras=(), timeout_s: float = 0.0):
    """Sends a goal; returns (goal handle, feedback list that fills as feedback arrives)."""
    from g2vlm_interfaces.action import Ask

    feedback: list = []
    sent = client.send_goal_async(Ask.Goal(question=question, cameras=list(cameras), timeout_s=timeout_s),
                                  feedback_callback=lambda message: feedback.append(message.feedback))
    wait_until(sent.done, 10, f"no goal response for '{question}'")
    goal_handle = sent.result()
    assert goal_handle.accepted
    return goal_handle, feedback


def wait_result(goal_handle):
    result_future = goal_handle.get_result_async()
    wait_until(result_future.done, 10, "no result")
    return result_future.result()


def test_goal_streams_feedback_and_succeeds_with_the_response_fields(action_client):
    from action_msgs.msg import GoalStatus

    goal_handle, feedback = send_goal(action_client, "How far is the chair?", cameras=["front"], timeout_s=2.5)
    outcome = wait_result(goal_handle)
    assert outcome.status == GoalStatus.STATUS_SUCCEEDED
    result = outcome.result
    assert result.success and result.error == ""
    assert result.answer == "The chair is 1.5 m away."
    assert result.reasoning == "cameras=front timeout=2.5"  # the goal's fields reached answer_fn
    assert (result.value, result.unit, result.frame_id) == (1.5, "m", "map")
    assert [(p.x, p.y, p.z) for p in result.points] == [(1.0, 2.0, 0.5)]
    assert (result.stamp.sec, result.stamp.nanosec) == (123, 450000000)
    # Feedback and result travel on different channels, so the last chunk may trail the result.
    wait_until(lambda: sum(message.stage == "generating" for message in feedback) == 3, 5, f"feedback: {feedback}")
    stages = [message.stage for message in feedback]
    # "waiting" is sent right after acceptance; on a fresh connection it may precede the feedback match.
    assert stages[-4:] == ["grounding"] + ["generating"] * 3 and set(stages[:-4]) <= {"waiting"}, stages
    assert [message.partial_answer for message in feedback[-3:]] == [
        "The chair", "The chair is 1.5 m", "The chair is 1.5 m away."]


def test_cancelled_goal_ends_canceled_with_the_partial_answer(action_client, ask_node):
    from action_msgs.msg import GoalStatus

    goal_handle, feedback = send_goal(action_client, "slow question")
    wait_until(lambda: any(message.stage == "generating" for message in feedback), 10, "no generating feedback")
    cancel = goal_handle.cancel_goal_async()
    wait_until(cancel.done, 10, "no cancel response")
    assert len(cancel.result().goals_canceling) == 1
    outcome = wait_result(goal_handle)
    assert outcome.status == GoalStatus.STATUS_CANCELED
    assert not outcome.result.success and outcome.result.error == "cancelled"
    assert outcome.result.answer.startswith(" chunk0") and "chunk299" not in outcome.result.answer
    wait_until(lambda: "cancelled: slow question" in ask_node.lines, 5, "answer_fn never saw is_cancelled()")


def test_raising_answer_fn_aborts_the_goal_and_the_server_keeps_serving(action_client, ask_node):
    from action_msgs.msg import GoalStatus

    outcome = wait_result(send_goal(action_client, "please fail")[0])
    assert outcome.status == GoalStatus.STATUS_ABORTED
    assert not outcome.result.success and outcome.result.error == "RuntimeError: backend exploded"
    assert math.isnan(outcome.result.value)
    # A refusal is a normal outcome (succeeded goal, success false), and it shows the node still serves.
    outcome = wait_result(send_goal(action_client, "please refuse")[0])
    assert outcome.status == GoalStatus.STATUS_SUCCEEDED
    assert not outcome.result.success and outcome.result.error == "no perception window yet"
    assert ask_node.process.poll() is None


def test_destroy_twice_is_harmless():
    import rclpy

    from g2vlm_ros.ros.ask_action import AskActionServer

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("ask_action_destroy_test", context=context)
        server = AskActionServer(node, lambda request, publish_feedback, is_cancelled: None)
        waitables = len(list(node.waitables))
        server.destroy()
        assert len(list(node.waitables)) == waitables - 1  # the action server left the node
        server.destroy()  # a second time: nothing left to destroy, and no error
        assert len(list(node.waitables)) == waitables - 1
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def ask(*args: str, sigint_ignored: bool = False) -> subprocess.Popen:
    # a shell script's background job starts with SIGINT ignored, and Python then keeps ignoring it
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
    return subprocess.Popen([str(PACKAGE_LIB / "ask"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=ignore)


def test_ask_cli_exit_codes_and_output(ask_node):
    node = f"/{NODE}"
    # Independent runs in parallel: each CLI start (interpreter, rclpy, discovery) takes about a second.
    runs = {
        "service": ("How far is the chair?", "--node", node, "--camera", "front", "--camera", "left", "--timeout", "2"),
        "stream": ("How far is the chair?", "--node", node, "--stream"),
        "refused": ("please refuse", "--node", node),
        "no_service": ("How far?", "--node", "/nobody", "--wait", "1"),
        "no_action": ("How far?", "--node", "/nobody", "--wait", "1", "--stream"),
    }
    started = {name: ask(*args) for name, args in runs.items()}
    results = {name: (process.wait(30), process.stdout.read()) for name, process in started.items()}
    for name, (code, out) in results.items():
        # Seen once under load: the DDS middleware crashed (segmentation fault) while rclpy created the CLI's
        # node, before any code of the CLI ran. A native crash there is rerun once; everything the CLI does
        # (exit codes, output) is checked as before, and a second crash fails the test.
        if code < 0 and "in create_node" in out:
            rerun = ask(*runs[name])
            results[name] = (rerun.wait(30), rerun.stdout.read())

    code, out = results["service"]
    assert code == 0, out
    for line in ("answer:    The chair is 1.5 m away.", "value:     1.5 m", "reasoning: cameras=front,left timeout=2",
                 "frame_id:  map", "stamp:     123.450000000"):
        assert line in out.splitlines(), out
    code, out = results["stream"]
    assert code == 0, out
    assert "[generating]\nThe chair is 1.5 m away.\n" in out and "value:     1.5 m" in out, out
    code, out = results["refused"]
    assert code == 1 and "error: no perception window yet" in out, out
    code, out = results["no_service"]
    assert code == 2 and "service /nobody/ask not available" in out, out
    code, out = results["no_action"]
    assert code == 2 and "action /nobody/ask_stream not available" in out, out


@pytest.mark.parametrize("sigint_ignored", [False, True], ids=["sigint-default", "sigint-inherited-ignored"])
def test_ask_cli_interrupt_cancels_the_streamed_goal(ask_node, sigint_ignored):
    process = ask("slow cli question", "--node", f"/{NODE}", "--stream", sigint_ignored=sigint_ignored)
    lines = read_lines(process)
    try:
        wait_until(lambda: "[generating]" in lines, 15, "no generating feedback from the CLI")
    finally:
        process.send_signal(signal.SIGINT)
    assert process.wait(10) == 130, "\n".join(lines)
    wait_until(lambda: "cancelled: slow cli question" in ask_node.lines, 5, "the goal was not cancelled")
