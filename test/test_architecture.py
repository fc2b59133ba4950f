"""The layering the package promises: a ROS-free core (model, geometry, pipeline, backends, reasoning, ...) that
imports without rclpy or any ROS message package, a thin ROS layer in g2vlm_ros/ros, and tools in g2vlm_ros/cli."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "g2vlm_ros"
ROS_LAYERS = {"ros", "cli"}  # the only places that may speak ROS
# rclpy and its C extension, message and interface packages (ours too), and the ROS client tools
ROS_MODULE_PREFIXES = ("rclpy", "rcl_interfaces", "builtin_interfaces", "std_msgs", "sensor_msgs", "geometry_msgs",
                       "nav_msgs", "diagnostic_msgs", "lifecycle_msgs", "action_msgs", "tf2_ros", "tf2_msgs",
                       "g2vlm_interfaces", "launch", "launch_ros", "rosidl_runtime_py", "rosbag2_py")


def core_modules() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py")
                  if path.relative_to(PACKAGE).parts[0] not in ROS_LAYERS)


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def is_ros_module(name: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in ROS_MODULE_PREFIXES)


def test_nothing_in_the_core_imports_rclpy_or_ros_messages():
    """Every import statement, also those inside functions: the core runs where ROS is not installed."""
    offenders = {str(path.relative_to(PACKAGE)): sorted(filter(is_ros_module, imported_modules(path)))
                 for path in core_modules()}
    offenders = {path: names for path, names in offenders.items() if names}
    assert not offenders, f"ROS imports in the ROS-free core: {offenders}"
    packages = {path.relative_to(PACKAGE).parts[0] for path in core_modules()}
    assert {"pipeline", "geometry", "model", "reasoning"} <= packages


def test_nothing_in_the_core_imports_the_ros_layer():
    offenders = {str(path.relative_to(PACKAGE)): sorted(name for name in imported_modules(path)
                                                        if name.startswith(("g2vlm_ros.ros", "g2vlm_ros.cli")))
                 for path in core_modules()}
    offenders = {path: names for path, names in offenders.items() if names}
    assert not offenders, f"the core imports the ROS layer: {offenders}"


def test_the_core_imports_with_ros_unavailable():
    """Imports every core module in a fresh interpreter in which importing any ROS module fails."""
    modules = [".".join(("g2vlm_ros",) + path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
               for path in core_modules()]
    script = f"""
import importlib, importlib.abc, sys
PREFIXES = {ROS_MODULE_PREFIXES!r}
class NoRos(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == p or name.startswith(p + ".") for p in PREFIXES):
            raise ImportError(f"ROS module {{name}} imported by the core")
sys.meta_path.insert(0, NoRos())
for module in {modules!r}:
    importlib.import_module(module)
print("imported", len({modules!r}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"imported {len(modules)}" in result.stdout


def test_modules_stay_small():
    """The project's rule: modules of at most 500 lines, so that each one can be read whole."""
    long = {str(path.relative_to(PACKAGE)): count for path in PACKAGE.rglob("*.py")
            if (count := len(path.read_text().splitlines())) > 500}
    assert not long, f"modules over 500 lines: {long}"
