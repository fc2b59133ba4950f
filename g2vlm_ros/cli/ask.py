"""Asks the g2vlm node a spatial question from the command line and prints the answer.

  ask "How far is (320, 240)?"
  ask "Which object is closest?" --camera front --camera left --timeout 5
  ask "Describe the scene" --stream            (the answer text is printed while it is generated)
  ask '{"form": "depth", "pixels": [[320, 240]]}' --target-frame base_link   (a typed query, see --schema)
  ask --schema                                 (the JSON Schema of typed queries, e.g. as an LLM tool definition)
  ros2 run g2vlm_ros ask "How far is (320, 240)?" --node /robot/g2vlm
  ROS_NAMESPACE=robot ros2 run g2vlm_ros ask "How far is (320, 240)?"      (the same node)

Without --stream the service <node>/ask is called; with it the action <node>/ask_stream, whose
feedback (stage and partial answer) is printed as it arrives; Ctrl-C then cancels the goal.
The node is --node, a relative name resolving in ROS_NAMESPACE; by default g2vlm in ROS_NAMESPACE
(/g2vlm when it is unset). When the service or action does not show up, the error names what was
waited for and lists the Ask services or actions that are visible.
Exit status: 0 answered, 1 the node refused (or could not answer) the question, 2 the service or
action did not show up within --wait seconds, 130 interrupted. Plain rclpy, so it needs no ros2cli.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
import threading
from typing import Optional, TextIO

EXIT_ANSWERED, EXIT_REFUSED, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_NODE = "g2vlm"
NAME_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")  # one part of a ROS name
ASK_SERVICE_TYPE = "g2vlm_interfaces/srv/Ask"
ASK_ACTION_TYPE = "g2vlm_interfaces/action/Ask"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ask", description="Ask the g2vlm node a spatial question (service <node>/ask, or the "
                                "action <node>/ask_stream with --stream).")
    parser.add_argument("question", nargs="?", help="the question, in plain language, or a JSON query (--schema)")
    parser.add_argument("--schema", action="store_true",
                        help="print the JSON Schema of typed queries (the JSON form of `question`) and exit")
    parser.add_argument("--target-frame", default="", metavar="FRAME",
                        help="frame of the answer's points and directions, e.g. base_link (via TF; needs a metric "
                             "scale); default: the node's world_frame")
    parser.add_argument("--camera", dest="cameras", action="append", default=[], metavar="NAME",
                        help="answer over this camera (repeatable); default: all cameras of the node")
    parser.add_argument("--timeout", type=float, default=0.0, metavar="S",
                        help="per-question timeout in seconds; 0 (default) uses the node's ask_timeout_s")
    parser.add_argument("--node", default=None,
                        help="the node's name: fully qualified (/robot/g2vlm), or relative to ROS_NAMESPACE "
                             "(default: g2vlm in ROS_NAMESPACE, /g2vlm when it is unset)")
    parser.add_argument("--stream", action="store_true",
                        help="use the ask_stream action and print the answer while it is generated")
    parser.add_argument("--wait", type=float, default=10.0, metavar="S",
                        help="seconds to wait for the service/action to appear (default 10)")
    args = parser.parse_args(argv)
    if args.question is None and not args.schema:
        parser.error("a question is required (or --schema)")
    try:
        args.node = resolve_node(args.node, os.environ.get("ROS_NAMESPACE", ""))
    except ValueError as error:
        parser.error(str(error))
    return args


def resolve_node(node: Optional[str], namespace: str) -> str:
    """The node's fully qualified name: `node` when absolute, else `node` (default g2vlm) in `namespace`
    (ROS_NAMESPACE; rcl itself does not read it, so this tool does, as a shell user expects)."""
    relative = node is None or not node.startswith("/")
    name = f"/{namespace.strip('/')}/{node or DEFAULT_NODE}" if relative else node
    name = "/" + name.strip("/") if name.strip("/") else "/"
    parts = name.split("/")[1:]
    if not all(NAME_TOKEN.match(part) for part in parts):
        source = f" (ROS_NAMESPACE={namespace!r})" if relative and namespace else ""
        raise ValueError(f"node name {name!r}{source} is not a valid ROS name: parts of letters, digits and _, "
                         "not starting with a digit, separated by /")
    return name


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
        source = f" ({response.value_source})" if getattr(response, "value_source", "") else ""
        print(f"value:     {response.value:g} {response.unit}".rstrip() + source, file=out)
    if getattr(response, "form", ""):
        print(f"form:      {response.form}", file=out)
    if response.reasoning:
        print(f"reasoning: {response.reasoning}", file=out)
    for point in response.points:
        print(f"point:     ({point.x:.3f}, {point.y:.3f}, {point.z:.3f})", file=out)
    print(f"frame_id:  {response.frame_id}", file=out)
    print(f"stamp:     {format_stamp(response.stamp)}", file=out)
    age = getattr(response, "window_age_s", math.nan)
    if math.isfinite(age):
        print(f"age:       {age:.3f} s", file=out)
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

    name = f"{args.node}/ask"
    client = node.create_client(Ask, name)
    if not client.wait_for_service(timeout_sec=args.wait):
        visible = [service for service, types in node.get_service_names_and_types() if ASK_SERVICE_TYPE in types]
        print(not_available("service", name, args, visible), file=sys.stderr)
        return EXIT_UNAVAILABLE
    future = client.call_async(request)
    spin_until_done(executor, future)
    return print_answer(future.result())


def ask_action(node, executor, args, request) -> int:
    import time

    from action_msgs.msg import GoalStatus
    from rclpy.action import ActionClient

    from g2vlm_interfaces.action import Ask as AskAction

    name = f"{args.node}/ask_stream"
    client = ActionClient(node, AskAction, name)
    if not client.wait_for_server(timeout_sec=args.wait):
        from rclpy.action import get_action_names_and_types

        visible = [action for action, types in get_action_names_and_types(node) if ASK_ACTION_TYPE in types]
        print(not_available("action", name, args, visible), file=sys.stderr)
        return EXIT_UNAVAILABLE
    printer = FeedbackPrinter()
    goal = AskAction.Goal(question=request.question, cameras=request.cameras, timeout_s=request.timeout_s,
                          target_frame=request.target_frame)
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


def not_available(kind: str, name: str, args: argparse.Namespace, visible: list[str]) -> str:
    """The error for a service or action that did not show up: what was waited for, how to aim elsewhere,
    and the Ask interfaces this process can see (a node in another namespace is the usual cause)."""
    lines = [f"error: {kind} {name} not available after {args.wait:g} s (node {args.node}; "
             "choose the node with --node /<namespace>/g2vlm or ROS_NAMESPACE=<namespace>)"]
    others = sorted(set(visible) - {name})
    if others:
        shown = ", ".join(others[:10]) + (f" and {len(others) - 10} more" if len(others) > 10 else "")
        lines.append(f"  Ask {kind}s seen: {shown}")
    else:
        lines.append(f"  no Ask {kind} is visible: is the node running, with the same ROS_DOMAIN_ID?")
    return "\n".join(lines)


def print_schema(out: TextIO = sys.stdout) -> int:
    """The query schema as JSON: what an LLM agent takes as the ask tool's parameters."""
    from g2vlm_ros.reasoning.query import schema_text

    try:
        print(schema_text(), file=out, flush=True)
    except BrokenPipeError:  # `ask --schema | head`: the reader stopped early, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())  # no second error when Python flushes at exit
    return EXIT_ANSWERED


def main(argv: Optional[list[str]] = None) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions
    from rclpy.utilities import remove_ros_args

    from g2vlm_interfaces.srv import Ask

    argv = sys.argv if argv is None else ["ask", *argv]
    args = parse_args(remove_ros_args(argv)[1:])
    if args.schema:
        return print_schema()
    request = Ask.Request(question=args.question, cameras=args.cameras, timeout_s=args.timeout,
                          target_frame=args.target_frame)

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
