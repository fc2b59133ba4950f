"""Starts the g2vlm perception node (and optionally RViz).

  ros2 launch g2vlm_ros perception.launch.py
  ros2 launch g2vlm_ros perception.launch.py checkpoint_path:=/models/G2VLM-2B-MoT backend:=torch
  ros2 launch g2vlm_ros perception.launch.py cameras:=front,rear scale_source:=rig use_rviz:=true
  ros2 launch g2vlm_ros perception.launch.py scale_source:=tf odom_frame:=odom
  ros2 launch g2vlm_ros perception.launch.py autostart:=false   # then: ros2 lifecycle set /g2vlm configure
  ros2 launch g2vlm_ros perception.launch.py params_file:=/path/my_robot.yaml namespace:=robot1 use_rviz:=true
  ros2 launch g2vlm_ros perception.launch.py use_sim_time:=true      # stamps and TF from /clock (bag replay)

Parameters come from `params_file` (default: the package's config/g2vlm.yaml). Each launch argument
in PARAMETER_OVERRIDES that is given a non-empty value overrides the parameter of the same name in that
file. Launch arguments are strings; `cameras`, `autostart` and `use_sim_time` are converted here to the
parameter's type (string list, bool), because the node refuses a parameter of the wrong type. Each camera
<name> reads its topics from <name>.image_topic etc. in the params file, defaulting to the relative names
<name>/image_raw and <name>/camera_info: they resolve in the node's namespace, so with namespace:=robot1
camera front reads /robot1/front/image_raw (an absolute name in the params file reads outside it).

use_rviz:=true starts RViz only when rviz2 is installed; without it the launch logs how to install it
(apt install ros-$ROS_DISTRO-rviz2) and runs the node alone. rviz2 is not a run dependency: a headless
robot does not need it.

Stopping: on Ctrl-C the node gets SIGINT and finishes its teardown (a window in flight on a CPU model
can take seconds); launch escalates to SIGTERM only after sigterm_timeout (default 10 s) and to SIGKILL
sigkill_timeout (default 5 s) after that, instead of launch's 5 s + 5 s that a loaded machine can exceed.

The node is a managed (lifecycle) node that configures and activates itself when its `autostart`
parameter is true, so it is started as a plain Node; with autostart:=false it waits in 'unconfigured'.
"""
import os

from ament_index_python.packages import get_package_prefix, get_package_share_directory
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

PACKAGE = "g2vlm_ros"

# launch argument -> description; an empty value keeps the params file's setting
PARAMETER_OVERRIDES = {
    "cameras": "comma-separated camera names, e.g. front,rear (topics: <name>.image_topic ... in params_file)",
    "backend": "auto | tensorrt | onnxruntime | torch (placeholder: geometry-free I/O test only)",
    "checkpoint_path": "G2VLM checkpoint folder in the official layout (empty: the embedded demo model)",
    "engine_dir": "folder of compiled engines and ONNX graphs",
    "device": "cuda | cuda:N | cpu",
    "precision": "torch backend: auto | fp32 | fp16 | bf16",
    "scale_source": "none | fixed | tf | depth_topic | rig",
    "map_frame": "frame of the persistent map: points, poses, path, odometry and TF (default g2vlm_map)",
    "world_frame": "deprecated alias of map_frame",
    "odom_frame": "the robot's odometry frame (e.g. odom): scale_source tf, motion keyframes, map -> odom on TF",
    "autostart": "true: configure and activate the managed node at start; false: wait for lifecycle transitions",
    "use_sim_time": "true: the node (and RViz) take time from /clock, e.g. when a bag is replayed with --clock",
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
CONVERSIONS = {"cameras": _string_list, "autostart": _boolean, "use_sim_time": _boolean}

# launch's own defaults are 5 s each; the node's Ctrl-C teardown can take longer on a loaded machine. The
# names are those of launch's own configurations, so RViz gets the same timeouts by default.
STOP_TIMEOUTS = {"sigterm_timeout": "10", "sigkill_timeout": "5"}


def _seconds(name, text):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"launch argument {name}:={text!r} must be a number of seconds > 0")
    return text.strip()


def rviz_plan(use_rviz_text, find_package_prefix, ros_distro=""):
    """(start RViz?, message to log or None) for the use_rviz argument. find_package_prefix is
    ament_index_python's get_package_prefix: it raises PackageNotFoundError (a KeyError) when rviz2 is
    not installed, and then the launch warns and skips RViz instead of failing and leaving the node
    running without its launch."""
    if not _boolean("use_rviz", use_rviz_text):
        return False, None
    try:
        find_package_prefix("rviz2")
    except KeyError:
        package = f"ros-{ros_distro}-rviz2" if ros_distro else "ros-$ROS_DISTRO-rviz2"
        return False, (f"WARNING: use_rviz:=true but rviz2 is not installed; starting without RViz "
                       f"(install it with: sudo apt install {package})")
    return True, None


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
    overrides = parameter_overrides(context)
    timeouts = {name: _seconds(name, LaunchConfiguration(name).perform(context)) for name in STOP_TIMEOUTS}
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
            **timeouts,
        )
    ]
    start_rviz, message = rviz_plan(LaunchConfiguration("use_rviz").perform(context), get_package_prefix,
                                    os.environ.get("ROS_DISTRO", ""))
    if message:
        actions.append(LogInfo(msg=message))
    if start_rviz:
        sim_time = [{"use_sim_time": overrides["use_sim_time"]}] if "use_sim_time" in overrides else []
        actions.append(Node(
            package="rviz2", executable="rviz2", name="g2vlm_rviz",
            arguments=["-d", os.path.join(share, "config", "g2vlm.rviz")], parameters=sim_time, output="log",
        ))
    return actions


def generate_launch_description():
    arguments = [
        DeclareLaunchArgument("params_file", default_value="",
                              description="parameters YAML (empty: the package's config/g2vlm.yaml)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("use_rviz", default_value="false", description="also start RViz with config/g2vlm.rviz"),
        DeclareLaunchArgument("log_level", default_value="info", description="debug | info | warn | error"),
        DeclareLaunchArgument("sigterm_timeout", default_value=STOP_TIMEOUTS["sigterm_timeout"],
                              description="seconds from Ctrl-C (SIGINT) until launch sends the node SIGTERM"),
        DeclareLaunchArgument("sigkill_timeout", default_value=STOP_TIMEOUTS["sigkill_timeout"],
                              description="seconds from SIGTERM until launch sends SIGKILL"),
    ]
    arguments += [
        DeclareLaunchArgument(name, default_value="", description=description)
        for name, description in PARAMETER_OVERRIDES.items()
    ]
    return LaunchDescription(arguments + [OpaqueFunction(function=_nodes)])
