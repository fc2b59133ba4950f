"""launch/perception.launch.py's decisions, without the launch packages (not installable from PyPI).

The file is loaded with small stand-ins for the launch and launch_ros classes it uses, which record their
arguments; the declared launch arguments and the OpaqueFunction then run as `ros2 launch` would run them,
with the real ament index (rviz2 is found or not found there). test_install.py builds the description
with the real packages where they are installed.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from conftest import REPO


class Recorded:
    """A launch action: keeps what it was built with."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class DeclareLaunchArgument(Recorded):
    pass


class LogInfo(Recorded):
    pass


class OpaqueFunction(Recorded):
    pass


class Node(Recorded):
    pass


class LaunchDescription(Recorded):
    pass


class LaunchConfiguration:
    def __init__(self, name, default=None):
        self.name = name

    def perform(self, context: dict) -> str:
        return context[self.name]


@pytest.fixture
def launch_file(monkeypatch):
    stand_ins = {
        "launch": {"LaunchDescription": LaunchDescription},
        "launch.actions": {"DeclareLaunchArgument": DeclareLaunchArgument, "LogInfo": LogInfo,
                           "OpaqueFunction": OpaqueFunction},
        "launch.substitutions": {"LaunchConfiguration": LaunchConfiguration},
        "launch_ros": {},
        "launch_ros.actions": {"Node": Node},
    }
    for name, attributes in stand_ins.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("perception_launch", REPO / "launch" / "perception.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def launch(module, **arguments: str) -> list[Recorded]:
    """The actions `ros2 launch g2vlm_ros perception.launch.py name:=value ...` would start."""
    description = module.generate_launch_description()
    entities = description.args[0]
    declared = {e.args[0]: e.kwargs["default_value"] for e in entities if isinstance(e, DeclareLaunchArgument)}
    unknown = set(arguments) - set(declared)
    assert not unknown, f"not launch arguments: {unknown}"
    (opaque,) = [e for e in entities if isinstance(e, OpaqueFunction)]
    return opaque.kwargs["function"]({**declared, **arguments})


def nodes(actions: list[Recorded], executable: str) -> list[Node]:
    return [a for a in actions if isinstance(a, Node) and a.kwargs["executable"] == executable]


def fake_rviz2_prefix(root: Path) -> Path:
    """An ament prefix where the index lists rviz2, as an installed rviz2 leaves it."""
    marker = root / "share" / "ament_index" / "resource_index" / "packages" / "rviz2"
    marker.parent.mkdir(parents=True)
    marker.touch()
    return root


def test_use_rviz_without_rviz2_warns_and_runs_the_node_alone(launch_file, monkeypatch, tmp_path):
    monkeypatch.setenv("AMENT_PREFIX_PATH", sys.prefix)  # g2vlm_ros is installed here, rviz2 is not
    monkeypatch.setenv("ROS_DISTRO", "jazzy")
    actions = launch(launch_file, use_rviz="true")
    assert len(nodes(actions, "perception_node")) == 1 and not nodes(actions, "rviz2")
    (warning,) = [a.kwargs["msg"] for a in actions if isinstance(a, LogInfo)]
    assert "rviz2 is not installed" in warning and "sudo apt install ros-jazzy-rviz2" in warning, warning
    monkeypatch.delenv("ROS_DISTRO")
    assert "apt install ros-$ROS_DISTRO-rviz2" in launch_file.rviz_plan("true", launch_file.get_package_prefix)[1]

    monkeypatch.setenv("AMENT_PREFIX_PATH", f"{fake_rviz2_prefix(tmp_path)}:{sys.prefix}")
    actions = launch(launch_file, use_rviz="true")
    assert len(nodes(actions, "rviz2")) == 1 and not [a for a in actions if isinstance(a, LogInfo)]
    assert not nodes(launch(launch_file, use_rviz="false"), "rviz2")
    with pytest.raises(ValueError, match="use_rviz:='maybe' must be true or false"):
        launch(launch_file, use_rviz="maybe")


def test_the_node_gets_generous_stop_timeouts_and_use_sim_time(launch_file, monkeypatch, tmp_path):
    monkeypatch.setenv("AMENT_PREFIX_PATH", f"{fake_rviz2_prefix(tmp_path)}:{sys.prefix}")
    (node,) = nodes(launch(launch_file), "perception_node")
    # launch's defaults (5 s, 5 s) are shorter than a loaded machine's teardown with a window in flight
    assert (node.kwargs["sigterm_timeout"], node.kwargs["sigkill_timeout"]) == ("10", "5")
    assert "use_sim_time" not in node.kwargs["parameters"][1]  # the params file decides
    actions = launch(launch_file, sigterm_timeout="20", sigkill_timeout="2.5", use_sim_time="true", use_rviz="true")
    (node,) = nodes(actions, "perception_node")
    assert (node.kwargs["sigterm_timeout"], node.kwargs["sigkill_timeout"]) == ("20", "2.5")
    assert node.kwargs["parameters"][1]["use_sim_time"] is True
    (rviz,) = nodes(actions, "rviz2")
    assert rviz.kwargs["parameters"] == [{"use_sim_time": True}]
    for name, value in (("sigterm_timeout", "soon"), ("sigkill_timeout", "0"), ("sigterm_timeout", "inf")):
        with pytest.raises(ValueError, match=f"{name}:='{value}' must be a number of seconds > 0"):
            launch(launch_file, **{name: value})


def test_the_node_and_its_camera_topics_follow_the_namespace(launch_file):
    import yaml

    (node,) = nodes(launch(launch_file, namespace="robot1"), "perception_node")
    assert node.kwargs["namespace"].perform({"namespace": "robot1"}) == "robot1"
    # relative default topics are what makes namespace:=robot1 move the camera inputs too, as documented
    camera = yaml.safe_load((REPO / "config" / "g2vlm.yaml").read_text())["/**"]["ros__parameters"]["camera"]
    assert not camera["image_topic"].startswith("/") and not camera["camera_info_topic"].startswith("/"), camera
    doc = " ".join(launch_file.__doc__.split())
    assert "<name>/image_raw and <name>/camera_info: they resolve in the node's namespace" in doc
