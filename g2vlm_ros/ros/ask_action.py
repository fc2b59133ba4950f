"""~/ask_stream: the /g2vlm/ask question as an action, so clients see the answer while it is generated.

The service `~/ask` answers in one piece; a generated answer can take seconds, and a client may want
to show the text as it grows or give up early. This action has the service's request as its goal and
the service's response as its result, plus feedback (the partial answer and the current stage) and
cancellation. The answering itself stays in one function shared with the service:

    answer_fn(request, publish_feedback, is_cancelled) -> g2vlm_interfaces.srv.Ask.Response

`request` is the goal (it has the request's fields: question, cameras, timeout_s),
`publish_feedback(partial_answer, stage)` sends feedback and `is_cancelled()` tells answer_fn to
stop early. Whatever answer_fn does, including raising, ends the goal in a terminal state with a
result; an error never reaches the executor, which would stop the node's spin.

Goals run as executor tasks: with a MultiThreadedExecutor each runs on its own thread, so a cancel
request is handled while answer_fn works. With a single-threaded executor a blocking answer_fn
delays cancel requests until it returns (the goal then still ends as cancelled).
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Optional

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.qos import QoSProfile, ReliabilityPolicy

from g2vlm_interfaces.action import Ask as AskAction
from g2vlm_interfaces.srv import Ask

PublishFeedback = Callable[[str, str], None]  # (partial answer, stage)
AnswerFn = Callable[[Any, PublishFeedback, Callable[[], bool]], Ask.Response]

CANCELLED_ERROR = "cancelled"
# How long a finished goal's result stays retrievable (get_result) after the goal ends, for slow clients.
# The rclpy default differs by distribution (15 min on Humble, 10 s on Kilted), so it is set here.
RESULT_RETENTION_S = 300
# Result fields are copied by name from the service response; both definitions list the same fields.
RESULT_FIELDS = tuple(AskAction.Result.get_fields_and_field_types())


class AskActionServer:
    """The `~/ask_stream` action of `node`, answering goals with `answer_fn` (see the module docstring)."""

    def __init__(self, node, answer_fn: AnswerFn, callback_group=None, name: str = "~/ask_stream",
                 queue_depth: int = 10, result_retention_s: int = RESULT_RETENTION_S):
        self.node = node
        self.answer_fn = answer_fn
        self._logger = node.get_logger()
        self._destroyed = threading.Event()
        # The action's goal, result and cancel services get the ask service's deep queue: with the default depth of
        # 10, DDS drops the requests of a burst beyond it and those clients never hear accept or reject.
        requests = QoSProfile(depth=queue_depth, reliability=ReliabilityPolicy.RELIABLE)
        self._server: Optional[ActionServer] = ActionServer(
            node, AskAction, name, self._execute,
            callback_group=callback_group,
            goal_callback=self._on_goal,
            cancel_callback=self._on_cancel,
            goal_service_qos_profile=requests,
            result_service_qos_profile=requests,
            cancel_service_qos_profile=requests,
            result_timeout=result_retention_s,
        )

    def destroy(self) -> None:
        """Stops accepting goals; running answer_fns see is_cancelled() turn true. Safe to call twice."""
        self._destroyed.set()
        server, self._server = self._server, None
        if server is not None:
            server.destroy()

    # Every question is accepted: checks and limits (question length, cameras, concurrency) live in
    # answer_fn, which reports a refusal in the result's `error` just as the service does.
    def _on_goal(self, goal_request) -> GoalResponse:
        return GoalResponse.ACCEPT

    def _on_cancel(self, goal_handle) -> CancelResponse:
        return CancelResponse.ACCEPT

    def _execute(self, goal_handle) -> AskAction.Result:
        def publish_feedback(partial_answer: str, stage: str) -> None:
            try:
                goal_handle.publish_feedback(AskAction.Feedback(partial_answer=partial_answer, stage=stage))
            except Exception as error:  # e.g. the server or context is going away; the answer can still finish
                self._logger.debug(f"ask_stream: feedback not published: {error}")

        def is_cancelled() -> bool:
            return goal_handle.is_cancel_requested or self._destroyed.is_set()

        response, failure = None, None
        try:
            response = self.answer_fn(goal_handle.request, publish_feedback, is_cancelled)
            result = to_result(response)
        except Exception as error:
            failure = f"{type(error).__name__}: {error}"
            result = AskAction.Result(success=False, value=float("nan"), error=failure)

        # Cancellation wins over an error: answer_fn may well raise because it was told to stop.
        try:
            if goal_handle.is_cancel_requested:
                result.success, result.error = False, CANCELLED_ERROR
                goal_handle.canceled()
            elif failure is not None:
                self._logger.error(f"ask_stream: answering '{goal_handle.request.question}' failed: {failure}")
                goal_handle.abort()
            else:
                goal_handle.succeed()
        except Exception as error:  # an invalid state transition (e.g. destroyed meanwhile) must not stop the spin
            self._logger.warning(f"ask_stream: could not finish the goal: {error}")
        return result


def to_result(response: Ask.Response) -> AskAction.Result:
    """The service response as an action result (same fields, same meaning)."""
    result = AskAction.Result()
    for field in RESULT_FIELDS:
        setattr(result, field, getattr(response, field))
    return result
