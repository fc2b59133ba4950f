"""The perception node in its own process, driven over DDS from this process.

The node runs the `placeholder` backend, whose depth is 1 + luminance of the input pixel (see
g2vlm_ros/backends/placeholder.py), so every value that comes back can be predicted here.
"""
import math
import uuid

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseArray, PoseStamped
from nav_msgs.msg import Path
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from conftest import wait_until
from g2vlm_interfaces.msg import MetricScale
from g2vlm_interfaces.srv import Ask
from g2vlm_ros.ros.conversions import image_to_numpy_float, numpy_to_image, unpack_point_cloud, unpack_rgb_float

WIDTH, HEIGHT = 640, 480
LUMA = np.array([0.299, 0.587, 0.114])


def stamp_of(message) -> tuple[int, int]:
    return message.header.stamp.sec, message.header.stamp.nanosec


def expected_depth(rgb) -> float:
    return 1.0 + float(np.asarray(rgb, float) @ LUMA / 255.0)


@pytest.fixture
def camera(ros_client):
    """A unique camera name and topics per test, so stale messages of other tests never match."""
    name = f"cam_{uuid.uuid4().hex[:8]}"
    return name


def publish_until(ros_client, publisher, make_msg, received, count=1, timeout_s=20.0):
    """Publishes a fresh message every 50 ms until `received` holds `count` messages."""
    wait_until(lambda: len(received) >= count, timeout_s, f"nothing received after {timeout_s} s",
               action=lambda: publisher.publish(make_msg()))


def stamped(ros_client, frame_id: str) -> Header:
    header = Header(frame_id=frame_id)
    header.stamp = ros_client.node.get_clock().now().to_msg()
    return header


def rgb_image(colour, header, encoding="rgb8", width=WIDTH, height=HEIGHT) -> Image:
    image = np.empty((height, width, 3), np.uint8)
    image[:] = colour
    if encoding == "rgb8":
        return numpy_to_image(image, "rgb8", header)
    order = {"bgr8": [2, 1, 0], "rgba8": [0, 1, 2, 0], "bgra8": [2, 1, 0, 0], "mono8": [0]}[encoding]
    pixels = np.ascontiguousarray(image[..., order])
    msg = Image(header=header, height=height, width=width, encoding=encoding, step=width * len(order))
    msg.data = pixels.tobytes()
    return msg


def test_old_names_test_pattern_and_world_frame_still_work_with_one_warning_each(start_node):
    node = start_node(backend="test_pattern", cameras=["legacy"], world_frame="legacy_world")
    log = node.log()
    assert log.count("renamed to placeholder") == 1, log
    assert "backend ready: placeholder" in log and "TEST PLACEHOLDER" in log
    assert log.count("'world_frame' is deprecated: use 'map_frame' (now 'legacy_world')") == 1, log
    assert "map frame 'legacy_world'" in log


def test_outputs_carry_source_header_encoding_frames_and_predicted_values(start_node, ros_client, camera):
    # one view per window: the placeholder's pattern is per view, not a scene that windows could share
    node = start_node(backend="placeholder", cameras=[camera], cloud_stride=4, window_size=1)
    depth = ros_client.collect(Image, f"/g2vlm/{camera}/depth_relative")
    info = ros_client.collect(CameraInfo, f"/g2vlm/{camera}/camera_info")
    pose = ros_client.collect(PoseStamped, f"/g2vlm/{camera}/pose")
    points = ros_client.collect(PointCloud2, "/g2vlm/points")
    metric_depth = ros_client.collect(Image, f"/g2vlm/{camera}/depth")
    confidence = ros_client.collect(Image, f"/g2vlm/{camera}/confidence")
    pose_array = ros_client.collect(PoseArray, "/g2vlm/poses")
    path = ros_client.collect(Path, "/g2vlm/path")
    scale = ros_client.collect(MetricScale, "/g2vlm/scale")
    publisher = ros_client.node.create_publisher(Image, f"/{camera}/image_raw", qos_profile_sensor_data)
    sent = {}

    def make():
        header = stamped(ros_client, f"{camera}_optical")
        sent[(header.stamp.sec, header.stamp.nanosec)] = header
        return rgb_image((200, 100, 50), header)

    publish_until(ros_client, publisher, make, depth)
    wait_until(lambda: info and pose and points and confidence and pose_array and path and scale, 10,
               "camera_info, pose, points, confidence, poses, path or scale missing")

    msg = depth[0]
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) in sent, "depth must carry the source stamp"
    assert msg.header.frame_id == f"{camera}_optical"
    assert (msg.encoding, msg.width, msg.height) == ("32FC1", WIDTH, HEIGHT)
    np.testing.assert_allclose(image_to_numpy_float(msg), expected_depth((200, 100, 50)), rtol=1e-5)

    assert info[0].header.frame_id == f"{camera}_optical" and (info[0].width, info[0].height) == (WIDTH, HEIGHT)
    k = np.array(info[0].k).reshape(3, 3)
    # the placeholder's 60-degree horizontal field of view, scaled back to 640 px
    assert k[0, 0] == pytest.approx(0.5 * WIDTH / math.tan(math.radians(30)), rel=1e-6)
    assert k[0, 2] == pytest.approx((WIDTH - 1) / 2, abs=1e-6)

    assert pose[0].header.frame_id == "g2vlm_map"
    assert (pose[0].header.stamp.sec, pose[0].header.stamp.nanosec) in sent
    assert pose[0].pose.orientation.w == pytest.approx(1.0)

    cloud = points[0]
    assert cloud.header.frame_id == "g2vlm_map" and cloud.is_dense is False
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "rgb", "confidence"]
    data = unpack_point_cloud(cloud)
    assert len(data) == (WIDTH // 4 // 4) * (HEIGHT // 4 // 4)  # backend downsample 4, cloud stride 4
    np.testing.assert_allclose(data["z"], expected_depth((200, 100, 50)), rtol=1e-5)
    assert (unpack_rgb_float(data["rgb"]) == [200, 100, 50]).all()
    assert not metric_depth, "relative depth must never appear on the metric depth topic"
    assert "TEST PLACEHOLDER" in node.log()

    # the placeholder predicts confidence (= luminance): 32FC1 in [0, 1] with the source header
    assert confidence[0].encoding == "32FC1" and confidence[0].header.frame_id == f"{camera}_optical"
    np.testing.assert_allclose(image_to_numpy_float(confidence[0]), expected_depth((200, 100, 50)) - 1, rtol=1e-5)
    # window outputs: map frame (the first window is its origin), the newest source stamp, one pose per view
    for message in (pose_array[0], path[0]):
        assert message.header.frame_id == "g2vlm_map" and stamp_of(message) in sent
    assert len(pose_array[0].poses) == 1 and len(path[0].poses) == 1
    assert path[0].poses[0].header.frame_id == "g2vlm_map" and stamp_of(path[0].poses[0]) in sent
    assert not scale[0].valid and scale[0].source == "none" and math.isnan(scale[0].metres_per_unit)


@pytest.mark.parametrize("encoding", ["bgr8", "rgba8", "bgra8", "mono8"])
def test_every_supported_encoding_yields_the_depth_of_its_colour(start_node, ros_client, camera, encoding):
    start_node(backend="placeholder", cameras=[camera])
    depth = ros_client.collect(Image, f"/g2vlm/{camera}/depth_relative")
    publisher = ros_client.node.create_publisher(Image, f"/{camera}/image_raw", qos_profile_sensor_data)
    colour = (90, 90, 90) if encoding == "mono8" else (10, 200, 30)
    publish_until(ros_client, publisher, lambda: rgb_image(colour, stamped(ros_client, "opt"), encoding), depth)
    np.testing.assert_allclose(image_to_numpy_float(depth[0]), expected_depth(colour), rtol=1e-5)


def test_given_camera_info_is_republished_with_the_image_header(start_node, ros_client, camera):
    start_node(backend="placeholder", cameras=[camera], input_qos="reliable")
    info_out = ros_client.collect(CameraInfo, f"/g2vlm/{camera}/camera_info")
    info_pub = ros_client.node.create_publisher(CameraInfo, f"/{camera}/camera_info", 10)
    image_pub = ros_client.node.create_publisher(Image, f"/{camera}/image_raw", 10)
    given = CameraInfo(width=WIDTH, height=HEIGHT, distortion_model="plumb_bob")
    given.k = [500.0, 0.0, 320.0, 0.0, 505.0, 240.0, 0.0, 0.0, 1.0]

    def make():
        info_pub.publish(given)
        return rgb_image((1, 2, 3), stamped(ros_client, "left_optical"))

    publish_until(ros_client, image_pub, make, info_out)
    # the first output may predate the CameraInfo; wait for one that carries it
    wait_until(lambda: any(msg.k[0] == 500.0 for msg in info_out), 10, "given CameraInfo not used",
               action=lambda: image_pub.publish(make()))
    msg = next(msg for msg in info_out if msg.k[0] == 500.0)
    assert list(msg.k) == list(given.k) and msg.header.frame_id == "left_optical"


def test_fixed_scale_publishes_metres_on_depth_and_nothing_relative(start_node, ros_client, camera):
    start_node(backend="placeholder", cameras=[camera], scale_source="fixed", fixed_scale=2.5)
    metric = ros_client.collect(Image, f"/g2vlm/{camera}/depth")
    relative = ros_client.collect(Image, f"/g2vlm/{camera}/depth_relative")
    pose = ros_client.collect(PoseStamped, f"/g2vlm/{camera}/pose")
    publisher = ros_client.node.create_publisher(Image, f"/{camera}/image_raw", qos_profile_sensor_data)
    publish_until(ros_client, publisher, lambda: rgb_image((0, 0, 0), stamped(ros_client, "opt")), metric)
    np.testing.assert_allclose(image_to_numpy_float(metric[0]), 2.5 * expected_depth((0, 0, 0)), rtol=1e-5)
    wait_until(lambda: pose, 5)
    assert not relative


def test_two_cameras_form_one_window(start_node, ros_client):
    left, right = f"l{uuid.uuid4().hex[:6]}", f"r{uuid.uuid4().hex[:6]}"
    start_node(backend="placeholder", cameras=[left, right], window_size=1)  # one set: view 1 is the right camera
    poses = {name: ros_client.collect(PoseStamped, f"/g2vlm/{name}/pose") for name in (left, right)}
    points = ros_client.collect(PointCloud2, "/g2vlm/points")
    pubs = {name: ros_client.node.create_publisher(Image, f"/{name}/image_raw", qos_profile_sensor_data)
            for name in (left, right)}

    def publish_both():
        for name, colour in ((left, (0, 0, 0)), (right, (255, 255, 255))):
            pubs[name].publish(rgb_image(colour, stamped(ros_client, f"{name}_optical"), width=64, height=48))

    wait_until(lambda: poses[left] and poses[right] and points, 20, "no window from two cameras",
               action=publish_both)
    # camera order in the window is the parameter order: the second view sits 0.1 units along x (first window: the
    # map's origin; later ones share no keyframe with it and continue from the previous window's newest view)
    assert poses[left][0].pose.position.x == pytest.approx(0.0)
    assert poses[right][0].pose.position.x == pytest.approx(0.1)
    depths = unpack_point_cloud(points[-1])["z"]
    assert np.isclose(depths, 1.0).any() and np.isclose(depths, 2.0).any(), "cloud must hold both views"


def test_ask_service_validates_requests_and_never_invents_answers(start_node, ros_client, camera):
    start_node(backend="placeholder", cameras=[camera], max_question_bytes=100)
    ask = "/g2vlm/ask"
    before = ros_client.call(Ask, ask, Ask.Request(question="How far is the wall?"))
    assert not before.success and "no perception window" in before.error and math.isnan(before.value)

    depth = ros_client.collect(Image, f"/g2vlm/{camera}/depth_relative")
    publisher = ros_client.node.create_publisher(Image, f"/{camera}/image_raw", qos_profile_sensor_data)
    publish_until(ros_client, publisher, lambda: rgb_image((9, 9, 9), stamped(ros_client, "o")), depth)

    cases = {
        "": "the question is empty",
        "   ": "the question is empty",
        "x" * 101: "the limit is 100 bytes",
    }
    for question, error in cases.items():
        response = ros_client.call(Ask, ask, Ask.Request(question=question))
        assert not response.success and error in response.error
    response = ros_client.call(Ask, ask, Ask.Request(question="depth?", cameras=["nope"]))
    assert not response.success and "unknown camera(s) nope" in response.error
    response = ros_client.call(Ask, ask, Ask.Request(question="depth?", timeout_s=-1.0))
    assert not response.success and "timeout_s" in response.error
    response = ros_client.call(Ask, ask, Ask.Request(question="How far is the wall?", cameras=[camera]))
    assert not response.success and "answers questions of these forms" in response.error
    assert math.isnan(response.value) and response.frame_id == "g2vlm_map" and response.stamp.sec > 0
    # a grounded form is answered from the same window: the placeholder's depth is 1 + luminance
    response = ros_client.call(Ask, ask, Ask.Request(question="depth at (320, 240)?", cameras=[camera]))
    assert response.success and response.unit == "relative"
    assert response.value == pytest.approx(expected_depth((9, 9, 9)), rel=1e-5)


def test_without_a_model_the_node_stays_up_and_says_why(start_node, ros_client, camera):
    node = start_node(backend="auto", cameras=[camera], checkpoint_path="/nonexistent/g2vlm")
    assert "no model loaded" in node.log()
    diagnostics = ros_client.collect(DiagnosticArray, "/diagnostics")
    wait_until(lambda: any(s.name == "g2vlm: model" and s.level == b"\x02" and "no model loaded" in s.message
                           for a in diagnostics for s in a.status), 10, "model ERROR status not published")
    publisher = ros_client.node.create_publisher(Image, f"/{camera}/image_raw", 10)
    for _ in range(5):
        publisher.publish(rgb_image((1, 1, 1), stamped(ros_client, "o")))
    response = ros_client.call(Ask, "/g2vlm/ask", Ask.Request(question="How far?"))
    assert not response.success and "no model loaded" in response.error
    assert node.alive()


@pytest.mark.parametrize("parameters, message", [
    ({"backend": "magic"}, "parameter 'backend' = 'magic' is not one of"),
    ({"cameras": ["bad-name"]}, "camera name 'bad-name' must match"),
    ({"scale_source": "guess"}, "parameter 'scale_source' = 'guess'"),
    ({"scale_source": "tf", "window_size": 3}, "scale_source 'tf' needs parameter 'odom_frame'"),
    ({"scale_source": "tf", "odom_frame": "odom", "window_size": 1}, "set window_size >= 2 or use two cameras"),
    ({"scale_source": "rig"}, "scale_source 'rig' needs at least two cameras"),
    ({"scale_source": "depth_topic"}, "needs parameter 'scale_depth_topic'"),
    ({"odom_frame": "g2vlm_map"}, "give map_frame its own name"),
    ({"keyframe_min_motion_m": 0.1}, "need parameter 'odom_frame'"),
])
def test_invalid_configuration_is_refused_with_a_clear_reason(parameters, message):
    """The rules are a pure function of the parameters: checked in-process on a node given those overrides."""
    import rclpy
    from rclpy.parameter import Parameter

    from g2vlm_ros.ros.params import ConfigError, declare_and_read

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("g2vlm_config_check", context=context, parameter_overrides=[
            Parameter(name, value=value) for name, value in parameters.items()])
        with pytest.raises(ConfigError) as refused:
            declare_and_read(node)
        assert message in str(refused.value)
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_invalid_configuration_exits_with_code_2_and_the_reason(start_node):
    node = start_node(wait_ready=False, scale_source="rig")
    node.process.wait(20)
    assert node.process.returncode == 2 and "scale_source 'rig' needs at least two cameras" in node.log()


def test_runtime_parameter_changes_are_validated(start_node, ros_client, camera):
    from rcl_interfaces.msg import Parameter as ParameterMsg
    from rcl_interfaces.msg import ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    start_node(backend="placeholder", cameras=[camera])

    def set_parameter(name, value_kwargs):
        value = ParameterValue(**value_kwargs)
        request = SetParameters.Request(parameters=[ParameterMsg(name=name, value=value)])
        return ros_client.call(SetParameters, "/g2vlm/set_parameters", request).results[0]

    assert set_parameter("cloud_stride", {"type": ParameterType.PARAMETER_INTEGER, "integer_value": 8}).successful
    assert not set_parameter("cloud_stride", {"type": ParameterType.PARAMETER_INTEGER, "integer_value": 0}).successful
    result = set_parameter("backend", {"type": ParameterType.PARAMETER_STRING, "string_value": "torch"})
    assert not result.successful and "read-only" in result.reason.lower()


def test_raw_and_compressed_cameras_form_keyframe_windows(start_node, ros_client):
    """Two cameras (one JPEG), two keyframes each: one window of 4 views, camera-major, time-ordered."""
    import io

    from PIL import Image as PILImage
    from sensor_msgs.msg import CompressedImage

    raw, jpeg = f"r{uuid.uuid4().hex[:6]}", f"j{uuid.uuid4().hex[:6]}"
    start_node(backend="placeholder", cameras=[raw, jpeg], window_size=2, sync_slop_s=0.02,
               **{f"{jpeg}.transport": "compressed", f"{jpeg}.image_topic": f"/{jpeg}/image/compressed"})
    pose_array = ros_client.collect(PoseArray, "/g2vlm/poses")
    path = ros_client.collect(Path, "/g2vlm/path")
    raw_pub = ros_client.node.create_publisher(Image, f"/{raw}/image_raw", qos_profile_sensor_data)
    jpeg_pub = ros_client.node.create_publisher(CompressedImage, f"/{jpeg}/image/compressed", qos_profile_sensor_data)
    encoded = io.BytesIO()
    PILImage.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(encoded, format="JPEG")

    def publish_pair():
        header = stamped(ros_client, "opt")  # one capture time for both cameras
        raw_pub.publish(rgb_image((10, 10, 10), header, width=64, height=48))
        jpeg_pub.publish(CompressedImage(header=header, format="jpeg", data=encoded.getvalue()))

    wait_until(lambda: pose_array and path, 20, "no window from a raw and a compressed camera", action=publish_pair,
               period_s=0.1)
    # the placeholder puts view i at x = 0.1 i: views are raw(older, newer), jpeg(older, newer). The first window
    # founds the map, so its poses are the window's own; later windows are chained into it.
    assert [round(p.position.x, 3) for p in pose_array[0].poses] == [0.0, 0.1, 0.2, 0.3]
    stamps = [stamp_of(pose) for pose in path[-1].poses]
    assert len(stamps) == 2 and stamps[0] < stamps[1], "the path holds the first camera's keyframes in time order"


def test_camera_topics_follow_the_namespace(start_node, ros_client):
    """Default camera topics are relative: a node started in /<ns> reads /<ns>/<camera>/image_raw (drivers
    launched in the same namespace), and its outputs are under /<ns>/g2vlm."""
    namespace = f"ns_{uuid.uuid4().hex[:6]}"
    depth = ros_client.collect(Image, f"/{namespace}/g2vlm/front/depth_relative")
    start_node(backend="placeholder", cameras=["front"], ros_args=("-r", f"__ns:=/{namespace}"))
    publisher = ros_client.node.create_publisher(Image, f"/{namespace}/front/image_raw", 10)
    wait_until(lambda: depth, 20, "no output from the namespaced camera topic",
               action=lambda: publisher.publish(rgb_image((5, 5, 5), stamped(ros_client, "front_optical"))))
