"""The perception node's /diagnostics content: model, inference, scale, map and one status per camera.

Kept apart from the node so that what an operator sees in rqt_runtime_monitor is readable in one place. It
reads the pipeline's typed status and a NodeView of what only the ROS layer knows, never the node itself.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

from g2vlm_ros.pipeline.status import PipelineStatus
from g2vlm_ros.pipeline.stream_health import camera_stalled, inference_stale, sync_failure
from g2vlm_ros.ros.ask_handler import QuestionStats
from g2vlm_ros.ros.camera_input import CameraInput
from g2vlm_ros.ros.diagnostics import ERROR, WARN, StatusBuilder, gpu_memory
from g2vlm_ros.ros.params import NodeConfig
from g2vlm_ros.ros.tf_input import TfInput


@dataclass(frozen=True)
class NodeView:
    """What diagnostics read of the node besides the pipeline's status."""

    hardware_id: str  # the node's fully qualified name
    state_label: str  # lifecycle state
    model_error: str  # why no model is loaded ('' when one is)
    uses_demo_model: bool
    config: NodeConfig
    inputs: Mapping[str, CameraInput]
    questions: QuestionStats
    tf_output_mode: str
    tf_input: Optional[TfInput]
    callback_errors: int
    last_callback_error: str
    sim_clock_problem: str
    depth_images_received: Optional[int]  # with scale_source depth_topic, once configured
    odometry_frame: str  # child frame of the last ~/odom, or why the last window had none; '' before any


def node_statuses(node: NodeView, pipeline: PipelineStatus) -> list[StatusBuilder]:
    """Statuses of the node (read without locks: counters are monotonic ints)."""
    name, hardware_id = "g2vlm", node.hardware_id
    return [_model(node, pipeline, name, hardware_id), _inference(node, pipeline, name, hardware_id),
            _scale(node, pipeline, name, hardware_id), _map(node, pipeline, name, hardware_id),
            _questions(node.questions, name, hardware_id)] + _cameras(node, name, hardware_id)


def _questions(questions: QuestionStats, name: str, hardware_id: str) -> StatusBuilder:
    status = StatusBuilder(f"{name}: questions", hardware_id)
    status.add("answerer", questions.answerer)
    status.add("answered", questions.answered).add("refused", questions.refused)
    status.add("refused_busy", questions.busy).add("timed_out", questions.timed_out)
    status.add("max_concurrent_questions", questions.max_concurrent)
    return status


def _model(node: NodeView, pipeline: PipelineStatus, name: str, hardware_id: str) -> StatusBuilder:
    model = StatusBuilder(f"{name}: model", hardware_id)
    model.add("lifecycle_state", node.state_label)
    backend = pipeline.backend
    if backend is None:
        model.set(ERROR, f"no model loaded: {node.model_error}")
    else:
        model.add("backend", backend.description).add("precision", backend.precision)
        for key, value in backend.details.items():
            model.add(key, value)
        if backend.is_placeholder:
            model.set(WARN, "test placeholder backend: outputs are not geometry")
        elif node.uses_demo_model:
            model.add("checkpoint", "embedded demo model")
            model.set(WARN, "embedded demo model (synthetic-trained, 11.7 M parameters): set checkpoint_path "
                            "for G2VLM-2B")
    for key, value in gpu_memory().items():
        model.add(key, value)
    return model


def _inference(node: NodeView, pipeline: PipelineStatus, name: str, hardware_id: str) -> StatusBuilder:
    inference = StatusBuilder(f"{name}: inference", hardware_id)
    inference.add("lifecycle_state", node.state_label)
    worker = pipeline.worker
    if worker is not None:
        inference.add("windows_submitted", worker.submitted).add("windows_processed", worker.processed)
        inference.add("windows_dropped", worker.dropped).add("windows_failed", worker.failed)
        inference.add("latency_p50_ms", worker.latency_p50_ms).add("latency_p95_ms", worker.latency_p95_ms)
    health = pipeline.health
    inference.add("consecutive_failures", health.consecutive_failures)
    inference.add("out_of_memory_events", health.out_of_memory_events)
    inference.add("out_of_memory_policy", health.out_of_memory_policy)
    inference.add("keyframe_limit", health.keyframe_limit if health.keyframe_limit is not None else "none")
    if health.last_error:
        inference.add("last_error", health.last_error)
    if health.level != "ok":
        inference.set(ERROR if health.level == "error" else WARN, health.message)
    inference.add("windows_rate_limited", pipeline.windows_rate_limited)
    stats = pipeline.assembly
    if stats is not None:
        inference.add("window_size", pipeline.window_size)
        inference.add("synchronized_sets", stats.sets_matched).add("keyframes", stats.keyframes)
        inference.add("frames_unmatched", stats.frames_unmatched).add("frames_out_of_order", stats.out_of_order)
        if node.config.odom_frame:
            inference.add("keyframe_motion_unknown", stats.motion_unknown)
    if pipeline.confidence_source is not None:  # head | head_agreement (the two point heads compared) | none
        inference.add("confidence_source", pipeline.confidence_source)
    inference.add("tf_output", node.tf_output_mode)
    tf_input = node.tf_input
    if tf_input is not None:
        inference.add("tf_input", tf_input.mode)
        foreign = tf_input.foreign_parents()
        if foreign:
            inference.set(ERROR, "another node publishes this node's TF frame(s): " + ", ".join(
                f"'{child}' under '{parent}'" for child, parent in sorted(foreign.items())[:5])
                + "; set frame_prefix / map_frame to names no other node uses")
    inference.add("callback_errors", node.callback_errors)
    if node.last_callback_error:
        inference.add("last_callback_error", node.last_callback_error)
    if node.sim_clock_problem:
        inference.set(WARN, node.sim_clock_problem)
    if node.state_label != "active":
        inference.set(WARN, f"node is {node.state_label}: no camera input is processed")
        return inference
    _stream_problems(node, pipeline, inference)
    return inference


def _stream_problems(node: NodeView, pipeline: PipelineStatus, inference: StatusBuilder) -> None:
    """Stale inference and unsynchronized cameras: conditions of time passing without an event."""
    config = node.config
    ages = {camera: state.age_s() for camera, state in node.inputs.items()}
    skew = sync_failure({camera: state.last_stamp_ns for camera, state in node.inputs.items()}, ages,
                        pipeline.seconds_since_last_set, config.sync_slop_s, config.camera_timeout_s)
    since_window = pipeline.seconds_since_last_window
    if since_window is not None:
        inference.add("seconds_since_last_window", round(since_window, 2))
    if skew:
        inference.add("sync_problem", skew)
    stalled = [camera for camera, age in ages.items() if age is None or age > config.camera_timeout_s]
    cause = (skew or (f"no images from camera(s) {', '.join(stalled)}" if stalled else "")
             or "the model has not finished a window (see latency and last_error)")
    stale = inference_stale(since_window, config.inference_timeout_s, cause)
    if stale and inference.level < WARN:
        inference.set(WARN, stale)
    elif skew and inference.level < WARN:
        inference.set(WARN, skew)


def _scale(node: NodeView, pipeline: PipelineStatus, name: str, hardware_id: str) -> StatusBuilder:
    status = StatusBuilder(f"{name}: scale", hardware_id)
    source = node.config.scale_source
    status.add("scale_source", source)
    if not pipeline.loaded:
        status.add("units", "n/a (not configured)")
        return status
    estimate = pipeline.scale
    status.add("units", "metres" if estimate.valid else "relative (up to scale)")
    status.add("metres_per_unit", estimate.metres_per_unit if estimate.valid else "none")
    status.add("residual_m", estimate.residual_m).add("samples", estimate.samples).add("age_s", estimate.age_s)
    status.add("fits", estimate.fits_total).add("failures", estimate.failures_total)
    status.add("status", estimate.status)
    if source == "depth_topic" and node.depth_images_received is not None:
        status.add("depth_images_received", node.depth_images_received)
    if source == "none":
        status.set(status.level, "relative outputs (scale_source none)")
    elif not estimate.valid:
        status.set(WARN, f"no metric scale: {estimate.status}; only relative depth is published")
    elif estimate.age_s > 0:
        status.set(WARN, estimate.status)
    else:
        status.set(status.level, f"{estimate.metres_per_unit:.4g} m per unit from {source}")
    return status


def _map(node: NodeView, pipeline: PipelineStatus, name: str, hardware_id: str) -> StatusBuilder:
    """Keyframes, loops, scale drift and how the last window was placed (initialized, chained, reinitialized)."""
    status = StatusBuilder(f"{name}: map", hardware_id)
    status.add("map_frame", node.config.map_frame)
    world_map = pipeline.map
    if world_map is None:
        status.add("units", "n/a (not configured)")
        return status
    status.add("units", "metres" if world_map.metric else "map units (the first window's)")
    status.add("windows_placed", world_map.windows_placed).add("windows_failed", world_map.windows_failed)
    for key, value in world_map.stats.items():  # keyframes, edges, loop_closures, segments, scale drift, cost ...
        status.add(key, value)
    status.add("last_shared_keyframes", world_map.last_shared_keyframes)
    status.add("last_scale_spread", world_map.last_scale_spread)
    status.add("loop_checks", world_map.loop_checks).add("loop_checks_failed", world_map.loop_checks_failed)
    status.add("loop_candidates_without_image", world_map.loop_candidates_without_image)
    status.add("odometry_child_frame", node.odometry_frame or "none yet")
    status.add("loop_images", world_map.loop_images)
    status.add("loop_image_mib", round(world_map.loop_image_bytes / 2**20, 1))
    if world_map.last_error:
        status.add("last_error", world_map.last_error)
    if world_map.last_status == "reinitialized":
        status.set(WARN, "the last window shared no keyframe with the map: a new segment started (its link to the "
                         "previous one is a guess)")
    elif node.odometry_frame.startswith("withheld"):
        status.set(WARN, f"~/odom {node.odometry_frame}")
    elif world_map.last_status:
        status.set(status.level, f"{world_map.stats.get('keyframes', 0)} keyframes, last window "
                                 f"{world_map.last_status}")
    return status


def _cameras(node: NodeView, name: str, hardware_id: str) -> list[StatusBuilder]:
    statuses = []
    for camera_name, state in node.inputs.items():
        camera = StatusBuilder(f"{name}: camera {camera_name}", hardware_id)
        camera.add("topic", state.config.image_topic).add("rate_hz", state.rate_hz())
        camera.add("frames_received", state.received).add("frames_rejected", state.rejected)
        camera.add("clock_resets", state.clock_resets)
        camera.add("camera_info", "received" if state.camera_info else "none (model intrinsics)")
        if state.last_error:
            camera.add("last_error", state.last_error)
        age = state.age_s()
        camera.add("seconds_since_last_image", "never" if age is None else round(age, 2))
        recent_error = state.recent_error()
        stalled = camera_stalled(age, node.config.camera_timeout_s) if node.state_label == "active" else None
        if recent_error:
            camera.set(WARN, recent_error)
        elif state.received == 0 and node.state_label == "active":
            camera.set(WARN, "no images received")
        elif stalled:
            camera.set(WARN, stalled)
        statuses.append(camera)
    return statuses
