"""The package is installed the way `ros2 run` / `ros2 launch` expect, and builds with colcon."""
import ast
import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PREFIX = Path(sys.prefix)


def console_scripts() -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = cfg.get("options.entry_points", "console_scripts").strip().splitlines()
    return [line.split("=")[0].strip() for line in lines]


def test_ament_index_finds_package_share_and_executables():
    from ament_index_python.packages import get_package_prefix, get_package_share_directory

    share = Path(get_package_share_directory("g2vlm_ros"))
    assert (share / "package.xml").is_file()
    assert (share / "launch" / "perception.launch.py").is_file()
    assert (share / "config" / "g2vlm.yaml").is_file() and (share / "config" / "g2vlm.rviz").is_file()
    libexec = Path(get_package_prefix("g2vlm_ros")) / "lib" / "g2vlm_ros"
    for name in console_scripts():
        assert os.access(libexec / name, os.X_OK), f"{name} is not executable under {libexec}"
    assert Path(get_package_share_directory("g2vlm_interfaces"), "srv", "Ask.srv").is_file()


def test_ask_service_definition_has_the_documented_fields():
    from g2vlm_interfaces.srv import Ask

    request_fields = Ask.Request.get_fields_and_field_types()
    assert request_fields == {"question": "string", "cameras": "sequence<string>", "timeout_s": "float",
                              "target_frame": "string"}
    response_fields = Ask.Response.get_fields_and_field_types()
    assert response_fields == {
        "success": "boolean", "answer": "string", "reasoning": "string", "value": "double", "unit": "string",
        "points": "sequence<geometry_msgs/Point>", "frame_id": "string", "stamp": "builtin_interfaces/Time",
        "error": "string", "form": "string", "value_source": "string", "window_age_s": "double",
    }


def test_launch_file_uses_launch_ros_node_with_params_file_and_arguments():
    source = (REPO / "launch" / "perception.launch.py").read_text()
    tree = ast.parse(source)  # syntax check
    calls = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert {"Node", "DeclareLaunchArgument", "LaunchDescription", "OpaqueFunction"} <= calls
    assert "from launch_ros.actions import Node" in source
    assert 'executable="perception_node"' in source and "perception_node" in console_scripts()
    assert '"config", "g2vlm.yaml"' in source and (REPO / "config" / "g2vlm.yaml").is_file()
    for argument in ("params_file", "namespace", "use_rviz", "backend", "checkpoint_path", "engine_dir"):
        assert f'"{argument}"' in source, f"launch argument {argument} missing"


def test_launch_description_builds_on_a_real_ros_install():
    pytest.importorskip("launch_ros", reason="launch_ros is not on PyPI; runs on a real ROS install")
    import importlib.util

    spec = importlib.util.spec_from_file_location("perception_launch", REPO / "launch" / "perception.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.generate_launch_description().entities


def test_colcon_builds_both_packages(tmp_path):
    colcon = shutil.which("colcon", path=str(PREFIX / "bin"))
    if colcon is None:
        pytest.skip("colcon is not installed in this environment")
    env = dict(os.environ, AMENT_PREFIX_PATH=str(PREFIX), CMAKE_PREFIX_PATH=str(PREFIX),
               PATH=f"{PREFIX / 'bin'}:{os.environ['PATH']}")
    listed = subprocess.run([colcon, "list", "--base-paths", ".", "g2vlm_interfaces"], cwd=REPO, env=env,
                            capture_output=True, text=True, check=True).stdout
    types = dict(line.split("\t")[::2] for line in listed.splitlines())
    assert types == {"g2vlm_interfaces": "(ros.ament_cmake)", "g2vlm_ros": "(ros.ament_python)"}, listed
    build = subprocess.run(
        [colcon, "--log-base", str(tmp_path / "log"), "build", "--base-paths", ".", "g2vlm_interfaces",
         "--build-base", str(tmp_path / "build"), "--install-base", str(tmp_path / "install"),
         "--cmake-args", "-DBUILD_TESTING=OFF", "-DPython3_EXECUTABLE=" + sys.executable],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    install = tmp_path / "install"
    assert (install / "g2vlm_ros" / "lib" / "g2vlm_ros" / "perception_node").is_file()
    assert (install / "g2vlm_ros" / "share" / "g2vlm_ros" / "launch" / "perception.launch.py").is_file()
    assert (install / "g2vlm_ros" / "share" / "ament_index" / "resource_index" / "packages" / "g2vlm_ros").is_file()
    assert list((install / "g2vlm_interfaces").rglob("_ask.py")), "generated Ask module missing"


def test_params_file_lists_every_parameter_with_its_default():
    import yaml

    from g2vlm_ros.ros.params import PARAMETERS

    values = yaml.safe_load((REPO / "config" / "g2vlm.yaml").read_text())["/**"]["ros__parameters"]
    for spec in PARAMETERS:
        assert spec.name in values, f"config/g2vlm.yaml does not list '{spec.name}'"
        assert values[spec.name] == spec.default, f"'{spec.name}': file {values[spec.name]!r}, code {spec.default!r}"
    camera_keys = {"image_topic", "camera_info_topic", "transport", "frame_id"}
    assert set(values["camera"]) == camera_keys
    assert set(values) == {spec.name for spec in PARAMETERS} | {"camera"}, "unknown parameters in the file"


def test_orin_preset_sets_only_known_parameters():
    import yaml

    from g2vlm_ros.ros.params import PARAMETERS

    values = yaml.safe_load((REPO / "config" / "g2vlm_orin.yaml").read_text())["/**"]["ros__parameters"]
    assert set(values) == {spec.name for spec in PARAMETERS} | {"camera"}, "unknown or missing parameters"
    assert values["window_size"] == 2 and values["precision"] == "bf16" and values["cuda_graphs"] is True
