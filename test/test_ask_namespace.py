"""The ask CLI finds a node started in a namespace (ROS_NAMESPACE, or --node absolute or relative), and when it
cannot, says which service or action it waited for and which Ask interfaces it does see. Across processes:
the perception node (placeholder backend) under `-r __ns:=/robot1`, and the installed `ask` executable."""
from __future__ import annotations

import os
import subprocess

import pytest

from conftest import PACKAGE_LIB
from g2vlm_ros.cli.ask import resolve_node

# unique names: another test run on this machine may share the DDS domain, and /g2vlm may well exist there
NAMESPACE, ELSEWHERE = f"robot_{os.getpid()}", f"nobody_{os.getpid()}"


def ask(*args: str, namespace: str = "") -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if key != "ROS_NAMESPACE"}
    if namespace:
        env["ROS_NAMESPACE"] = namespace
    return subprocess.Popen([str(PACKAGE_LIB / "ask"), "What is the depth at (1, 1)?", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_node_names_resolve_in_ros_namespace():
    assert resolve_node(None, "") == "/g2vlm" and resolve_node(None, "/") == "/g2vlm"
    assert resolve_node(None, "robot1") == resolve_node(None, "/robot1/") == "/robot1/g2vlm"
    assert resolve_node("g2vlm", "robot1") == "/robot1/g2vlm" and resolve_node("arm/g2vlm", "") == "/arm/g2vlm"
    assert resolve_node("/other/g2vlm/", "robot1") == "/other/g2vlm"
    for node, namespace in (("bad name", ""), ("/", ""), (None, "a//b"), ("2d", "")):
        with pytest.raises(ValueError, match="is not a valid ROS name"):
            resolve_node(node, namespace)


def test_ask_finds_a_namespaced_node_and_names_what_it_waited_for(start_node):
    start_node(backend="placeholder", cameras=["front"], ros_args=("-r", f"__ns:=/{NAMESPACE}"))
    # Independent runs in parallel: each CLI start (interpreter, rclpy, discovery) takes about a second.
    # The misses wait 5 s: long enough for discovery on a loaded machine to list the namespaced node's interfaces.
    runs = {
        "ROS_NAMESPACE": ask(namespace=NAMESPACE),
        "--node absolute": ask("--node", f"/{NAMESPACE}/g2vlm"),
        "--node relative": ask("--node", f"{NAMESPACE}/g2vlm"),
        "--stream with ROS_NAMESPACE": ask("--stream", namespace=NAMESPACE),
        "other ROS_NAMESPACE": ask("--wait", "5", namespace=ELSEWHERE),
        "--stream, other ROS_NAMESPACE": ask("--wait", "5", "--stream", namespace=ELSEWHERE),
        "--node relative, other ROS_NAMESPACE": ask("--wait", "5", "--node", "g2vlm", namespace=ELSEWHERE),
    }
    results = {name: (process.wait(60), process.stdout.read()) for name, process in runs.items()}
    for name in ("ROS_NAMESPACE", "--node absolute", "--node relative", "--stream with ROS_NAMESPACE"):
        code, out = results[name]
        # answered or refused by the node (no camera frames yet): either way it was found
        assert code in (0, 1) and "not available" not in out, f"{name}: exit {code}\n{out}"
    for name, kind, interface in (("other ROS_NAMESPACE", "service", "ask"),
                                  ("--stream, other ROS_NAMESPACE", "action", "ask_stream"),
                                  ("--node relative, other ROS_NAMESPACE", "service", "ask")):
        code, out = results[name]
        waited = f"/{ELSEWHERE}/g2vlm/{interface}"
        assert code == 2 and f"error: {kind} {waited} not available after 5 s" in out, f"{name}: exit {code}\n{out}"
        assert "--node /<namespace>/g2vlm or ROS_NAMESPACE=<namespace>" in out, out
        seen = next(line for line in out.splitlines() if line.startswith(f"  Ask {kind}s seen: "))
        assert f"/{NAMESPACE}/g2vlm/{interface}" in seen.split(": ", 1)[1].split(", "), out


def test_an_invalid_node_name_is_a_usage_error():
    run = subprocess.run([str(PACKAGE_LIB / "ask"), "How far?", "--node", "my node"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2 and "'/my node' is not a valid ROS name" in run.stderr, run.stderr


def test_schema_prints_the_query_schema_without_a_node():
    """`ask --schema` is the tool definition an LLM agent loads: the exact QUERY_SCHEMA, as JSON, with no ROS graph."""
    import json
    import subprocess
    import sys

    from g2vlm_ros.reasoning.query import QUERY_SCHEMA

    done = subprocess.run([sys.executable, "-m", "g2vlm_ros.cli.ask", "--schema"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == QUERY_SCHEMA
    missing = subprocess.run([sys.executable, "-m", "g2vlm_ros.cli.ask"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "a question is required" in missing.stderr
