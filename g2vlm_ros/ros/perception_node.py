"""The g2vlm perception node: camera images in; depth, point cloud, poses, TF and answers out.

Threads: the executor handles subscriptions, the service and timers; inference runs on its own
worker thread with a single pending slot (newest window wins, never a queue), so a slow model
cannot delay message handling or the /g2vlm/ask service.
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Point
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from g2vlm_interfaces.srv import Ask
from g2vlm_ros.reasoning.question import (
    QuestionError,
    SpatialAnswerer,
    check_cameras,
    check_question,
    effective_timeout,
    no_answerer_error,
)
from g2vlm_ros.ros.camera_input import CameraInput, Frame
from g2vlm_ros.ros.conversions import ImageConversionError
from g2vlm_ros.ros.diagnostics import ERROR, WARN, StatusBuilder, diagnostic_array
from g2vlm_ros.ros.outputs import GeometryPublisher, OutputSettings, stamp_key
from g2vlm_ros.ros.params import ConfigError, NodeConfig, declare_and_read, make_set_parameters_callback
from g2vlm_ros.ros.tf_output import TfOutput
from g2vlm_ros.runtime.backend import BackendUnavailableError, GeometryBackend, GeometryResult
from g2vlm_ros.runtime.rate_limiter import RateLimiter
from g2vlm_ros.runtime.registry import BackendRequest, create_backend
from g2vlm_ros.runtime.worker import LatestOnlyWorker

NODE_NAME = "g2vlm"
LOG_THROTTLE_S = 2.0
MAX_THROTTLE_KEYS = 256


@dataclass
class Window:
    """Frames of one inference, camera-major (all keyframes of camera 0, then camera 1, ...)."""

    frames: list[Frame]


@dataclass
class Snapshot:
    """The latest completed window and its geometry, as read by /g2vlm/ask."""

    window: Window
    result: GeometryResult


class PerceptionNode(Node):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        try:
            self.config: NodeConfig = declare_and_read(self)
        except ConfigError as error:
            self.get_logger().fatal(f"invalid configuration: {error}")
            raise
        self.camera_names = [camera.name for camera in self.config.cameras]
        self.answerer: Optional[SpatialAnswerer] = None
        self._last_log: dict[tuple[str, str], float] = {}
        self._snapshot: Optional[Snapshot] = None
        self._snapshot_lock = threading.Lock()
        self._window_lock = threading.Lock()
        self._rate_limiter = RateLimiter(self.config.max_rate_hz)
        self.backend_error = ""
        self.backend: Optional[GeometryBackend] = self._load_backend()

        output_qos = QoSProfile(depth=5)
        if self.config.output_qos == "best_effort":
            output_qos.reliability = ReliabilityPolicy.BEST_EFFORT
        self.tf_output = TfOutput(self, self.config.publish_tf)
        if self.config.publish_tf and not self.tf_output.active:
            self.get_logger().warning(f"TF output {self.tf_output.mode}")
        self.geometry_publisher = GeometryPublisher(
            self, self.camera_names, self.config.scale_source != "none", output_qos, self.tf_output)

        input_qos = qos_profile_sensor_data if self.config.input_qos == "sensor_data" else QoSProfile(depth=5)
        inputs_group = MutuallyExclusiveCallbackGroup()
        self.inputs: dict[str, CameraInput] = {}
        for camera in self.config.cameras:
            state = CameraInput(camera, self.config.window_size)
            self.inputs[camera.name] = state
            message_type = CompressedImage if camera.transport == "compressed" else Image
            self.create_subscription(message_type, camera.image_topic,
                                     lambda msg, s=state: self._on_image(s, msg), input_qos,
                                     callback_group=inputs_group)
            if camera.camera_info_topic:
                self.create_subscription(CameraInfo, camera.camera_info_topic,
                                         lambda msg, s=state: self._on_camera_info(s, msg), input_qos,
                                         callback_group=inputs_group)

        self.worker: LatestOnlyWorker[Window] = LatestOnlyWorker(self._infer, self._on_inference_error)
        self.create_service(Ask, "~/ask", self._on_ask, callback_group=ReentrantCallbackGroup())
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(self.config.diagnostics_period_s, self._publish_diagnostics)
        self.add_on_set_parameters_callback(make_set_parameters_callback(
            self.config, lambda: self._rate_limiter.set_rate(self.config.max_rate_hz)))
        self.get_logger().info(
            f"ready: cameras {self.camera_names}, backend {self.backend.describe() if self.backend else 'none'}, "
            f"scale {self.config.scale_source}, world frame '{self.config.world_frame}'")

    # ---------------------------------------------------------------- model
    def _load_backend(self) -> Optional[GeometryBackend]:
        config = self.config
        request = BackendRequest(config.backend, config.checkpoint_path, config.engine_dir, config.device,
                                 config.precision, config.cuda_graphs, config.allow_engine_rebuild)
        self.get_logger().info(f"loading backend '{config.backend}' ...")
        try:
            backend = create_backend(request)
        except BackendUnavailableError as error:
            self.backend_error = str(error)
            self.get_logger().error(f"no model loaded, no geometry will be published: {error}")
            return None
        self.get_logger().info(f"backend ready: {backend.describe()}")
        if backend.is_placeholder:
            self.get_logger().warning(
                f"backend '{backend.name}' is a geometry-free TEST PLACEHOLDER, not G2VLM: its depth, poses "
                "and points are synthetic and must not be used by a robot")
        return backend

    # ---------------------------------------------------------------- input
    def _log_bad_input(self, camera: str, reason: str) -> None:
        """Logs at most once per LOG_THROTTLE_S per (camera, reason)."""
        now = time.monotonic()
        key = (camera, reason)
        if now - self._last_log.get(key, -LOG_THROTTLE_S) >= LOG_THROTTLE_S:
            if len(self._last_log) >= MAX_THROTTLE_KEYS:  # reasons carry sizes: bound the table
                self._last_log.clear()
            self._last_log[key] = now
            self.get_logger().error(f"camera '{camera}': dropped frame: {reason}")

    def _on_camera_info(self, state: CameraInput, msg: CameraInfo) -> None:
        problem = state.set_camera_info(msg)
        if problem:
            self._log_bad_input(state.config.name, problem)

    def _on_image(self, state: CameraInput, msg) -> None:
        try:
            state.accept(msg)
        except ImageConversionError as error:
            self._log_bad_input(state.config.name, str(error))
            return
        if self.backend is not None:
            self._maybe_submit_window()

    def _maybe_submit_window(self) -> None:
        """Submits a window once every camera has a new frame, at most max_rate_hz times a second."""
        with self._window_lock:
            size = self.config.window_size
            per_camera = [state.take_window_frames(size) for state in self.inputs.values()]
            if any(frames is None for frames in per_camera) or not self._rate_limiter.admit(time.monotonic()):
                return
            for state in self.inputs.values():
                state.mark_used()
        self.worker.submit(Window([frame for frames in per_camera for frame in frames]))

    # ---------------------------------------------------------------- inference (worker thread)
    def _infer(self, window: Window) -> None:
        result = self.backend.run([frame.rgb for frame in window.frames])
        result.validate()
        if result.num_views != len(window.frames):
            raise ValueError(f"backend returned {result.num_views} views for {len(window.frames)} images")
        self.geometry_publisher.publish(window.frames, result, self._output_settings())
        with self._snapshot_lock:
            self._snapshot = Snapshot(window, result)

    def _on_inference_error(self, window: Window, error: BaseException) -> None:
        self.get_logger().error(f"inference failed on a window of {len(window.frames)} frames: "
                                f"{type(error).__name__}: {error}", throttle_duration_sec=LOG_THROTTLE_S)

    def _output_settings(self) -> OutputSettings:
        values = self.config
        return OutputSettings(
            world_frame=values.world_frame,
            metres_per_unit=values.fixed_scale if values.scale_source == "fixed" else None,
            cloud_stride=values.cloud_stride,
            confidence_threshold=values.confidence_threshold,
        )

    # ---------------------------------------------------------------- /g2vlm/ask
    def _on_ask(self, request: Ask.Request, response: Ask.Response) -> Ask.Response:
        response.value = float("nan")
        with self._snapshot_lock:
            snapshot = self._snapshot
        if snapshot is not None:
            newest = max((frame.header.stamp for frame in snapshot.window.frames), key=stamp_key)
            response.stamp = newest
            response.frame_id = self.config.world_frame
        try:
            question = check_question(request.question, self.config.max_question_bytes)
            cameras = check_cameras(list(request.cameras), self.camera_names)
            timeout_s = effective_timeout(request.timeout_s, self.config.ask_timeout_s)
            if snapshot is None:
                raise QuestionError("no perception window has been processed yet"
                                    + ("" if self.backend else f" (no model loaded: {self.backend_error})"))
            if self.answerer is None:
                raise QuestionError(no_answerer_error())
            answer = self.answerer.answer(question, cameras, snapshot, timeout_s)
        except QuestionError as error:
            response.success, response.error = False, str(error)
            return response
        except Exception as error:  # an answerer bug must not take the service down
            self.get_logger().error(f"/g2vlm/ask failed: {type(error).__name__}: {error}")
            response.success, response.error = False, f"internal error: {type(error).__name__}: {error}"
            return response
        response.success = True
        response.answer, response.reasoning = answer.answer, answer.reasoning
        response.value, response.unit = float(answer.value), answer.unit
        response.points = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in np.asarray(answer.points)]
        return response

    # ---------------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        hardware_id = self.get_fully_qualified_name()
        model = StatusBuilder(f"{NODE_NAME}: model", hardware_id)
        if self.backend is None:
            model.set(ERROR, f"no model loaded: {self.backend_error}")
        else:
            model.add("backend", self.backend.describe()).add("precision", self.backend.precision)
            if self.backend.is_placeholder:
                model.set(WARN, "test placeholder backend: outputs are not geometry")
        worker = self.worker
        p50, p95 = worker.latency_percentiles_ms()
        inference = StatusBuilder(f"{NODE_NAME}: inference", hardware_id)
        inference.add("windows_submitted", worker.submitted).add("windows_processed", worker.processed)
        inference.add("windows_dropped", worker.dropped).add("windows_failed", worker.failed)
        inference.add("latency_p50_ms", p50).add("latency_p95_ms", p95)
        inference.add("scale_source", self.config.scale_source)
        inference.add("units", "metres" if self.config.scale_source != "none" else "relative (up to scale)")
        inference.add("tf_output", self.tf_output.mode)
        if worker.failed:
            inference.set(WARN, f"{worker.failed} window(s) failed")
        statuses = [model, inference]
        for name, state in self.inputs.items():
            camera = StatusBuilder(f"{NODE_NAME}: camera {name}", hardware_id)
            camera.add("topic", state.config.image_topic).add("rate_hz", state.rate_hz())
            camera.add("frames_received", state.received).add("frames_rejected", state.rejected)
            camera.add("camera_info", "received" if state.camera_info else "none (model intrinsics)")
            if state.last_error:
                camera.add("last_error", state.last_error)
                camera.set(WARN, state.last_error)
            elif state.received == 0:
                camera.set(WARN, "no images received")
            statuses.append(camera)
        self.diagnostics_publisher.publish(diagnostic_array(self.get_clock().now().to_msg(), statuses))

    def destroy_node(self) -> None:
        # getattr: also called by rclpy's shutdown on a node whose __init__ failed half-way
        worker, backend = getattr(self, "worker", None), getattr(self, "backend", None)
        if worker is not None:
            worker.stop()
        if backend is not None:
            backend.close()
        super().destroy_node()


def main(args: Optional[list[str]] = None) -> int:
    rclpy.init(args=args)
    try:
        node = PerceptionNode()
    except ConfigError:
        rclpy.try_shutdown()
        return 2
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
