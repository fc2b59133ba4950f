"""Starts the g2vlm perception node (and optionally RViz).

  ros2 launch g2vlm_ros perception.launch.py
  ros2 launch g2vlm_ros perception.launch.py checkpoint_path:=/models/G2VLM-2B-MoT backend:=torch
  ros2 launch g2vlm_ros perception.launch.py cameras:=front,rear scale_source:=rig use_rviz:=true
  ros2 launch g2vlm_ros perception.launch.py scale_source:=tf odom_frame:=odom
  ros2 launch g2vlm_ros perception.launch.py autostart:=false   # then: ros2 lifecycle set /g2vlm configure
  ros2 launch g2vlm_ros perception.launch.py params_file:=/path/my_robot.yaml namespace:=front use_rviz:=true

Parameters come from `params_file` (default: the package's config/g2vlm.yaml). Each launch argument
in PARAMETER_OVERRIDES that is given a non-empty value overrides the parameter of the same name in that
file. Launch arguments are strings; `cameras` and `autostart` are converted here to the parameter's type
(string list, bool), because the node refuses a parameter of the wrong type. Each camera <name> reads its
topics from <name>.image_topic etc. in the params file, defaulting to /<name>/image_raw and
/<name>/camera_info.

The node is a managed (lifecycle) node that configures and activates itself when its `autostart`
parameter is true, so it is started as a plain Node; with autostart:=false it waits in 'unconfigured'.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

PACKAGE = "g2vlm_ros"

# launch argument -> description; an empty value keeps the params file's setting
PARAMETER_OVERRIDES = {
    "cameras": "comma-separated camera names, e.g. front,rear (topics: <name>.image_topic ... in params_file)",
    "backend": "auto | tensorrt | onnxruntime | torch (test_pattern: geometry-free I/O test only)",
    "checkpoint_path": "G2VLM checkpoint folder in the official layout (empty: the embedded demo model)",
    "engine_dir": "folder of compiled engines and ONNX graphs",
    "device": "cuda | cuda:N | cpu",
    "precision": "torch backend: auto | fp32 | fp16 | bf16",
    "scale_source": "none | fixed | tf | depth_topic | rig",
    "world_frame": "frame of /g2vlm/points and the camera poses",
    "odom_frame": "odometry frame for scale_source tf; the world frame is then placed in it on TF",
    "autostart": "true: configure and activate the managed node at start; false: wait for lifecycle transitions",
}

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


def _boolean(name, text):
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"launch argument {name}:={text!r} must be true or false")


def _string_list(name, text):
    # tolerate the YAML list form cameras:="[front, rear]" as well as front,rear
    items = [item.strip().strip("'\"") for item in text.strip().strip("[]").split(",")]
    items = [item for item in items if item]
    if not items:
        raise ValueError(f"launch argument {name}:={text!r} names no camera")
    return items


# a string reaches the node as a string parameter; these parameters have other types
CONVERSIONS = {"cameras": _string_list, "autostart": _boolean}


def parameter_overrides(context):
    """Non-empty launch arguments of PARAMETER_OVERRIDES as parameters of the node's types."""
    overrides = {}
    for name in PARAMETER_OVERRIDES:
        text = LaunchConfiguration(name).perform(context)
        if text != "":
            convert = CONVERSIONS.get(name)
            overrides[name] = convert(name, text) if convert else text
    return overrides


def _nodes(context):
    share = get_package_share_directory(PACKAGE)
    params_file = LaunchConfiguration("params_file").perform(context) or os.path.join(share, "config", "g2vlm.yaml")
    actions = [
        Node(
            package=PACKAGE,
            executable="perception_node",
            name="g2vlm",
            namespace=LaunchConfiguration("namespace"),
            parameters=[params_file, parameter_overrides(context)],
            arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level").perform(context)],
            output="screen",
            emulate_tty=True,
        )
    ]
    if _boolean("use_rviz", LaunchConfiguration("use_rviz").perform(context)):
        actions.append(Node(
            package="rviz2", executable="rviz2", name="g2vlm_rviz",
            arguments=["-d", os.path.join(share, "config", "g2vlm.rviz")], output="log",
        ))
    return actions


def generate_launch_description():
    arguments = [
        DeclareLaunchArgument("params_file", default_value="",
                              description="parameters YAML (empty: the package's config/g2vlm.yaml)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("use_rviz", default_value="false", description="also start RViz with config/g2vlm.rviz"),
        DeclareLaunchArgument("log_level", default_value="info", description="debug | info | warn | error"),
    ]
    arguments += [
        DeclareLaunchArgument(name, default_value="", description=description)
        for name, description in PARAMETER_OVERRIDES.items()
    ]
    return LaunchDescription(arguments + [OpaqueFunction(function=_nodes)])
