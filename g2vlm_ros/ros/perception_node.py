"""The g2vlm perception node: camera images in; depth, point cloud, poses, TF, scale and answers out.

A managed (lifecycle) node:
  configure   loads the model (backend), TF input and publishers; a failure leaves the node
              unconfigured with the reason in the log and on /diagnostics, the process keeps running
  activate    subscribes to the cameras (and the metric depth topic) and starts inference
  deactivate  unsubscribes; nothing is published until the next activate
  cleanup     releases the model and its GPU memory
With `autostart` (the default) it configures and activates itself, for plain `ros2 run` use.

Threads: the executor handles subscriptions, services and timers; inference runs on its own
worker thread with a single pending slot (newest window wins, never a queue), so a slow model
cannot delay message handling, lifecycle transitions or the /g2vlm/ask service.
"""
from __future__ import annotations

import gc
import math
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from g2vlm_interfaces.msg import MetricScale
from g2vlm_interfaces.srv import Ask
from g2vlm_ros.geometry.rotations import rotation_angle_deg
from g2vlm_ros.geometry.tf_buffer import TransformUnavailable
from g2vlm_ros.reasoning.generative import GenerativeAnswerer
from g2vlm_ros.reasoning.geometric import GeometricAnswerer
from g2vlm_ros.ros.ask_action import AskActionServer
from g2vlm_ros.ros.ask_handler import AskHandler
from g2vlm_ros.ros.camera_input import CameraInput, Frame
from g2vlm_ros.ros.conversions import ImageConversionError
from g2vlm_ros.ros.diagnostics import diagnostic_array
from g2vlm_ros.ros.node_diagnostics import node_statuses
from g2vlm_ros.ros.outputs import GeometryPublisher, OutputSettings
from g2vlm_ros.ros.params import ConfigError, NodeConfig, declare_and_read, make_set_parameters_callback
from g2vlm_ros.ros.scale_input import ScaleInput
from g2vlm_ros.ros.signal_teardown import stop_rclpy_signal_handling
from g2vlm_ros.ros.tf_input import TfInput
from g2vlm_ros.ros.tf_output import TfOutput
from g2vlm_ros.runtime.backend import GeometryBackend, GeometryResult
from g2vlm_ros.runtime.inference_health import InferenceHealth, release_cached_memory, run_window
from g2vlm_ros.runtime.rate_limiter import RateLimiter
from g2vlm_ros.runtime.registry import BackendRequest, create_backend
from g2vlm_ros.runtime.scale_tracker import ScaleEstimate
from g2vlm_ros.runtime.windowing import Window, WindowAssembler, WindowPolicy
from g2vlm_ros.runtime.worker import LatestOnlyWorker

NODE_NAME = "g2vlm"
LOG_THROTTLE_S = 2.0
MAX_THROTTLE_KEYS = 256
ASK_QUEUE_DEPTH = 256
# Python's default 5 ms GIL hand-over lets a burst of question threads delay every GIL re-acquisition
# of the camera and inference threads by several ms; a shorter interval keeps perception at its rate
GIL_SWITCH_INTERVAL_S = 0.0005
INFERENCE_STOP_TIMEOUT_S = 120.0  # cleanup waits this long for a window in flight (large models on CPUs)
SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE
DEMO_MODEL_WARNING = (
    "\n" + "=" * 78 + "\n"
    "NO checkpoint_path SET: running the EMBEDDED DEMO MODEL, not the released G2VLM-2B.\n"
    "It is an 11.7 M-parameter G2VLM trained only on synthetic rooms (docs/demo_model.md): fine for\n"
    "trying the package, coarse on real scenes. For real use set checkpoint_path to the\n"
    "InternRobotics/G2VLM-2B-MoT folder.\n" + "=" * 78)


@dataclass
class Snapshot:
    """The latest completed window and its geometry, as read by /g2vlm/ask."""

    window: Window[Frame]
    result: GeometryResult
    scale: ScaleEstimate


class PerceptionNode(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        try:
            self.config: NodeConfig = declare_and_read(self)
        except ConfigError as error:
            self.get_logger().fatal(f"invalid configuration: {error}")
            raise
        self.camera_names = [camera.name for camera in self.config.cameras]
        self.state_label = "unconfigured"
        self.backend: Optional[GeometryBackend] = None
        self.backend_error = "not configured yet"
        self.uses_demo_model = False  # set at configure: no checkpoint_path, the embedded demo model runs
        self.windows_rate_limited = 0
        self._active = False
        self._last_log: dict[tuple[str, str], float] = {}
        self._snapshot: Optional[Snapshot] = None
        self._snapshot_lock = threading.Lock()
        self._window_lock = threading.Lock()
        self._transition_lock = threading.Lock()
        self._rate_limiter = RateLimiter(self.config.max_rate_hz)
        self._camera_subscriptions: list = []
        self._inputs_group = MutuallyExclusiveCallbackGroup()
        self.inputs = {camera.name: CameraInput(camera) for camera in self.config.cameras}
        # created by configure, released by cleanup
        self.worker: Optional[LatestOnlyWorker[Window[Frame]]] = None
        self.health = InferenceHealth(self.config.out_of_memory_policy)  # fresh (limits forgotten) at configure
        self.assembler: Optional[WindowAssembler[Frame]] = None
        self.geometry_publisher: Optional[GeometryPublisher] = None
        self.scale_input: Optional[ScaleInput] = None
        self.scale_publisher = None
        self.tf_input: Optional[TfInput] = None

        self.output_qos = QoSProfile(depth=5)
        if self.config.output_qos == "best_effort":
            self.output_qos.reliability = ReliabilityPolicy.BEST_EFFORT
        self.input_qos = qos_profile_sensor_data if self.config.input_qos == "sensor_data" else QoSProfile(depth=5)
        self.tf_output = TfOutput(self, self.config.publish_tf)
        if self.config.publish_tf and not self.tf_output.active:
            self.get_logger().warning(f"TF output {self.tf_output.mode}")
        # questions run beside perception: their own callback group, their own answer threads
        self.ask_handler = AskHandler(self, GeometricAnswerer(), self.config.max_concurrent_questions)
        ask_group = ReentrantCallbackGroup()
        # a deep request queue: a burst of questions must reach the node and get an answer or a "busy"
        # reply; with the default depth of 10 DDS silently drops the excess and clients wait forever
        self.create_service(Ask, "~/ask", self._on_ask, qos_profile=QoSProfile(depth=ASK_QUEUE_DEPTH,
                            reliability=ReliabilityPolicy.RELIABLE), callback_group=ask_group)
        self.ask_action = AskActionServer(self, self.ask_handler.handle, callback_group=ask_group)
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(self.config.diagnostics_period_s, self._publish_diagnostics)
        self.add_on_set_parameters_callback(make_set_parameters_callback(self.config, self._on_parameters_changed))

    # ---------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._transition_lock:
            config = self.config
            request = BackendRequest(config.backend, config.checkpoint_path, config.engine_dir, config.device,
                                     config.precision, config.cuda_graphs, config.allow_engine_rebuild)
            self.get_logger().info(f"configure: loading backend '{config.backend}' ...")
            self.backend_error = "the model is being loaded (configure in progress)"
            try:
                backend = create_backend(request)
            except Exception as error:  # a broken plugin or checkpoint must not take the process down
                self.backend_error = str(error) if type(error).__name__.endswith("UnavailableError") else (
                    f"{type(error).__name__}: {error}")
                self.get_logger().error(f"configure failed: no model loaded, no geometry will be published: "
                                        f"{self.backend_error}")
                return FAILURE
            self.backend, self.backend_error = backend, ""
            self.uses_demo_model = request.uses_demo_model
            self.get_logger().info(f"backend ready: {backend.describe()}")
            if self.uses_demo_model:
                self.get_logger().warning(DEMO_MODEL_WARNING)
            self.ask_handler.answerer = self._answerer_for(backend)
            if backend.is_placeholder:
                self.get_logger().warning(
                    f"backend '{backend.name}' is a geometry-free TEST PLACEHOLDER, not G2VLM: its depth, poses "
                    "and points are synthetic and must not be used by a robot")
            needs_tf = config.scale_source in ("tf", "rig") or bool(config.odom_frame)
            if needs_tf:
                self.tf_input = TfInput(self, callback_group=self._inputs_group)
                if not self.tf_input.available:
                    reason = f"scale_source '{config.scale_source}' / odom_frame need TF input: {self.tf_input.mode}"
                    self._release()
                    self.backend_error = reason
                    self.get_logger().error(f"configure failed: {reason}")
                    return FAILURE
            self.geometry_publisher = GeometryPublisher(self, self.camera_names, config.scale_source != "none",
                                                        self.output_qos, self.tf_output)
            self.scale_input = ScaleInput(self, config, self.camera_names, self.tf_input, self.input_qos,
                                          callback_group=self._inputs_group)
            self.scale_publisher = self.create_publisher(MetricScale, "~/scale", self.output_qos)
            self.assembler = WindowAssembler(self.camera_names, self._window_policy(),
                                             motion=self._first_camera_motion if config.odom_frame else None)
            self.health = InferenceHealth(config.out_of_memory_policy)
            self.worker = LatestOnlyWorker(self._infer, self._on_inference_error)
            self.state_label = "inactive"
            return SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._transition_lock:
            for camera in self.config.cameras:
                camera_input = self.inputs[camera.name]
                message_type = CompressedImage if camera.transport == "compressed" else Image
                self._camera_subscriptions.append(self.create_subscription(
                    message_type, camera.image_topic, lambda msg, c=camera_input: self._on_image(c, msg),
                    self.input_qos, callback_group=self._inputs_group))
                if camera.camera_info_topic:
                    self._camera_subscriptions.append(self.create_subscription(
                        CameraInfo, camera.camera_info_topic, lambda msg, c=camera_input: self._on_camera_info(c, msg),
                        self.input_qos, callback_group=self._inputs_group))
            self._active = True
            self.state_label = "active"
            self.get_logger().info("activated: listening to " + ", ".join(c.image_topic for c in self.config.cameras))
            return SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._transition_lock:
            self._active = False
            self._unsubscribe()
            with self._window_lock:
                if self.assembler is not None:
                    self.assembler.reset()
            self.state_label = "inactive"
            self.get_logger().info("deactivated: camera input stopped")
            return SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._transition_lock:
            self.backend_error = "cleaned up (configure to load the model again)"  # before questions see no model
            self._release()
            self.ask_handler.answerer = GeometricAnswerer()  # drops the model reference of a generative answerer
            self.state_label = "unconfigured"
            self.get_logger().info("cleaned up: model and GPU memory released")
            return SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        with self._transition_lock:
            self._unsubscribe()
            self._release()
            self.state_label = "finalized"
            return SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"lifecycle error in state '{state.label}': releasing resources")
        return self.on_shutdown(state)

    def _unsubscribe(self) -> None:
        for subscription in self._camera_subscriptions:
            self.destroy_subscription(subscription)
        self._camera_subscriptions.clear()

    def _release(self) -> None:
        """Stops inference and frees the model; safe to call in any state, twice."""
        self._active = False
        if self.worker is not None:
            self.worker.stop(INFERENCE_STOP_TIMEOUT_S)
            self.worker = None
        if self.backend is not None:
            self.backend.close()
            self.backend = None
        for owner in (self.geometry_publisher, self.scale_input):
            if owner is not None:
                owner.destroy()
        self.geometry_publisher = self.scale_input = None
        if self.scale_publisher is not None:
            self.destroy_publisher(self.scale_publisher)
            self.scale_publisher = None
        if self.tf_input is not None:
            self.tf_input.destroy()
            self.tf_input = None
        self.assembler = None
        with self._snapshot_lock:
            self._snapshot = None
        gc.collect()  # the model may sit in reference cycles; free it before emptying the cache
        release_cached_memory()  # so that other processes see the memory free

    def _answerer_for(self, backend: GeometryBackend):
        """The semantic expert answers when the backend holds a model with a tokenizer; else the geometric one."""
        model = getattr(backend, "model", None)
        if model is None or getattr(model, "tokenizer", None) is None:
            self.get_logger().info("/g2vlm/ask: geometric answerer (documented question forms)")
            return GeometricAnswerer()
        self.get_logger().info("/g2vlm/ask: G2VLM's semantic expert, grounded in measured geometry")
        return GenerativeAnswerer(model, self.config.max_answer_tokens)

    def autostart(self) -> None:
        """configure + activate, as `autostart: true` asks; failures are logged and leave the node up."""
        if not self.config.autostart:
            self.get_logger().info("autostart is false: waiting for lifecycle transitions (configure, activate)")
            return
        self.trigger_configure()
        if self.state_label == "inactive":  # our own label: trigger_* return values differ across distros
            self.trigger_activate()

    def _on_parameters_changed(self) -> None:
        self._rate_limiter.set_rate(self.config.max_rate_hz)
        self.health.policy = self.config.out_of_memory_policy
        answerer = self.ask_handler.answerer
        if isinstance(answerer, GenerativeAnswerer):
            answerer.max_new_tokens = self.config.max_answer_tokens
        with self._window_lock:
            if self.assembler is not None:
                self.assembler.policy = self._window_policy()

    def _window_policy(self) -> WindowPolicy:
        config = self.config
        return WindowPolicy(
            window_size=config.window_size, sync_slop_s=config.sync_slop_s,
            keyframe_min_interval_s=config.keyframe_min_interval_s,
            keyframe_min_motion_m=config.keyframe_min_motion_m,
            keyframe_min_rotation_deg=config.keyframe_min_rotation_deg,
            keyframe_min_image_change=config.keyframe_min_image_change,
        )

    def _first_camera_motion(self, previous: list[Frame], candidate: list[Frame]) -> Optional[tuple[float, float]]:
        """(metres, degrees) the first camera moved between two keyframe sets, from TF in odom_frame."""
        if self.tf_input is None:
            return None
        try:
            before, after = (self.tf_input.lookup(self.config.odom_frame, frames[0].header.frame_id, frames[0].stamp_ns)
                             for frames in (previous, candidate))
        except TransformUnavailable:
            return None
        relative = np.linalg.inv(before) @ after
        return float(np.linalg.norm(relative[:3, 3])), rotation_angle_deg(relative[:3, :3])

    # ---------------------------------------------------------------- input
    def _log_bad_input(self, camera: str, reason: str) -> None:
        """Logs at most once per LOG_THROTTLE_S per camera and kind of reason (its text without numbers, so
        a stream of out-of-order stamps or odd sizes is one kind)."""
        now = time.monotonic()
        key = (camera, re.sub(r"0x[0-9a-fA-F]+|[-+]?\d[\d.e+-]*", "#", reason))
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
        if not self._active:
            return
        try:
            frame = state.accept(msg, with_thumbnail=self.config.keyframe_min_image_change > 0)
        except ImageConversionError as error:
            self._log_bad_input(state.config.name, str(error))
            return
        with self._window_lock:
            if self.assembler is None:
                return
            if frame.clock_reset:
                self.assembler.reset()
                self.get_logger().warning(
                    f"camera '{state.config.name}': stamps jumped back to {frame.stamp_ns / 1e9:.3f} s (a restarted "
                    "clock: looping bag, driver restart, simulator reset); windows and keyframes start over")
            self.assembler.add(frame)
            window = self.assembler.poll()
            if window is None:
                return
            if not self._rate_limiter.admit(time.monotonic()):
                self.windows_rate_limited += 1
                return
        worker = self.worker
        if worker is not None:
            worker.submit(window)

    # ---------------------------------------------------------------- inference (worker thread)
    def _infer(self, window: Window[Frame]) -> None:
        backend = self.backend
        if backend is None or not self._active:
            return
        health = self.health
        window, result = run_window(backend, window, health, self._on_out_of_memory)
        result.validate()
        if result.num_views != len(window.frames):
            raise ValueError(f"backend returned {result.num_views} views for {len(window.frames)} images")
        scale_input, publisher = self.scale_input, self.geometry_publisher
        if not self._active or scale_input is None or publisher is None:
            return  # deactivated while the model ran: publish nothing
        scale = scale_input.measure(window.frames, result)
        with self._snapshot_lock:  # before publishing: a client that saw the outputs can ask about them at once
            self._snapshot = Snapshot(window, result, scale)
        publisher.publish(window.frames, result, self._output_settings(window, result, scale))
        self._publish_scale(window, scale)
        health.record_success()

    def _on_out_of_memory(self, window: Window[Frame], smaller: Window[Frame], reason: str) -> None:
        self.get_logger().warning(
            f"out of memory on a window of {len(window.frames)} views ({reason}); retrying with "
            f"{len(smaller.frames)} and keeping at most {smaller.keyframes} keyframe(s) per camera")

    def _on_inference_error(self, window: Window[Frame], error: BaseException) -> None:
        if not self.context.ok():
            return  # Ctrl-C shut the context down while a window was in flight: nothing failed
        self.health.record_failure(error)
        self.get_logger().error(f"inference failed on a window of {len(window.frames)} frames: "
                                f"{type(error).__name__}: {error}", throttle_duration_sec=LOG_THROTTLE_S)

    def _output_settings(self, window: Window[Frame], result: GeometryResult, scale: ScaleEstimate) -> OutputSettings:
        config = self.config
        odom_from_world = None
        if scale.valid and config.scale_source == "tf" and self.scale_input is not None:
            odom_from_world = self.scale_input.odom_from_world(window.frames, result, scale.metres_per_unit)
        return OutputSettings(
            world_frame=config.world_frame,
            metres_per_unit=scale.metres_per_unit,
            cloud_stride=config.cloud_stride,
            confidence_threshold=config.confidence_threshold,
            voxel_size=config.voxel_size,
            withhold_geometry=scale.metric_expected and not scale.valid,
            odom_frame=config.odom_frame,
            odom_from_world=odom_from_world,
        )

    def _publish_scale(self, window: Window[Frame], scale: ScaleEstimate) -> None:
        newest = max(window.frames, key=lambda frame: frame.stamp_ns)
        msg = MetricScale(header=Header(stamp=newest.header.stamp, frame_id=self.config.world_frame),
                          source=scale.source, valid=scale.valid,
                          metres_per_unit=scale.metres_per_unit if scale.valid else math.nan,
                          residual_m=scale.residual_m, samples=scale.samples, age_s=scale.age_s,
                          fits_total=scale.fits_total, failures_total=scale.failures_total, status=scale.status)
        publisher = self.scale_publisher
        if publisher is not None:
            publisher.publish(msg)

    # ---------------------------------------------------------------- /g2vlm/ask
    def latest_snapshot(self) -> Optional[Snapshot]:
        with self._snapshot_lock:
            return self._snapshot

    def not_ready_reason(self) -> str:
        if self.backend is None:
            return f" (no model loaded: {self.backend_error})"
        if not self._active:
            todo = "activate it" if self.state_label == "inactive" else "configure and activate it"
            return f" (node is {self.state_label}: {todo})"
        return ""

    def _on_ask(self, request: Ask.Request, response: Ask.Response) -> Ask.Response:
        return self.ask_handler.handle(request)

    # ---------------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        try:
            statuses = node_statuses(self)
        except Exception as error:  # a diagnostics bug must not stop the executor, and with it the node
            self.get_logger().error(f"diagnostics failed: {type(error).__name__}: {error}",
                                    throttle_duration_sec=LOG_THROTTLE_S)
            return
        self.diagnostics_publisher.publish(diagnostic_array(self.get_clock().now().to_msg(), statuses))

    def destroy_node(self) -> None:
        # getattr: also called by rclpy's shutdown on a node whose __init__ failed half-way
        if getattr(self, "_transition_lock", None) is not None:
            self._release()
            self.ask_action.destroy()
            self.ask_handler.shutdown()
        super().destroy_node()


def main(args: Optional[list[str]] = None) -> int:
    rclpy.init(args=args)
    try:
        node = PerceptionNode()
    except ConfigError:
        rclpy.try_shutdown()
        return 2
    # a question being answered holds an executor thread until its answer is ready: keep enough threads
    # beyond max_concurrent_questions that camera input, services and timers never wait for answers
    executor = MultiThreadedExecutor(num_threads=4 + node.config.max_concurrent_questions)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    executor.add_node(node)
    try:
        node.autostart()
        node.get_logger().info(
            f"ready: state {node.state_label}, cameras {node.camera_names}, backend "
            f"{node.backend.describe() if node.backend else 'none'}, scale {node.config.scale_source}, "
            f"world frame '{node.config.world_frame}'")
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # Ctrl-C shuts the context down from the signal handler; an executor building its wait set at that
        # moment raises RCLError ("context is not valid") instead of ExternalShutdownException
        if rclpy.ok(context=node.context):
            raise
    finally:
        stop_rclpy_signal_handling()  # first: its thread may still be about to wake this executor
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
