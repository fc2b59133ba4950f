"""Shared fixtures: an isolated DDS environment, node processes and a client node.

The environment is fixed at import time, before any test imports rclpy, so this process and the
node processes it starts share one private, loopback-only DDS domain.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE_LIB = Path(sys.prefix) / "lib" / "g2vlm_ros"
PARAMS_FILE = REPO / "config" / "g2vlm.yaml"

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # keep DDS off real network interfaces
# One DDS domain per test process, so that parallel workers (pytest -n) never see each other's nodes: a run draws
# a base from its id, each worker adds its index. A domain given by the caller is kept (single process only).
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _WORKER:
    _base = random.Random(os.environ.get("PYTEST_XDIST_TESTRUNUID", "")).randint(1, 90)
    os.environ["ROS_DOMAIN_ID"] = str(_base + int(_WORKER.removeprefix("gw")))
    # workers share the cores: one worker's torch (and its node processes) spinning on every core slows the others
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))
else:
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))
os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(REPO / "config" / "fastdds_large_shm.xml")
os.environ.pop("RMW_IMPLEMENTATION", None)  # only rmw_fastrtps_cpp exists in the pip install
os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)
os.environ["PYTHONUNBUFFERED"] = "1"
os.environ["PYTHONFAULTHANDLER"] = "1"  # a node that crashes prints every thread's Python stack


# `make test` runs the files on parallel workers (pytest -n 3 --dist loadfile --no-loadscope-reorder), which take
# files in collection order: the longest files go first, so that no worker is left running a long one alone at the
# end. Ranked by measured serial duration; the other files keep their usual order after them.
LONGEST_FILES_FIRST = (
    "test_runtime_robustness.py", "test_faults.py", "test_node_process.py", "test_play.py", "test_health_process.py",
    "test_service_abuse.py", "test_demo_model.py", "test_bad_input.py", "test_export.py", "test_backends.py",
    "test_scale_sources.py", "test_soak_script.py", "test_install.py", "test_demo.py", "test_ask_process.py",
    "test_process_memory.py",
    "test_ask_generation.py", "test_mapping_memory.py", "test_engines.py", "test_lifecycle.py", "test_map_node.py",
    "test_loop_closure.py", "test_ask_namespace.py", "test_overload.py", "test_inference_health.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: index for index, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # a stable sort: tests keep their order in a file


# the node's last start-up line; "backend ready: ..." comes earlier, before the demo-model banner and the rest
READY_LINE = "]: ready: state "


class NodeProcess:
    """A perception_node in its own process, its output captured in a log file."""

    def __init__(self, log_path: Path, parameters: dict[str, Any], extra_env: Optional[dict[str, str]] = None,
                 ros_args: tuple[str, ...] = ()):
        self.log_path = log_path
        args = [str(PACKAGE_LIB / "perception_node"), "--ros-args", "--params-file", str(PARAMS_FILE)]
        for name, value in parameters.items():
            args += ["-p", f"{name}:={format_parameter(value)}"]
        args += list(ros_args)  # further ROS arguments, e.g. ("-r", "__ns:=/robot1")
        self._log_file = open(log_path, "w")
        env = {**os.environ, **(extra_env or {})}
        self.process = subprocess.Popen(args, stdout=self._log_file, stderr=subprocess.STDOUT, env=env)

    def log(self) -> str:
        return self.log_path.read_text()

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_for_log(self, text: str, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if not self.alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"'{text}' not in node log after {timeout_s} s:\n{self.log()}")

    def stop(self, timeout_s: float = 15.0) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired as timeout:
                self.process.send_signal(signal.SIGUSR1)  # the node prints every thread's stack (spin.py)
                time.sleep(2.0)
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"node did not stop within {timeout_s} s after SIGINT:\n{self.log()}") from timeout
        self._log_file.close()
        return self.process.returncode


def format_parameter(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_parameter(item) for item in value) + "]"
    return str(value)


class NodeStarter:
    """starter(**parameters) -> NodeProcess, ready to receive; stop_all() stops them and checks their exit codes."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.started: list[NodeProcess] = []

    def __call__(self, wait_ready: bool = True, extra_env: Optional[dict[str, str]] = None,
                 ros_args: tuple[str, ...] = (), **parameters) -> NodeProcess:
        node = NodeProcess(self.folder / f"node{len(self.started)}.log", parameters, extra_env, ros_args)
        self.started.append(node)
        if wait_ready:
            node.wait_for_log(READY_LINE)
        return node

    def stop_all(self) -> None:
        for node in self.started:
            was_alive = node.alive()
            code = node.stop()
            if was_alive:
                assert code == 0, f"node exited with {code} on SIGINT:\n{node.log()}"


@pytest.fixture
def start_node(tmp_path):
    """start_node(**parameters) -> NodeProcess, ready to receive; stopped (and checked) after the test."""
    starter = NodeStarter(tmp_path)
    yield starter
    starter.stop_all()


@pytest.fixture(scope="module")
def start_module_node(tmp_path_factory):
    """start_node for a node that several tests of one module share (each node start costs seconds): only for
    tests that leave the node's state as they found it. Stopped (and checked) after the module's last test; a
    module that uses it must not also start a node named /g2vlm with start_node while it runs."""
    starter = NodeStarter(tmp_path_factory.mktemp("module_nodes"))
    yield starter
    starter.stop_all()


class RosClient:
    """A client node spinning in a background thread, with helpers to collect and wait."""

    def __init__(self):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"g2vlm_test_client_{os.getpid()}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def collect(self, message_type, topic: str, qos=10) -> list:
        received: list = []
        self.node.create_subscription(message_type, topic, received.append, qos)
        return received

    def call(self, service_type, name: str, request, timeout_s: float = 10.0):
        client = self.node.create_client(service_type, name)
        assert client.wait_for_service(timeout_sec=timeout_s), f"service {name} not available"
        future = client.call_async(request)
        wait_until(future.done, timeout_s, f"no response from {name}")
        return future.result()

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def wait_until(condition: Callable[[], Any], timeout_s: float, message: str = "",
               action: Optional[Callable[[], None]] = None, period_s: float = 0.05) -> Any:
    """Polls `condition` (running `action` before each poll) until it is truthy or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if action is not None:
            action()
        value = condition()
        if value:
            return value
        time.sleep(period_s)
    raise AssertionError(message or f"condition not met within {timeout_s} s")


@pytest.fixture(scope="session")
def ros_client():
    client = RosClient()
    yield client
    client.close()


class Camera:
    """Publishes frames of one camera at a fixed rate from a background timer of the test's client node.
    offset_s shifts its stamps (a camera on another clock); info_frame also sends a camera_info per frame with
    that frame_id; size is the images' (width, height). rate_hz None: no timer of its own (a rig's follower)."""

    def __init__(self, ros_client, name: str, rate_hz: Optional[float] = 10.0, offset_s: float = 0.0,
                 info_frame: str = "", size: tuple[int, int] = (640, 480)):
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image

        self.ros, self.name, self.offset_ns, self.info_frame, self.size = (
            ros_client, name, int(offset_s * 1e9), info_frame, size)
        self.followers: list[Camera] = []  # cameras triggered with this one: the same stamp, the same moment
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.publisher = ros_client.node.create_publisher(Image, f"/{name}/image_raw", reliable)
        self.infos = ros_client.node.create_publisher(CameraInfo, f"/{name}/camera_info", reliable) if info_frame \
            else None
        self.timer = ros_client.node.create_timer(1.0 / rate_hz, self.publish) if rate_hz else None

    def publish(self) -> None:
        now_ns = self.ros.node.get_clock().now().nanoseconds
        for camera in (self, *self.followers):
            camera.send(now_ns + camera.offset_ns)

    def send(self, stamp_ns: int) -> None:
        from sensor_msgs.msg import CameraInfo
        from std_msgs.msg import Header

        from test_node_process import rgb_image  # a test module: imported when a camera runs, not with conftest

        header = Header(frame_id=f"{self.name}_optical")
        header.stamp.sec, header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        width, height = self.size
        if self.infos is not None:
            info = CameraInfo(header=Header(frame_id=self.info_frame, stamp=header.stamp), width=width, height=height)
            info.k = [0.8 * width, 0.0, width / 2, 0.0, 0.8 * width, height / 2, 0.0, 0.0, 1.0]
            self.infos.publish(info)
        self.publisher.publish(rgb_image((90, 140, 200), header, width=width, height=height))

    def set_rate(self, rate_hz: float) -> None:
        self.timer.timer_period_ns = round(1e9 / rate_hz)  # rcl swaps the period atomically: safe while spinning

    def pause(self) -> None:
        self.timer.cancel()

    def resume(self) -> None:
        self.timer.reset()

    def stop(self) -> None:
        if self.timer is not None:
            self.ros.node.destroy_timer(self.timer)


@pytest.fixture
def camera(ros_client):
    """camera(**Camera options) -> a Camera with a fresh name, stopped after the test."""
    cameras = []

    def start(**options) -> Camera:
        cameras.append(Camera(ros_client, f"cam_{uuid.uuid4().hex[:8]}", **options))
        return cameras[-1]

    yield start
    for started in cameras:
        started.stop()


@pytest.fixture
def camera_rig(camera):
    """camera_rig(count, **Camera options) -> `count` hardware-triggered cameras: one timer publishes a frame of
    each with one stamp. Separate timers drift a tick apart when the client is busy, and their frames then rightly
    match nothing."""

    def start(count: int, **options) -> list[Camera]:
        leader = camera(**options)
        leader.followers = [camera(**(options | {"rate_hz": None})) for _ in range(count - 1)]
        return [leader, *leader.followers]

    return start


FIXTURES = REPO / "test" / "fixtures"


@pytest.fixture(scope="session")
def tf2_msgs_env(tmp_path_factory) -> dict[str, str]:
    """Environment for processes that need tf2_msgs (not on PyPI): a test-only build of the same
    TFMessage definition (test/fixtures/tf2_msgs) in a temporary prefix. This process keeps the
    pip-only environment; nodes and helper processes started with this env get /tf support."""
    import shutil

    if shutil.which("cmake") is None:
        pytest.skip("cmake is needed to build the tf2_msgs test fixture")
    build, prefix = tmp_path_factory.mktemp("tf_build"), tmp_path_factory.mktemp("tf_prefix")
    env = dict(os.environ, AMENT_PREFIX_PATH=sys.prefix, CMAKE_PREFIX_PATH=sys.prefix)
    for command in (
        ["cmake", "-S", str(FIXTURES / "tf2_msgs"), "-B", str(build), f"-DCMAKE_INSTALL_PREFIX={prefix}",
         "-DBUILD_TESTING=OFF", f"-DPython3_EXECUTABLE={sys.executable}"],
        ["cmake", "--build", str(build), "-j2"],
        ["cmake", "--install", str(build)],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    site = next(Path(prefix, "lib").glob("python3*/site-packages"))
    # the caller's PYTHONPATH stays behind the fixture's (as LD_LIBRARY_PATH does): with it dropped, nodes of a
    # run from another checkout (PYTHONPATH=<worktree>) imported the editable install's g2vlm_ros instead
    python_path = [str(site), str(FIXTURES)] + [part for part in [os.environ.get("PYTHONPATH", "")] if part]
    return {"PYTHONPATH": os.pathsep.join(python_path),
            "LD_LIBRARY_PATH": f"{prefix}/lib:{os.environ.get('LD_LIBRARY_PATH', '')}"}


class RobotProcess:
    """test/fixtures/synthetic_robot.py in its own process; stdout lines are collected by a thread."""

    def __init__(self, settings: dict, env: dict[str, str]):
        import json

        self.process = subprocess.Popen(
            [sys.executable, str(FIXTURES / "synthetic_robot.py"), json.dumps(settings)],
            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        wait_until(lambda: "robot running" in self.lines or self.process.poll() is not None, 20)
        assert self.process.poll() is None, "synthetic robot died:\n" + "\n".join(self.lines)

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.strip())

    def echoed(self) -> list[dict]:
        import json

        return [json.loads(line) for line in list(self.lines) if line.startswith("{")]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


class RobotStarter:
    def __init__(self, env: dict[str, str]):
        self.env = env
        self.robots: list[RobotProcess] = []

    def __call__(self, **settings) -> RobotProcess:
        self.robots.append(RobotProcess(settings, self.env))
        return self.robots[-1]

    def stop_all(self) -> None:
        for robot in self.robots:
            robot.stop()


@pytest.fixture
def start_robot(tf2_msgs_env):
    starter = RobotStarter(tf2_msgs_env)
    yield starter
    starter.stop_all()


@pytest.fixture(scope="module")
def start_module_robot(tf2_msgs_env):
    """start_robot for a robot process that the tests of one module share, as start_module_node."""
    starter = RobotStarter(tf2_msgs_env)
    yield starter
    starter.stop_all()


SHARED = REPO.parent / "shared"
PARITY = SHARED / "parity" / "tiny_recon"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random tiny G2VLM (2 layers, 2 heads sharing 1 KV head) written in the official layout."""
    from g2vlm_ros.model import tiny_config, write_random_checkpoint

    return write_random_checkpoint(tiny_config(num_heads=2, num_kv_heads=1), tmp_path_factory.mktemp("tiny"), seed=7)


@pytest.fixture(scope="session")
def tiny_graph(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint's geometry graph for one 28x28 view, with test_backends.IDS as its token ids and the
    checkpoint's fingerprint as its model hash: exported once for the session (an export takes seconds), for tests
    that need such a graph in an engine folder but do not test the export itself (test_export does). Use
    copy_graph(tiny_graph, folder) to give a test its own copy."""
    from test_backends import IDS  # a test module: imported when the fixture runs, not with conftest

    from g2vlm_ros.deploy.export import Bucket, checkpoint_fingerprint, export_geometry_onnx
    from g2vlm_ros.model import load_checkpoint

    return export_geometry_onnx(load_checkpoint(tiny_checkpoint), Bucket(1, 28, 28), tmp_path_factory.mktemp("graph"),
                                prefix_token_ids=IDS["prompt_token_ids"], special_token_ids=IDS["special_token_ids"],
                                model_hash=checkpoint_fingerprint(tiny_checkpoint))


def copy_graph(export, folder: Path):
    """A copy of an exported graph (ONNX file, its external data if any, manifest) in `folder`, as an ExportResult."""
    import shutil

    from g2vlm_ros.deploy.export import ExportResult

    folder.mkdir(parents=True, exist_ok=True)
    for path in export.onnx_path.parent.glob(export.onnx_path.stem + ".*"):
        shutil.copy2(path, folder / path.name)
    return ExportResult(folder / export.onnx_path.name, folder / export.manifest_path.name, dict(export.manifest))
