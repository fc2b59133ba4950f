"""Asks the g2vlm node a spatial question from the command line and prints the answer.

  ask "How far is (320, 240)?"
  ask "Which object is closest?" --camera front --camera left --timeout 5
  ask "Describe the scene" --stream            (the answer text is printed while it is generated)
  ros2 run g2vlm_ros ask "How far is (320, 240)?" --node /robot/g2vlm

Without --stream the service <node>/ask is called; with it the action <node>/ask_stream, whose
feedback (stage and partial answer) is printed as it arrives; Ctrl-C then cancels the goal.
Exit status: 0 answered, 1 the node refused (or could not answer) the question, 2 the service or
action did not show up within --wait seconds, 130 interrupted. Plain rclpy, so it needs no ros2cli.
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
from typing import Optional, TextIO

EXIT_ANSWERED, EXIT_REFUSED, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 2, 130


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ask", description="Ask the g2vlm node a spatial question (service <node>/ask, or the "
                                "action <node>/ask_stream with --stream).")
    parser.add_argument("question", help="the question, in plain language")
    parser.add_argument("--camera", dest="cameras", action="append", default=[], metavar="NAME",
                        help="answer over this camera (repeatable); default: all cameras of the node")
    parser.add_argument("--timeout", type=float, default=0.0, metavar="S",
                        help="per-question timeout in seconds; 0 (default) uses the node's ask_timeout_s")
    parser.add_argument("--node", default="/g2vlm", help="the node's fully qualified name (default /g2vlm)")
    parser.add_argument("--stream", action="store_true",
                        help="use the ask_stream action and print the answer while it is generated")
    parser.add_argument("--wait", type=float, default=10.0, metavar="S",
                        help="seconds to wait for the service/action to appear (default 10)")
    return parser.parse_args(argv)


def format_stamp(stamp) -> str:
    # Exact decimal seconds; float seconds would round off the nanoseconds of a wall-clock stamp.
    return f"{stamp.sec}.{stamp.nanosec:09d}"


def print_answer(response, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Prints an Ask response (or action result); returns the exit status it stands for."""
    if not response.success:
        print(f"error: {response.error or 'the node gave no reason'}", file=err)
        if response.reasoning:
            print(f"reasoning: {response.reasoning}", file=err)
        return EXIT_REFUSED
    print(f"answer:    {response.answer}", file=out)
    if not math.isnan(response.value):
        print(f"value:     {response.value:g} {response.unit}".rstrip(), file=out)
    if response.reasoning:
        print(f"reasoning: {response.reasoning}", file=out)
    for point in response.points:
        print(f"point:     ({point.x:.3f}, {point.y:.3f}, {point.z:.3f})", file=out)
    print(f"frame_id:  {response.frame_id}", file=out)
    print(f"stamp:     {format_stamp(response.stamp)}", file=out)
    return EXIT_ANSWERED


class FeedbackPrinter:
    """Prints streamed feedback: a `[stage]` line when the stage changes, and the partial answer as it
    grows (only the new text when it extends what was printed, the whole text on a new line otherwise)."""

    def __init__(self, out: TextIO = sys.stdout):
        self.out = out
        self.stage: Optional[str] = None
        self.text = ""
        self.muted = False  # set once the result is in or the user interrupted: late feedback is noise
        self._line_open = False

    def __call__(self, partial_answer: str, stage: str) -> None:
        if self.muted:
            return
        if stage != self.stage:
            self.end_line()
            self.out.write(f"[{stage}]\n")
            self.stage = stage
        if partial_answer.startswith(self.text):
            self.out.write(partial_answer[len(self.text):])
        else:
            self.end_line()
            self.out.write(partial_answer)
        self._line_open = self._line_open or bool(partial_answer)
        self.text = partial_answer
        self.out.flush()

    def end_line(self) -> None:
        if self._line_open:
            self.out.write("\n")
            self._line_open = False
        # Text after a line break starts over, so the next feedback prints its whole partial answer.
        self.text = ""


def spin_until_done(executor, future) -> None:
    # Short spins instead of one blocking spin: a blocking wait inside rcl would hold off Ctrl-C
    # (KeyboardInterrupt) until the next message arrives.
    while not future.done():
        executor.spin_once(timeout_sec=0.1)


def ask_service(node, executor, args, request) -> int:
    from g2vlm_interfaces.srv import Ask

    name = f"{args.node.rstrip('/')}/ask"
    client = node.create_client(Ask, name)
    if not client.wait_for_service(timeout_sec=args.wait):
        print(f"error: service {name} not available after {args.wait:g} s", file=sys.stderr)
        return EXIT_UNAVAILABLE
    future = client.call_async(request)
    spin_until_done(executor, future)
    return print_answer(future.result())


def ask_action(node, executor, args, request) -> int:
    import time

    from action_msgs.msg import GoalStatus
    from rclpy.action import ActionClient

    from g2vlm_interfaces.action import Ask as AskAction

    name = f"{args.node.rstrip('/')}/ask_stream"
    client = ActionClient(node, AskAction, name)
    if not client.wait_for_server(timeout_sec=args.wait):
        print(f"error: action {name} not available after {args.wait:g} s", file=sys.stderr)
        return EXIT_UNAVAILABLE
    printer = FeedbackPrinter()
    goal = AskAction.Goal(question=request.question, cameras=request.cameras, timeout_s=request.timeout_s)
    sent = client.send_goal_async(
        goal, feedback_callback=lambda message: printer(message.feedback.partial_answer, message.feedback.stage))
    spin_until_done(executor, sent)
    goal_handle = sent.result()
    if not goal_handle.accepted:
        print(f"error: {name} rejected the goal", file=sys.stderr)
        return EXIT_REFUSED
    result_future = goal_handle.get_result_async()
    try:
        spin_until_done(executor, result_future)
    except KeyboardInterrupt:
        # Tell the node to stop generating rather than leaving the answer running for nobody.
        printer.end_line()
        printer.muted = True
        print("interrupted: cancelling the goal", file=sys.stderr)
        cancel = goal_handle.cancel_goal_async()
        deadline = time.monotonic() + 2.0
        while not cancel.done() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        return EXIT_INTERRUPTED
    printer.end_line()
    printer.muted = True
    outcome = result_future.result()
    if outcome.status == GoalStatus.STATUS_ABORTED and not outcome.result.error:
        outcome.result.error = "the goal was aborted"
    return print_answer(outcome.result)


def main(argv: Optional[list[str]] = None) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions
    from rclpy.utilities import remove_ros_args

    from g2vlm_interfaces.srv import Ask

    argv = sys.argv if argv is None else ["ask", *argv]
    args = parse_args(remove_ros_args(argv)[1:])
    request = Ask.Request(question=args.question, cameras=args.cameras, timeout_s=args.timeout)

    # An own context keeps main() usable from other Python code that already initialised rclpy.
    context = rclpy.Context()
    # rclpy's own SIGINT handler would shut the context down, leaving no way to cancel a running goal;
    # Python's KeyboardInterrupt lets ask_action() cancel first.
    rclpy.init(args=argv, context=context, signal_handler_options=SignalHandlerOptions.NO)
    # Python leaves SIGINT ignored when it started ignored (a script's background job inherits that), and then
    # Ctrl-C / kill -INT could not cancel the goal: ask for the KeyboardInterrupt explicitly.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    node = rclpy.create_node(f"ask_cli_{os.getpid()}", context=context, start_parameter_services=False)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        if args.stream:
            return ask_action(node, executor, args, request)
        return ask_service(node, executor, args, request)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


if __name__ == "__main__":
    sys.exit(main())
