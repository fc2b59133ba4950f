"""Starts the g2vlm perception node (and optionally RViz).

  ros2 launch g2vlm_ros perception.launch.py
  ros2 launch g2vlm_ros perception.launch.py checkpoint_path:=/models/G2VLM-2B-MoT backend:=torch
  ros2 launch g2vlm_ros perception.launch.py params_file:=/path/my_robot.yaml namespace:=front use_rviz:=true

Parameters come from `params_file` (default: the package's config/g2vlm.yaml). Each launch argument
below that is given a non-empty value overrides the parameter of the same name in that file.
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
    "backend": "auto | tensorrt | onnxruntime | torch (test_pattern: geometry-free I/O test only)",
    "checkpoint_path": "G2VLM checkpoint folder in the official layout",
    "engine_dir": "folder of compiled engines and ONNX graphs",
    "device": "cuda | cuda:N | cpu",
    "precision": "torch backend: auto | fp32 | fp16 | bf16",
    "scale_source": "none (relative depth) | fixed (fixed_scale metres per unit)",
    "world_frame": "frame of /g2vlm/points and the camera poses",
}


def _nodes(context):
    share = get_package_share_directory(PACKAGE)
    params_file = LaunchConfiguration("params_file").perform(context) or os.path.join(share, "config", "g2vlm.yaml")
    overrides = {name: LaunchConfiguration(name).perform(context) for name in PARAMETER_OVERRIDES}
    overrides = {name: value for name, value in overrides.items() if value != ""}
    actions = [
        Node(
            package=PACKAGE,
            executable="perception_node",
            name="g2vlm",
            namespace=LaunchConfiguration("namespace"),
            parameters=[params_file, overrides],
            arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level").perform(context)],
            output="screen",
            emulate_tty=True,
        )
    ]
    if LaunchConfiguration("use_rviz").perform(context).lower() in ("true", "1", "yes"):
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
