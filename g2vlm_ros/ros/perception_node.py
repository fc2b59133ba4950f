"""The g2vlm perception node: camera images in; depth, point cloud, poses, odometry, a persistent map, TF, scale and
answers out.

A managed (lifecycle) node:
  configure   loads the model (backend), TF input and publishers; a failure leaves the node
              unconfigured with the reason in the log and on /diagnostics, the process keeps running
  activate    subscribes to the cameras (and the metric depth topic) and starts inference
  deactivate  unsubscribes; nothing is published until the next activate
  cleanup     releases the model and its GPU memory
With `autostart` (the default) it configures and activates itself, for plain `ros2 run` use.

The node translates: camera messages become pipeline Frames, the pipeline (g2vlm_ros.pipeline, ROS-free)
assembles windows and runs the model on its own worker thread, and its results come back through a
callback that builds the output messages. A slow model cannot delay message handling, lifecycle
transitions or the /g2vlm/ask service.
"""
from __future__ import annotations

import sys
import threading
from typing import Optional

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from g2vlm_interfaces.msg import MetricScale
from g2vlm_interfaces.srv import Ask
from g2vlm_ros.backends.backend import GeometryBackend
from g2vlm_ros.backends.registry import DEMO_MODEL_WARNING, BackendRequest, create_backend, renamed_backend_warning
from g2vlm_ros.pipeline.frame import Frame
from g2vlm_ros.pipeline.perception import PerceptionPipeline, Snapshot
from g2vlm_ros.pipeline.postprocess import WindowOutputs
from g2vlm_ros.reasoning.generative import GenerativeAnswerer
from g2vlm_ros.reasoning.grounding import GroundingAnswerer
from g2vlm_ros.reasoning.planner import PlannerAnswerer
from g2vlm_ros.ros.ask_action import AskActionServer
from g2vlm_ros.ros.ask_handler import AskHandler, internal_error_response
from g2vlm_ros.ros.camera_input import CameraInput
from g2vlm_ros.ros.conversions import ImageConversionError
from g2vlm_ros.ros.diagnostics import diagnostic_array
from g2vlm_ros.ros.map_outputs import MapFrames, MapPublisher, RobotPose, map_up, odometry_child, robot_pose
from g2vlm_ros.ros.map_services import create_map_services
from g2vlm_ros.ros.node_diagnostics import NodeView, node_statuses
from g2vlm_ros.ros.outputs import FrameSettings, GeometryPublisher, optical_frame
from g2vlm_ros.ros.params import (
    ConfigError,
    NodeConfig,
    declare_and_read,
    make_set_parameters_callback,
    pipeline_settings,
)
from g2vlm_ros.ros.robot_frame_input import RobotFrameInput
from g2vlm_ros.ros.scale_input import ScaleInput, scale_message
from g2vlm_ros.ros.sim_clock import SimClockWatch
from g2vlm_ros.ros.spin import CallbackGuard, EntityGate, LogThrottle, end_process, spin_and_tear_down
from g2vlm_ros.ros.tf_input import TfInput
from g2vlm_ros.ros.tf_output import TfOutput

NODE_NAME = "g2vlm"
LOG_THROTTLE_S = 2.0
ASK_QUEUE_DEPTH = 256
TF_TREE_WAIT_S = 1.0  # at configure, time for latched /tf_static and current /tf to arrive before the frame check
# Python's default 5 ms GIL hand-over lets a burst of question threads delay every GIL re-acquisition
# of the camera and inference threads by several ms; a shorter interval keeps perception at its rate
GIL_SWITCH_INTERVAL_S = 0.0005
INFERENCE_STOP_TIMEOUT_S = 120.0  # cleanup waits this long for a window in flight (large models on CPUs)
EXIT_WAIT_S = 1.0  # process exit waits this long for it: Ctrl-C under launch must end well before SIGTERM
SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


class PerceptionNode(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        try:
            self.config: NodeConfig = declare_and_read(self)
        except ConfigError as error:
            self.get_logger().fatal(f"invalid configuration: {error}")
            raise
        self.camera_names = [camera.name for camera in self.config.cameras]
        # contains exceptions of this node's callbacks; serializes entity changes with the spinning thread
        self.callback_guard = CallbackGuard(self.get_logger())
        self.entity_gate = EntityGate()
        self.state_label = "unconfigured"
        self.backend_error = "not configured yet"  # why no model is loaded
        self.uses_demo_model = False  # set at configure: no checkpoint_path, the embedded demo model runs
        self.window_abandoned = False  # teardown at exit left a window in the model
        self._input_log = LogThrottle()
        self._transition_lock = threading.Lock()
        self._camera_subscriptions: list = []
        self._inputs_group = MutuallyExclusiveCallbackGroup()  # TF, odometry and scale inputs
        # Each camera topic has its own group: a topic's frames stay in order, while cameras are taken in the same
        # executor pass and converted in parallel. In one shared group a slow conversion (large compressed images)
        # starves the later cameras and takes them a conversion apart, so that their frames stop matching in time.
        self._camera_groups = {camera.name: (MutuallyExclusiveCallbackGroup(), MutuallyExclusiveCallbackGroup())
                               for camera in self.config.cameras}
        self.inputs = {camera.name: CameraInput(camera, self.get_logger().warning) for camera in self.config.cameras}
        self.pipeline = PerceptionPipeline(pipeline_settings(self.config), self._publish_window, self.get_logger(),
                                           shutting_down=lambda: not self.context.ok())
        # created by configure, released by cleanup
        self.geometry_publisher: Optional[GeometryPublisher] = None
        self.map_publisher: Optional[MapPublisher] = None
        self.last_robot_pose: Optional[RobotPose] = None  # the map's up comes from the robot's odometry when known
        self.odometry_frame = ""  # diagnostics: the child frame of the last ~/odom
        self.scale_input: Optional[ScaleInput] = None
        self.scale_publisher = None
        self.tf_input: Optional[TfInput] = None
        self.robot_frame_input: Optional[RobotFrameInput] = None

        self.output_qos = QoSProfile(depth=5)
        if self.config.output_qos == "best_effort":
            self.output_qos.reliability = ReliabilityPolicy.BEST_EFFORT
        self.input_qos = qos_profile_sensor_data if self.config.input_qos == "sensor_data" else QoSProfile(depth=5)
        self.tf_output = TfOutput(self, self.config.publish_tf)
        if self.config.publish_tf and not self.tf_output.active:
            self.get_logger().warning(f"TF output {self.tf_output.mode}")
        # questions run beside perception: their own callback group, their own answer threads
        self.ask_handler = AskHandler(self, self.config, self.get_logger(), PlannerAnswerer(),
                                      self.config.max_concurrent_questions,
                                      now_ns=lambda: self.get_clock().now().nanoseconds)
        ask_group = ReentrantCallbackGroup()
        # a deep request queue: a burst of questions must reach the node and get an answer or a "busy"
        # reply; with the default depth of 10 DDS silently drops the excess and clients wait forever
        guard = self.callback_guard
        answer = guard.wrap("ask service", lambda request, _: self.ask_handler.handle(request), internal_error_response)
        self.create_service(Ask, "~/ask", answer,
                            qos_profile=QoSProfile(depth=ASK_QUEUE_DEPTH, reliability=ReliabilityPolicy.RELIABLE),
                            callback_group=ask_group)
        self.ask_action = AskActionServer(self, self.ask_handler.handle, callback_group=ask_group,
                                          queue_depth=ASK_QUEUE_DEPTH)
        config = self.config
        self.map_services = create_map_services(
            self, lambda: self.pipeline.map, self.camera_names[0], lambda: config.map_frame, self._map_units, guard,
            MutuallyExclusiveCallbackGroup())
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # steady clocks: with use_sim_time and no /clock, ROS-time timers would never fire
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(self.config.diagnostics_period_s, guard.wrap("diagnostics timer", self._publish_diagnostics),
                          clock=steady)
        self.sim_clock = SimClockWatch(self)
        self.create_timer(1.0, guard.wrap("sim clock check", self.sim_clock.check), clock=steady)
        self.add_on_set_parameters_callback(make_set_parameters_callback(
            self.config, guard.wrap("parameter change", self._on_parameters_changed)))

    # ---------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._transition_lock:
            config = self.config
            request = BackendRequest(config.backend, config.checkpoint_path, config.engine_dir, config.device,
                                     config.precision, config.cuda_graphs, config.allow_engine_rebuild)
            self.get_logger().info(f"configure: loading backend '{config.backend}' ...")
            if renamed_backend_warning(config.backend):
                self.get_logger().warning(renamed_backend_warning(config.backend))
            self.backend_error = "the model is being loaded (configure in progress)"
            try:
                backend = create_backend(request)
            except Exception as error:  # a broken plugin or checkpoint must not take the process down
                self.backend_error = str(error) if type(error).__name__.endswith("UnavailableError") else (
                    f"{type(error).__name__}: {error}")
                self.get_logger().error(f"configure failed: no model loaded, no geometry will be published: "
                                        f"{self.backend_error}")
                return FAILURE
            self.uses_demo_model = request.uses_demo_model
            self.get_logger().info(f"backend ready: {backend.describe()}")
            if self.uses_demo_model:
                self.get_logger().warning(DEMO_MODEL_WARNING)
            self.ask_handler.answerer = self._answerer_for(backend)
            if backend.is_placeholder:
                self.get_logger().warning(
                    f"backend '{backend.name}' is a geometry-free TEST PLACEHOLDER, not G2VLM: its depth, poses "
                    "and points are synthetic and must not be used by a robot")
            problem = self._create_outputs_and_inputs()
            if problem:
                backend.close()
                self._release()
                self.backend_error = problem
                self.get_logger().error(f"configure failed: {problem}")
                return FAILURE
            self.pipeline.load(backend, motion=self._first_camera_motion if config.odom_frame else None,
                               scale_measurement=self.scale_input)
            self.backend_error = ""
            self.state_label = "inactive"
            return SUCCESS

    def _create_outputs_and_inputs(self) -> str:
        """Creates TF input, publishers and the scale input; returns why configure must fail, or ''."""
        config = self.config
        with self.entity_gate.changing_entities():
            # TF is read for metric scale and motion keyframes, to check that no frame the node writes already
            # belongs to someone else's tree, and for answers in the robot's frames (target_frame, up)
            self.tf_input = TfInput(self, callback_group=self._inputs_group)
            self.robot_frame_input = RobotFrameInput(self, config, self.tf_input, self.input_qos,
                                                     callback_group=self._inputs_group)
            self.ask_handler.robot_frames = self.robot_frame_input.frames
        needs_tf = config.scale_source in ("tf", "rig") or bool(config.odom_frame)
        if needs_tf and not self.tf_input.available:
            return f"scale_source '{config.scale_source}' / odom_frame need TF input: {self.tf_input.mode}"
        taken = self._output_frames_taken()  # outside the gate: TF arrives through the spinning thread meanwhile
        if taken:
            return taken
        with self.entity_gate.changing_entities():
            self.geometry_publisher = GeometryPublisher(self, self.camera_names, config.scale_source != "none",
                                                        self.output_qos, self.tf_output, self.entity_gate)
            self.map_publisher = MapPublisher(self, self.output_qos, config.map_publish_period_s)
            self.map_publisher.grid_settings = (config.map_grid_resolution,
                                                (config.map_grid_min_height, config.map_grid_max_height))
            self.scale_input = ScaleInput(self, config, self.camera_names, self.tf_input, self.input_qos,
                                          callback_group=self._inputs_group)
            # lifecycle publishers: enabled only while active, so an inactive node publishes nothing
            self.scale_publisher = self.create_lifecycle_publisher(MetricScale, "~/scale", self.output_qos)
        return ""

    def _output_frames_taken(self) -> str:
        """Why the node's TF output would re-parent a frame already in the TF tree, or ''."""
        tf_input = self.tf_input
        if not self.tf_output.active or tf_input is None or not tf_input.available:
            return ""
        config = self.config
        # the frames the node publishes as children: its cameras' frames, and odom_frame with the robot's odometry
        ours = {optical_frame(camera, config.frame_prefix): config.map_frame for camera in self.camera_names}
        # odom_frame is in the robot's tree as a root: only another parent of it is someone else's map
        tf_input.watch_parents({**ours, **({config.odom_frame: config.map_frame} if self._robot_odometry else {})})
        clashes = tf_input.existing_frames(list(ours), wait_s=TF_TREE_WAIT_S)
        if not clashes:
            return ""
        return (f"TF frame(s) {', '.join(repr(frame) for frame in clashes)} already exist in the TF tree and this "
                "node would give them a second parent: set frame_prefix / map_frame to names no other node uses")

    @property
    def _robot_odometry(self) -> bool:
        """The robot's odometry places the map (map -> odom): a metric map, odom_frame and base_frame set."""
        config = self.config
        return config.scale_source != "none" and bool(config.odom_frame) and bool(config.base_frame)

    def _map_units(self) -> str:
        return "metres" if self.config.scale_source != "none" else "map units (the first window's unit; no scale)"

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._transition_lock, self.entity_gate.changing_entities():
            guard = self.callback_guard
            for camera in self.config.cameras:
                camera_input = self.inputs[camera.name]
                message_type = CompressedImage if camera.transport == "compressed" else Image
                self._camera_subscriptions.append(self.create_subscription(
                    message_type, camera.image_topic,
                    guard.wrap(f"camera '{camera.name}' image", lambda msg, c=camera_input: self._on_image(c, msg)),
                    self.input_qos, callback_group=self._camera_groups[camera.name][0]))
                if camera.camera_info_topic:
                    self._camera_subscriptions.append(self.create_subscription(
                        CameraInfo, camera.camera_info_topic,
                        guard.wrap(f"camera '{camera.name}' camera_info",
                                   lambda msg, c=camera_input: self._on_camera_info(c, msg)),
                        self.input_qos, callback_group=self._camera_groups[camera.name][1]))
            self.geometry_publisher.set_active(True)
            self.map_publisher.set_active(True)
            self.scale_publisher.on_activate(state)
            self.pipeline.activate()
            self.state_label = "active"
            self.get_logger().info("activated: listening to " + ", ".join(c.image_topic for c in self.config.cameras))
            return SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._transition_lock:
            self.pipeline.deactivate()
            self.last_robot_pose = None  # the map starts afresh: its map -> odom too
            self.odometry_frame = ""
            with self.entity_gate.changing_entities():
                self.geometry_publisher.set_active(False)
                self.map_publisher.set_active(False)
                self.scale_publisher.on_deactivate(state)
            self._unsubscribe()
            self.state_label = "inactive"
            self.get_logger().info("deactivated: camera input stopped")
            return SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._transition_lock:
            self.backend_error = "cleaned up (configure to load the model again)"  # before questions see no model
            self._release()
            self.ask_handler.answerer = PlannerAnswerer()  # drops the model reference of a generative answerer
            self.state_label = "unconfigured"
            self.get_logger().info("cleaned up: model and GPU memory released")
            return SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.pipeline.deactivate()
        with self._transition_lock:
            self._unsubscribe()
            self._release()
            self.backend_error = "the node is shut down (finalized): start a new node process to run again"
            self.state_label = "finalized"
            return SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"lifecycle error in state '{state.label}': releasing resources")
        return self.on_shutdown(state)

    def _unsubscribe(self) -> None:
        with self.entity_gate.changing_entities():
            for subscription in self._camera_subscriptions:
                self.destroy_subscription(subscription)
            self._camera_subscriptions.clear()

    def _release(self, exiting: bool = False) -> None:
        """Stops inference, frees the model and the outputs; safe to call in any state, twice. `exiting`: the
        process ends, so a window in flight is waited for only EXIT_WAIT_S (then main() ends the process
        without finalizing the interpreter under it)."""
        self.window_abandoned = not self.pipeline.unload(EXIT_WAIT_S if exiting else INFERENCE_STOP_TIMEOUT_S,
                                                         exiting=exiting)
        if self.window_abandoned and not exiting:
            self.get_logger().warning(f"a window was still in the model {INFERENCE_STOP_TIMEOUT_S:g} s after "
                                      "inference was stopped: it is left to finish on its own")
        with self.entity_gate.changing_entities():
            for owner in (self.geometry_publisher, self.map_publisher, self.scale_input):
                if owner is not None:
                    owner.destroy()
            self.geometry_publisher = self.map_publisher = self.scale_input = None
            self.last_robot_pose = None
            if self.scale_publisher is not None:
                self.destroy_lifecycle_publisher(self.scale_publisher)
                self.scale_publisher = None
            self.ask_handler.robot_frames = None
            if self.robot_frame_input is not None:
                self.robot_frame_input.destroy()
                self.robot_frame_input = None
            if self.tf_input is not None:
                self.tf_input.destroy()
                self.tf_input = None

    def _answerer_for(self, backend: GeometryBackend):
        """The semantic expert locates objects when the backend holds a model with a tokenizer; the planner's
        measurements answer in both cases."""
        model, service = getattr(backend, "model", None), f"{self.get_fully_qualified_name()}/ask"
        if model is None or getattr(model, "tokenizer", None) is None:
            self.get_logger().info(f"{service}: measured answers (plain language and JSON queries); questions about "
                                   "objects need a pixel or box (no tokenizer for grounding)")
            return PlannerAnswerer()
        self.get_logger().info(f"{service}: G2VLM's semantic expert, grounded in measured geometry; objects "
                               "located by it and measured")
        return GroundingAnswerer(GenerativeAnswerer(model, self.config.max_answer_tokens), PlannerAnswerer())

    def autostart(self) -> None:
        """configure + activate, as `autostart: true` asks; failures are logged and leave the node up."""
        if not self.config.autostart:
            self.get_logger().info("autostart is false: waiting for lifecycle transitions (configure, activate)")
            return
        self.trigger_configure()
        if self.state_label == "inactive":  # our own label: trigger_* return values differ across distros
            self.trigger_activate()

    def _on_parameters_changed(self) -> None:
        self.pipeline.update(pipeline_settings(self.config))
        if self.robot_frame_input is not None:
            self.robot_frame_input.frames.imu_max_age_s = self.config.imu_max_age_s
        answerer = self.ask_handler.answerer
        if isinstance(answerer, GroundingAnswerer):
            answerer.generator.max_new_tokens = self.config.max_answer_tokens

    def _first_camera_motion(self, previous: list[Frame], candidate: list[Frame]) -> Optional[tuple[float, float]]:
        tf_input = self.tf_input
        return None if tf_input is None else tf_input.motion(self.config.odom_frame, previous[0], candidate[0])

    # ---------------------------------------------------------------- input
    def _log_bad_input(self, camera: str, reason: str) -> None:
        if self._input_log.admit(camera, reason):
            self.get_logger().error(f"camera '{camera}': dropped frame: {reason}")

    def _on_camera_info(self, state: CameraInput, msg: CameraInfo) -> None:
        problem = state.set_camera_info(msg)
        if problem:
            self._log_bad_input(state.config.name, problem)

    def _on_image(self, state: CameraInput, msg) -> None:
        if not self.pipeline.active:
            return
        try:
            frame = state.accept(msg, with_thumbnail=self.config.keyframe_min_image_change > 0)
        except ImageConversionError as error:
            self._log_bad_input(state.config.name, str(error))
            return
        self.pipeline.add_frame(frame)

    # ---------------------------------------------------------------- results (pipeline's worker thread)
    def _publish_window(self, snapshot: Snapshot, outputs: WindowOutputs) -> None:
        publisher, map_publisher, scale_publisher = self.geometry_publisher, self.map_publisher, self.scale_publisher
        if publisher is None or map_publisher is None or scale_publisher is None:
            return  # released while the model ran
        config, frames, scale = self.config, snapshot.window.frames, snapshot.scale
        first_camera = self.camera_names[0]
        robot, previous = None, self.last_robot_pose  # read once: deactivation resets it from another thread
        if outputs.placement is not None and self._robot_odometry:
            camera = next(c for c in outputs.cameras if c.frame.camera == first_camera)
            robot = robot_pose(self.tf_input, config.odom_frame, config.base_frame, camera.frame,
                               camera.camera_to_world, previous=previous)
        # once the robot's TF was known, TF keeps its convention (map -> odom) even for a window without it
        known = robot or previous
        self.last_robot_pose = known
        publisher.publish(outputs, FrameSettings(config.map_frame, config.frame_prefix, config.odom_frame,
                                                 None if known is None else known.map_from_odom))
        scale_publisher.publish(scale_message(frames, scale, config.map_frame))
        world_map = self.pipeline.map
        if outputs.placement is None or world_map is None:
            return
        map_frames = MapFrames(config.map_frame, optical_frame(first_camera, config.frame_prefix), config.odom_frame,
                               config.base_frame)
        child, self.odometry_frame = odometry_child(robot, previous, self._robot_odometry, map_frames)
        if child is not None:
            map_publisher.publish_odometry(outputs, first_camera, map_frames, robot)
        map_publisher.publish_period_s = config.map_publish_period_s
        map_publisher.publish_map(world_map, first_camera, map_frames, outputs.newest_stamp_ns,
                                  map_up(self.last_robot_pose), force=outputs.placement.loop_closures > 0)

    # ---------------------------------------------------------------- /g2vlm/ask
    def latest_snapshot(self) -> Optional[Snapshot]:
        return self.pipeline.latest_snapshot()

    def not_ready_reason(self) -> str:
        if self.pipeline.backend is None:
            return f" (no model loaded: {self.backend_error})"
        if not self.pipeline.active:
            todo = "activate it" if self.state_label == "inactive" else "configure and activate it"
            return f" (node is {self.state_label}: {todo})"
        return ""

    # ---------------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        try:
            statuses = node_statuses(self._node_view(), self.pipeline.status())
        except Exception as error:  # a diagnostics bug must not stop the executor, and with it the node
            self.get_logger().error(f"diagnostics failed: {type(error).__name__}: {error}",
                                    throttle_duration_sec=LOG_THROTTLE_S)
            return
        self.diagnostics_publisher.publish(diagnostic_array(self.get_clock().now().to_msg(), statuses))

    def _node_view(self) -> NodeView:
        guard, scale_input = self.callback_guard, self.scale_input
        return NodeView(
            hardware_id=self.get_fully_qualified_name(), state_label=self.state_label, model_error=self.backend_error,
            uses_demo_model=self.uses_demo_model, config=self.config, inputs=self.inputs,
            questions=self.ask_handler.stats(), tf_output_mode=self.tf_output.mode, tf_input=self.tf_input,
            callback_errors=guard.total, last_callback_error=guard.last_error,
            sim_clock_problem=self.sim_clock.problem,
            depth_images_received=None if scale_input is None else scale_input.depth_received,
            odometry_frame=self.odometry_frame)

    def destroy_node(self) -> None:
        # getattr: also called by rclpy's shutdown on a node whose __init__ failed half-way
        if getattr(self, "_transition_lock", None) is not None:
            self._release(exiting=True)
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
    # beyond max_concurrent_questions that camera input (a thread per camera), services and timers never wait
    # for answers
    executor = MultiThreadedExecutor(
        num_threads=4 + len(node.config.cameras) + node.config.max_concurrent_questions)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)

    def start() -> None:  # a task of the executor: configure then sees TF arriving, as it does when asked later
        node.autostart()
        backend = node.pipeline.backend
        node.get_logger().info(
            f"ready: state {node.state_label}, cameras {node.camera_names}, backend "
            f"{backend.describe() if backend else 'none'}, scale {node.config.scale_source}, "
            f"map frame '{node.config.map_frame}'")

    spin_and_tear_down(executor, node, node.entity_gate, node.callback_guard, start)
    if node.window_abandoned:
        end_process(0)  # every ROS entity is destroyed; the model thread is still in the backend (see end_process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
