"""Node parameters: declared with descriptors, validated, and gathered into a typed config.

Each parameter is described once in PARAMETERS (name, default, description, constraints); the
node declares them all, reads them into `NodeConfig`, and rejects invalid runtime changes in its
set-parameters callback with the same checks.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Optional

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter

from g2vlm_ros.backends.registry import BACKEND_CHOICES, PLUGIN_PREFIX, RENAMED_BACKENDS
from g2vlm_ros.mapping.world_map import MapSettings
from g2vlm_ros.pipeline.inference_health import OUT_OF_MEMORY_POLICIES
from g2vlm_ros.pipeline.mapping_stage import MapStageSettings
from g2vlm_ros.pipeline.perception import PipelineSettings
from g2vlm_ros.pipeline.windowing import WindowPolicy
from g2vlm_ros.precision import PRECISION_CHOICES

INPUT_QOS_CHOICES = ("sensor_data", "reliable")
OUTPUT_QOS_CHOICES = ("reliable", "best_effort")
SCALE_SOURCES = ("none", "fixed", "tf", "depth_topic", "rig")
TRANSPORTS = ("raw", "compressed")
CAMERA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class ConfigError(ValueError):
    """A parameter value is invalid; the message names the parameter."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    read_only: bool = True
    choices: tuple[str, ...] = ()
    int_range: Optional[tuple[int, int]] = None
    float_range: Optional[tuple[float, float]] = None

    def descriptor(self) -> ParameterDescriptor:
        constraints = f"one of: {', '.join(self.choices)}" if self.choices else ""
        descriptor = ParameterDescriptor(
            name=self.name, description=self.description, read_only=self.read_only,
            additional_constraints=constraints,
        )
        if self.int_range:
            descriptor.integer_range = [IntegerRange(from_value=self.int_range[0], to_value=self.int_range[1], step=1)]
        if self.float_range:
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=self.float_range[0], to_value=self.float_range[1], step=0.0)
            ]
        return descriptor

    def check(self, value: Any) -> None:
        # plugins are open-ended; old backend names stay valid (configure warns) so users' launch files keep working
        if self.name == "backend" and isinstance(value, str) and (value.startswith(PLUGIN_PREFIX)
                                                                  or value in RENAMED_BACKENDS):
            return
        if self.choices and value not in self.choices:
            raise ConfigError(f"parameter '{self.name}' = '{value}' is not one of {', '.join(self.choices)}")
        for bounds in (self.int_range, self.float_range):
            if bounds and not bounds[0] <= value <= bounds[1]:
                raise ConfigError(f"parameter '{self.name}' = {value} is outside [{bounds[0]}, {bounds[1]}]")


PARAMETERS = (
    ParamSpec("autostart", True, "Configure and activate this managed node at start. false: wait for "
              "lifecycle transitions (configure loads the model, activate starts the camera input)."),
    ParamSpec("cameras", ["camera"], "Camera names. Each camera <name> reads <name>.image_topic, "
              "<name>.camera_info_topic, <name>.transport and <name>.frame_id."),
    ParamSpec("input_qos", "sensor_data", "QoS of camera subscriptions: sensor_data (best effort, "
              "the REP 2003 camera profile) or reliable (e.g. for bag playback).", choices=INPUT_QOS_CHOICES),
    ParamSpec("output_qos", "reliable", "Reliability of the published outputs.", choices=OUTPUT_QOS_CHOICES),
    ParamSpec("map_frame", "g2vlm_map", "Frame of the persistent map: points, poses, path, odometry, map and "
              "TF. Its origin and axes are the first window's first camera view (optical axes); units are "
              "metres with a scale source, else the first window's."),
    ParamSpec("world_frame", "", "Deprecated alias of map_frame, accepted with a warning (map_frame wins when "
              "both are set)."),
    ParamSpec("odom_frame", "", "The robot's odometry frame (e.g. odom): camera positions for scale_source tf "
              "and motion keyframes are looked up in it, and with base_frame the node broadcasts map_frame -> "
              "odom_frame (REP 105). Empty: not used."),
    ParamSpec("base_frame", "base_link", "The robot's base frame (REP 105): with odom_frame and a metric map, "
              "~/odom gives its pose and map_frame -> odom_frame = map_T_base * inverse(odom_T_base) is broadcast; "
              "/g2vlm/ask takes up from +z of odom_frame when set and in TF, else +z of this frame. Empty: neither."),
    ParamSpec("publish_tf", True, "Broadcast map_frame -> odom_frame when the robot's odometry is known, else "
              "map_frame -> <frame_prefix><camera>_optical for every camera, on /tf."),
    ParamSpec("window_size", 4, "Keyframes per camera in one inference window (the newest frame always "
              "included). Windows of 2 or more overlap, which chains them into one map.", int_range=(1, 16)),
    ParamSpec("sync_slop_s", 0.05, "Largest stamp difference between the frames of different cameras that "
              "are treated as taken at the same time.", float_range=(0.0, 10.0)),
    ParamSpec("keyframe_min_interval_s", 0.0, "A frame becomes a keyframe only this long after the previous "
              "keyframe.", read_only=False, float_range=(0.0, 3600.0)),
    ParamSpec("keyframe_min_motion_m", 0.0, "Content criterion: the first camera moved this far (from TF in "
              "odom_frame) since the previous keyframe; 0 disables it.", read_only=False,
              float_range=(0.0, 1000.0)),
    ParamSpec("keyframe_min_rotation_deg", 0.0, "Content criterion: the first camera turned this much (from "
              "TF) since the previous keyframe; 0 disables it.", read_only=False, float_range=(0.0, 180.0)),
    ParamSpec("keyframe_min_image_change", 0.0, "Content criterion: mean absolute grey-level change (0..1) of "
              "a camera's thumbnail since the previous keyframe; 0 disables it. With several content "
              "criteria, any one suffices.", read_only=False, float_range=(0.0, 1.0)),
    ParamSpec("max_rate_hz", 10.0, "Upper bound on inference windows per second.", read_only=False,
              float_range=(0.01, 1000.0)),
    ParamSpec("backend", "auto", "Inference backend. auto = tensorrt, then onnxruntime, then torch, the "
              "first that can run; placeholder is a geometry-free stand-in for I/O tests only; "
              "plugin:<module>:<Class> loads a GeometryBackend subclass of your own.",
              choices=BACKEND_CHOICES),
    ParamSpec("checkpoint_path", "", "Folder with a G2VLM checkpoint in the official layout; empty: the "
              "embedded demo model (small, trained on synthetic rooms only)."),
    ParamSpec("engine_dir", "", "Folder of compiled engines and ONNX graphs (empty: the source tree's engines/ when "
              "the package runs from its source tree, else ~/.cache/g2vlm_ros/engines)."),
    ParamSpec("device", "cuda", "Compute device for torch/onnxruntime backends (cuda, cuda:N or cpu)."),
    ParamSpec("precision", "auto", "Model precision for the torch backend: auto (bf16 on GPUs that support it, "
              "fp32 on the CPU), fp32, fp16 or bf16. Exported graphs and engines carry their own.",
              choices=PRECISION_CHOICES),
    ParamSpec("cuda_graphs", True, "torch backend on CUDA: capture each input size once as a CUDA graph "
              "and replay it (much lower latency; a few seconds of capture per new size)."),
    ParamSpec("allow_engine_rebuild", False, "tensorrt backend: rebuild an engine that does not match this "
              "TensorRT version, GPU or checkpoint from its ONNX graph instead of refusing it."),
    ParamSpec("scale_source", "none", "Metric scale of the up-to-scale model: none (relative outputs; depth "
              "on <camera>/depth_relative), fixed (fixed_scale), tf (camera motion from TF in odom_frame), "
              "depth_topic (a metric depth image on scale_depth_topic) or rig (the TF distance between the "
              "first two cameras). Metric depth goes to <camera>/depth (metres) only while a scale is known.",
              choices=SCALE_SOURCES),
    ParamSpec("fixed_scale", 1.0, "Metres per model unit when scale_source is fixed.", read_only=False,
              float_range=(1e-6, 1e6)),
    ParamSpec("scale_depth_topic", "", "scale_source depth_topic: metric depth image (32FC1 metres or 16UC1 "
              "millimetres) registered to scale_depth_camera's image."),
    ParamSpec("scale_depth_camera", "", "scale_source depth_topic: the camera whose pixels the depth image "
              "matches (empty: the first camera)."),
    ParamSpec("scale_max_age_s", 10.0, "A window whose own scale fit fails (e.g. no motion) reuses the last "
              "fit at most this old; older: outputs fall back to relative.", read_only=False,
              float_range=(0.0, 3600.0)),
    ParamSpec("cloud_stride", 2, "Keep every n-th pixel in each direction for /g2vlm/points.", read_only=False,
              int_range=(1, 64)),
    ParamSpec("voxel_size", 0.0, "Merge cloud points per voxel of this edge (world units: metres with a "
              "metric scale); 0 disables.", read_only=False, float_range=(0.0, 100.0)),
    ParamSpec("confidence_threshold", 0.0, "Drop cloud points below this confidence: the model's "
              "confidence head, or the agreement of its two point heads when it has none.",
              read_only=False, float_range=(0.0, 1.0)),
    ParamSpec("max_question_bytes", 4096, "Longest accepted /g2vlm/ask question in UTF-8 bytes.",
              int_range=(1, 1_000_000)),
    ParamSpec("max_concurrent_questions", 4, "Questions answered at once; more are refused at once (busy), "
              "so questions never starve perception.", int_range=(1, 64)),
    ParamSpec("max_answer_tokens", 128, "Most tokens the semantic expert generates for one answer (checkpoints "
              "with a tokenizer).", read_only=False, int_range=(1, 4096)),
    ParamSpec("ask_timeout_s", 10.0, "Default /g2vlm/ask timeout when the request gives none.",
              read_only=False, float_range=(0.01, 3600.0)),
    ParamSpec("imu_topic", "", "sensor_msgs/Imu topic for the up direction when TF gives none: up is the direction "
              "of the measured linear acceleration (gravity's reaction) while the robot is not accelerating much. "
              "Empty: no IMU. Relative names resolve in the node's namespace."),
    ParamSpec("imu_max_age_s", 0.5, "IMU messages count for a window only when stamped within this many seconds of "
              "the window's first view.", read_only=False, float_range=(0.001, 60.0)),
    ParamSpec("out_of_memory_policy", "reduce_window", "When inference runs out of (GPU) memory: reduce_window "
              "retries with fewer keyframes and keeps that limit; skip_window drops the window.",
              read_only=False, choices=OUT_OF_MEMORY_POLICIES),
    ParamSpec("diagnostics_period_s", 1.0, "Period of /diagnostics messages.", float_range=(0.05, 60.0)),
    ParamSpec("camera_timeout_s", 2.0, "Diagnostics: a camera with no image for this long is reported as stalled "
              "(WARN), and cameras that form no synchronized set for this long as skewed.", read_only=False,
              float_range=(0.1, 3600.0)),
    ParamSpec("inference_timeout_s", 15.0, "Diagnostics: while active, no window completing inference for this "
              "long is reported as stale (WARN). Allow for the model's latency on slow devices.", read_only=False,
              float_range=(0.1, 3600.0)),
    ParamSpec("map_publish_period_s", 1.0, "~/map, ~/map_grid and ~/path (each the whole map) are published at "
              "most this often.", read_only=False, float_range=(0.05, 3600.0)),
    ParamSpec("map_voxel_size", 0.05, "Edge of the map cloud's voxels (map units: metres with a scale source).",
              float_range=(1e-4, 100.0)),
    ParamSpec("map_max_points", 300_000, "Memory bound of the map cloud in points; beyond it the oldest "
              "keyframes' points are dropped.", int_range=(1000, 100_000_000)),
    ParamSpec("map_stride", 8, "Every n-th pixel in each direction of each view goes to the map (window "
              "alignment and the map cloud): keeps the map stage cheap.", int_range=(1, 64)),
    ParamSpec("loop_closure", True, "Detect revisits by the model's global descriptors and verify each candidate "
              "by running it with the current view as one window; accepted loops correct the keyframe graph."),
    ParamSpec("loop_closure_images", 200, "Keyframe images kept for loop checks (memory: this many camera images); "
              "beyond it they thin out evenly over the run.", int_range=(0, 1_000_000)),
    ParamSpec("map_grid_resolution", 0.05, "Cell edge of ~/map_grid (map units).", float_range=(1e-3, 100.0)),
    ParamSpec("map_grid_min_height", 0.1, "Lowest height above the floor whose map points occupy ~/map_grid cells "
              "(map units).", float_range=(-100.0, 100.0)),
    ParamSpec("map_grid_max_height", 1.5, "Highest height above the floor whose map points occupy ~/map_grid "
              "cells (map units).", float_range=(-100.0, 100.0)),
    ParamSpec("frame_prefix", "g2vlm/", "Prefix of the node's own TF frames for the predicted camera poses "
              "(<frame_prefix><camera>_optical), so that they never take the name of a frame of the robot's TF "
              "tree; configure fails if one of them is already in the tree."),
)
SPECS = {spec.name: spec for spec in PARAMETERS}


def camera_specs(camera: str) -> tuple[ParamSpec, ...]:
    return (
        ParamSpec(f"{camera}.image_topic", f"{camera}/image_raw", f"Image topic of camera '{camera}' "
                  "(rgb8, bgr8, rgba8, bgra8, mono8, mono16); with transport=compressed, the CompressedImage topic. "
                  "Relative names resolve in the node's namespace."),
        ParamSpec(f"{camera}.camera_info_topic", f"{camera}/camera_info", f"CameraInfo topic of camera "
                  f"'{camera}'; empty: estimate intrinsics from the model. Relative names resolve in the node's "
                  "namespace."),
        ParamSpec(f"{camera}.transport", "raw", f"Input transport of camera '{camera}'.", choices=TRANSPORTS),
        ParamSpec(f"{camera}.frame_id", "", f"Optical frame of camera '{camera}'; empty: the image header's."),
    )


@dataclass(frozen=True)
class CameraConfig:
    name: str
    image_topic: str
    camera_info_topic: str
    transport: str
    frame_id: str


@dataclass(kw_only=True)
class NodeConfig:
    """Every parameter of the node as a typed field, named as in PARAMETERS (defaults live there, once; a test keeps
    the two in step). `cameras` holds each camera's settings; the `cameras` parameter is their names."""

    cameras: list[CameraConfig]
    autostart: bool
    input_qos: str
    output_qos: str
    map_frame: str
    world_frame: str
    odom_frame: str
    base_frame: str
    publish_tf: bool
    window_size: int
    sync_slop_s: float
    keyframe_min_interval_s: float
    keyframe_min_motion_m: float
    keyframe_min_rotation_deg: float
    keyframe_min_image_change: float
    max_rate_hz: float
    backend: str
    checkpoint_path: str
    engine_dir: str
    device: str
    precision: str
    cuda_graphs: bool
    allow_engine_rebuild: bool
    scale_source: str
    fixed_scale: float
    scale_depth_topic: str
    scale_depth_camera: str
    scale_max_age_s: float
    cloud_stride: int
    voxel_size: float
    confidence_threshold: float
    max_question_bytes: int
    max_concurrent_questions: int
    max_answer_tokens: int
    ask_timeout_s: float
    imu_topic: str
    imu_max_age_s: float
    out_of_memory_policy: str
    diagnostics_period_s: float
    camera_timeout_s: float
    inference_timeout_s: float
    map_publish_period_s: float
    map_voxel_size: float
    map_max_points: int
    map_stride: int
    loop_closure: bool
    loop_closure_images: int
    map_grid_resolution: float
    map_grid_min_height: float
    map_grid_max_height: float
    frame_prefix: str

    @classmethod
    def from_values(cls, cameras: list[CameraConfig], values: dict[str, Any]) -> NodeConfig:
        """From parameter values by name (the `cameras` names among them are replaced by `cameras`)."""
        return cls(cameras=cameras, **{name: value for name, value in values.items() if name != "cameras"})

    def values(self) -> dict[str, Any]:
        """Parameter values by name, as declared (the `cameras` parameter as the list of names)."""
        values = {name: getattr(self, name) for name in SPECS if name != "cameras"}
        return {**values, "cameras": [camera.name for camera in self.cameras]}


def window_policy(config: NodeConfig) -> WindowPolicy:
    """The window assembler's policy from the node's parameters (at configure and after runtime changes)."""
    return WindowPolicy(
        window_size=config.window_size, sync_slop_s=config.sync_slop_s,
        keyframe_min_interval_s=config.keyframe_min_interval_s,
        keyframe_min_motion_m=config.keyframe_min_motion_m,
        keyframe_min_rotation_deg=config.keyframe_min_rotation_deg,
        keyframe_min_image_change=config.keyframe_min_image_change,
    )


def pipeline_settings(config: NodeConfig) -> PipelineSettings:
    """The pipeline's settings from the node's parameters (at start and after runtime changes)."""
    return PipelineSettings(
        cameras=tuple(camera.name for camera in config.cameras), window=window_policy(config),
        max_rate_hz=config.max_rate_hz, out_of_memory_policy=config.out_of_memory_policy,
        scale_source=config.scale_source, fixed_scale=config.fixed_scale, scale_max_age_s=config.scale_max_age_s,
        cloud_stride=config.cloud_stride, confidence_threshold=config.confidence_threshold,
        voxel_size=config.voxel_size, mapping=MapStageSettings(
            stride=config.map_stride, loop_images=config.loop_closure_images,
            map=replace(MapSettings(), voxel_size=config.map_voxel_size, max_points=config.map_max_points,
                        loop_closure=config.loop_closure)))


def _declare(node: Node, spec: ParamSpec) -> Any:
    value = node.declare_parameter(spec.name, spec.default, spec.descriptor()).value
    spec.check(value)
    return value


def declare_and_read(node: Node) -> NodeConfig:
    """Declares every parameter on `node` and returns the validated configuration."""
    values = {spec.name: _declare(node, spec) for spec in PARAMETERS}
    names = list(values["cameras"])
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"parameter 'cameras' must list unique names, got {names}")
    cameras = []
    for name in names:
        if not CAMERA_NAME.match(name):
            raise ConfigError(f"camera name '{name}' must match {CAMERA_NAME.pattern}")
        image_topic, info_topic, transport, frame_id = (_declare(node, spec) for spec in camera_specs(name))
        if not image_topic:
            raise ConfigError(f"parameter '{name}.image_topic' must not be empty")
        cameras.append(CameraConfig(name, image_topic, info_topic, transport, frame_id))
    resolve_world_frame(values, node.get_logger().warning)
    check_combination(values, names)
    if values["scale_source"] == "depth_topic" and not values["scale_depth_camera"]:
        values["scale_depth_camera"] = names[0]
    return NodeConfig.from_values(cameras, values)


def resolve_world_frame(values: dict[str, Any], warn: Callable[[str], None]) -> None:
    """The deprecated world_frame names the map frame unless map_frame is set too."""
    old, default = values["world_frame"], SPECS["map_frame"].default
    if not old:
        return
    if values["map_frame"] == default:
        values["map_frame"] = old
        warn(f"parameter 'world_frame' is deprecated: use 'map_frame' (now '{old}')")
    elif values["map_frame"] != old:
        warn(f"parameter 'world_frame' is deprecated and ignored: map_frame is '{values['map_frame']}'")


def check_combination(values: dict[str, Any], cameras: list[str]) -> None:
    """Rules that involve several parameters; each message says how to fix the configuration."""
    source, odom = values["scale_source"], values["odom_frame"]
    if source == "tf" and not odom:
        raise ConfigError("scale_source 'tf' needs parameter 'odom_frame' (e.g. odom): the frame in which TF "
                          "gives the camera positions")
    if (values["keyframe_min_motion_m"] > 0 or values["keyframe_min_rotation_deg"] > 0) and not odom:
        raise ConfigError("keyframe_min_motion_m / keyframe_min_rotation_deg need parameter 'odom_frame': "
                          "camera motion is read from TF in it")
    if odom and odom == values["map_frame"]:
        raise ConfigError(f"odom_frame and map_frame are both '{odom}': the node would overwrite the "
                          "odometry frame; give map_frame its own name")
    if values["map_grid_min_height"] >= values["map_grid_max_height"]:
        raise ConfigError("map_grid_min_height must be below map_grid_max_height")
    if source == "tf" and values["window_size"] * len(cameras) < 2:
        raise ConfigError("scale_source 'tf' compares at least two camera positions per window: set "
                          "window_size >= 2 or use two cameras")
    if source == "rig" and len(cameras) < 2:
        raise ConfigError("scale_source 'rig' needs at least two cameras (their TF distance is the baseline)")
    if source == "depth_topic":
        if not values["scale_depth_topic"]:
            raise ConfigError("scale_source 'depth_topic' needs parameter 'scale_depth_topic'")
        if values["scale_depth_camera"] and values["scale_depth_camera"] not in cameras:
            raise ConfigError(f"scale_depth_camera '{values['scale_depth_camera']}' is not one of the cameras "
                              f"{cameras}")


def make_set_parameters_callback(config: NodeConfig, on_change: Callable[[], None]):
    """Validates runtime changes against PARAMETERS and applies accepted ones to `config`."""

    def callback(parameters: list[Parameter]) -> SetParametersResult:
        for parameter in parameters:
            spec = SPECS.get(parameter.name)
            if spec is None:
                continue  # per-camera parameters are read-only; rclpy enforces that
            try:
                spec.check(parameter.value)
            except ConfigError as error:
                return SetParametersResult(successful=False, reason=str(error))
        # the rules that involve several parameters hold at runtime exactly as at start-up
        values = {**config.values(), **{p.name: p.value for p in parameters if p.name in SPECS}}
        try:
            check_combination(values, [camera.name for camera in config.cameras])
        except ConfigError as error:
            return SetParametersResult(successful=False, reason=str(error))
        for parameter in parameters:
            if parameter.name in SPECS:
                setattr(config, parameter.name, parameter.value)
        on_change()
        return SetParametersResult(successful=True)

    return callback
