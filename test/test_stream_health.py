"""Health conditions, camera_info matching and runtime parameter rules, in-process (no node, no DDS)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from g2vlm_ros.pipeline.stream_health import Activity, camera_stalled, inference_stale, sync_failure
from g2vlm_ros.ros.camera_input import (
    CameraInput,
    calibration_from_camera_info,
    camera_info_from_calibration,
    camera_info_problem,
    frame_header,
    rescaled_camera_info,
)
from g2vlm_ros.ros.params import PARAMETERS, CameraConfig, ConfigError, NodeConfig, make_set_parameters_callback

S = 1_000_000_000


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_activity_measures_from_activation_until_the_event_happens():
    clock = FakeClock()
    activity = Activity(clock)
    assert activity.since(activity.last_window_at) is None  # inactive: nothing to report
    activity.activated()
    clock.t += 4.0
    assert activity.since(activity.last_window_at) == pytest.approx(4.0)
    activity.window_completed()
    clock.t += 1.5
    assert activity.since(activity.last_window_at) == pytest.approx(1.5)
    activity.deactivated()
    assert activity.since(activity.last_window_at) is None


def test_camera_stalled_after_the_timeout_with_the_age():
    assert camera_stalled(None, 2.0) is None and camera_stalled(1.9, 2.0) is None
    assert camera_stalled(7.25, 2.0) == "stalled: no image for 7.2 s (camera_timeout_s 2)"


def test_sync_failure_names_the_skewed_camera_and_the_skew():
    stamps = {"front": 100 * S, "rear": 110 * S}
    ages = {"front": 0.1, "rear": 0.1}
    message = sync_failure(stamps, ages, since_last_set_s=3.0, slop_s=0.05, timeout_s=2.0)
    assert "camera 'rear' is stamped 10.000 s after camera 'front'" in message and "sync_slop_s 0.05" in message
    assert sync_failure(stamps, ages, since_last_set_s=1.0, slop_s=0.05, timeout_s=2.0) is None  # sets are recent
    assert sync_failure({"front": 100 * S}, {"front": 0.1}, 3.0, 0.05, 2.0) is None  # one camera always syncs
    # a stalled camera is reported as stalled, not as skew
    assert sync_failure(stamps, {"front": 0.1, "rear": 5.0}, 3.0, 0.05, 2.0) is None


def test_inference_stale_with_its_cause():
    assert inference_stale(None, 10.0) is None and inference_stale(9.0, 10.0) is None
    message = inference_stale(12.0, 10.0, "no images from camera(s) front")
    assert message == "stale: no window completed for 12.0 s (inference_timeout_s 10): no images from camera(s) front"


def test_rate_decays_when_a_camera_stops(monkeypatch):
    import g2vlm_ros.ros.camera_input as camera_input

    now = [1000.0]
    monkeypatch.setattr(camera_input.time, "monotonic", lambda: now[0])
    state = CameraInput(CameraConfig("cam", "cam/image_raw", "", "raw", "cam_optical"))
    for index in range(20):
        now[0] = 1000.0 + index * 0.1
        try:
            state.accept(Image())  # counted on arrival, refused (empty image)
        except ValueError:
            pass
    assert state.rate_hz() == pytest.approx(10.0, rel=0.01)
    now[0] += 2.0
    assert state.rate_hz() < 5.0 and state.age_s() == pytest.approx(2.0)
    now[0] += 10.0
    assert state.rate_hz() == 0.0


def info(width: int, height: int, fx: float = 500.0) -> CameraInfo:
    message = CameraInfo(width=width, height=height)
    message.k = [fx, 0.0, width / 2, 0.0, fx, height / 2, 0.0, 0.0, 1.0]
    message.p = [fx, 0.0, width / 2, -0.1 * fx, 0.0, fx, height / 2, 0.0, 0.0, 0.0, 1.0, 0.0]
    return message


def test_camera_info_of_the_same_aspect_is_rescaled_per_axis():
    rescaled = rescaled_camera_info(info(1280, 960), 640, 480)
    assert (rescaled.width, rescaled.height) == (640, 480)
    np.testing.assert_allclose(np.reshape(rescaled.k, (3, 3)), [[250, 0, 320], [0, 250, 240], [0, 0, 1]])
    assert rescaled.p[3] == pytest.approx(-25.0)  # Tx = -fx * baseline, in the new pixels
    assert rescaled_camera_info(info(1280, 720), 640, 480) is None  # another aspect ratio


def test_camera_info_with_non_finite_values_is_refused():
    good = info(640, 480)
    assert camera_info_problem(good) == ""
    bad_p = info(640, 480)
    bad_p.p[0] = math.nan
    assert "P has non-finite values" in camera_info_problem(bad_p)
    bad_d = info(640, 480)
    bad_d.d = [0.1, math.inf, 0.0, 0.0, 0.0]
    assert "D has non-finite values" in camera_info_problem(bad_d)


def test_frames_get_only_camera_info_that_fits_them():
    said: list[str] = []
    state = CameraInput(CameraConfig("cam", "cam/image_raw", "", "raw", "cam_optical"), said.append)
    assert state.set_camera_info(info(1280, 960)) is None
    assert state._camera_info_for(640, 480).width == 640
    assert state._camera_info_for(640, 480).width == 640
    assert len(said) == 1 and "rescaled" in said[0]  # said once per size pair
    assert state._camera_info_for(640, 360) is None
    assert "another aspect ratio" in said[-1] and "ignored" in state.last_error


def config(**values) -> NodeConfig:
    defaults = {spec.name: spec.default for spec in PARAMETERS}
    return NodeConfig.from_values([CameraConfig("cam", "cam/image_raw", "", "raw", "")], {**defaults, **values})


def test_the_typed_configuration_has_one_field_per_parameter():
    import dataclasses

    fields = {field.name: field.type for field in dataclasses.fields(NodeConfig)}
    assert set(fields) == {spec.name for spec in PARAMETERS}  # `cameras`: the names' settings
    for spec in PARAMETERS:
        if spec.name != "cameras":
            assert fields[spec.name] == type(spec.default).__name__, spec.name  # annotations are strings here
    assert config().values()["cameras"] == ["cam"] and config(window_size=3).window_size == 3


def test_the_backend_parameter_accepts_the_placeholders_old_name_without_listing_it():
    backend = next(spec for spec in PARAMETERS if spec.name == "backend")
    backend.check("test_pattern")  # users' launch files keep working; configure warns that it was renamed
    assert "placeholder" in backend.choices and "test_pattern" not in backend.choices
    with pytest.raises(ConfigError, match="'magic' is not one of"):
        backend.check("magic")


def test_runtime_changes_follow_the_start_up_rules():
    changes = []
    node_config = config()
    callback = make_set_parameters_callback(node_config, lambda: changes.append(1))
    refused = callback([Parameter("keyframe_min_motion_m", value=0.2)])
    assert not refused.successful and "need parameter 'odom_frame'" in refused.reason
    assert node_config.keyframe_min_motion_m == 0.0 and not changes
    accepted = callback([Parameter("keyframe_min_interval_s", value=0.5)])
    assert accepted.successful and node_config.keyframe_min_interval_s == 0.5 and changes == [1]
    with_odom = config(odom_frame="odom")
    assert make_set_parameters_callback(with_odom, lambda: None)([Parameter("keyframe_min_motion_m", value=0.2)]
                                                                 ).successful


def test_frame_ids_and_headers_stay_untouched_by_matching():
    state = CameraInput(CameraConfig("cam", "cam/image_raw", "", "raw", ""))
    state.set_camera_info(info(64, 48))
    image = Image(header=Header(frame_id="cam_optical"), height=48, width=64, encoding="rgb8", step=192)
    image.header.stamp.sec, image.header.stamp.nanosec = 5, 7
    image.data = bytes(64 * 48 * 3)
    frame = state.accept(image)
    assert frame.calibration.width == 64 and frame.frame_id == "cam_optical" and frame.stamp_ns == 5_000_000_007
    assert frame_header(frame) == Header(frame_id="cam_optical", stamp=image.header.stamp)


def test_camera_info_round_trips_through_the_pipelines_calibration():
    """Frames carry no ROS types: the CameraInfo republished beside the depth is rebuilt from the calibration."""
    original = info(64, 48)
    original.distortion_model, original.d = "rational_polynomial", [0.1, -0.2, 0.001, 0.002, 0.3, 0.0, 0.0, 0.0]
    original.p = [50.0, 0.0, 32.0, -3.5, 0.0, 51.0, 24.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    original.binning_x, original.roi.width, original.roi.height, original.roi.do_rectify = 2, 30, 20, True
    header = Header(frame_id="cam_optical")
    header.stamp.sec = 3
    rebuilt = camera_info_from_calibration(calibration_from_camera_info(original), header)
    original.header = header
    assert rebuilt == original
