"""ROS-free core: pinhole math, rotations, the placeholder backend, backend selection, the worker."""
import threading
import time

import numpy as np
import pytest

from g2vlm_ros.backends.backend import BackendUnavailableError, InvalidInputError
from g2vlm_ros.backends.placeholder import PlaceholderBackend
from g2vlm_ros.backends.registry import BackendRequest, create_backend, renamed_backend_warning
from g2vlm_ros.geometry.pinhole import (
    backproject_depth,
    intrinsics_from_fov,
    resize_nearest,
    scale_intrinsics,
    transform_points,
)
from g2vlm_ros.geometry.rotations import matrix_to_quaternion_xyzw
from g2vlm_ros.pipeline.worker import LatestOnlyWorker


def test_backprojection_hand_values():
    k = np.array([[100.0, 0, 2.0], [0, 50.0, 1.0], [0, 0, 1]])
    depth = np.full((3, 5), 2.0, np.float32)
    points = backproject_depth(depth, k)
    # pixel (u=4, v=0): x = (4-2)/100*2 = 0.04, y = (0-1)/50*2 = -0.04, z = 2
    np.testing.assert_allclose(points[0, 4], [0.04, -0.04, 2.0], rtol=1e-6)
    np.testing.assert_allclose(points[1, 2], [0.0, 0.0, 2.0])


def test_intrinsics_from_fov_and_scaling():
    k = intrinsics_from_fov(640, 480, np.deg2rad(90.0))
    np.testing.assert_allclose([k[0, 0], k[1, 1], k[0, 2], k[1, 2]], [320.0, 320.0, 319.5, 239.5])
    half = scale_intrinsics(k, (640, 480), (320, 240))
    np.testing.assert_allclose([half[0, 0], half[1, 1], half[0, 2], half[1, 2]], [160.0, 160.0, 159.5, 119.5])


def test_transform_points_applies_rotation_then_translation():
    pose = np.eye(4)
    pose[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]  # 90 degrees about z
    pose[:3, 3] = [1, 2, 3]
    np.testing.assert_allclose(transform_points(pose, np.array([[1.0, 0, 0]])), [[1, 3, 3]])


def test_resize_nearest_picks_source_pixels_without_blending():
    image = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_array_equal(resize_nearest(image, 2, 2), [[5, 7], [13, 15]])
    up = resize_nearest(np.array([[1.0, 2.0]]), 4, 2)
    np.testing.assert_array_equal(up, [[1, 1, 2, 2], [1, 1, 2, 2]])


@pytest.mark.parametrize("rotation, expected", [
    (np.eye(3), (0, 0, 0, 1)),
    ([[0, -1, 0], [1, 0, 0], [0, 0, 1]], (0, 0, np.sqrt(0.5), np.sqrt(0.5))),  # +90 deg about z
    ([[1, 0, 0], [0, -1, 0], [0, 0, -1]], (1, 0, 0, 0)),  # 180 deg about x
    ([[-1, 0, 0], [0, -1, 0], [0, 0, 1]], (0, 0, 1, 0)),  # 180 deg about z
])
def test_quaternion_from_matrix(rotation, expected):
    np.testing.assert_allclose(matrix_to_quaternion_xyzw(np.asarray(rotation, float)), expected, atol=1e-12)


def test_quaternion_agrees_with_transforms3d_on_random_rotations():
    transforms3d = pytest.importorskip("transforms3d")
    rng = np.random.default_rng(0)
    for _ in range(50):
        q_wxyz = rng.normal(size=4)
        q_wxyz /= np.linalg.norm(q_wxyz)
        rotation = transforms3d.quaternions.quat2mat(q_wxyz)
        x, y, z, w = matrix_to_quaternion_xyzw(rotation)
        expected = q_wxyz if q_wxyz[0] >= 0 else -q_wxyz
        np.testing.assert_allclose([w, x, y, z], expected, atol=1e-9)


def test_placeholder_backend_is_a_predictable_function_of_the_image():
    backend = PlaceholderBackend(downsample=4)
    grey = np.full((48, 64, 3), 51, np.uint8)  # luminance 0.2
    red = np.zeros((48, 64, 3), np.uint8)
    red[..., 0] = 255  # luminance 0.299
    result = backend.run([grey, red])
    result.validate()
    assert result.depth.shape == (2, 12, 16) and result.size == (16, 12) and not result.metric
    np.testing.assert_allclose(result.depth[0], 1.2, rtol=1e-6)
    np.testing.assert_allclose(result.depth[1], 1.299, rtol=1e-6)
    np.testing.assert_allclose(result.camera_to_world[1, :3, 3], [0.1, 0, 0])
    np.testing.assert_allclose(result.local_points[..., 2], result.depth)
    np.testing.assert_allclose(result.world_points[1, ..., 0], result.local_points[1, ..., 0] + 0.1, rtol=1e-6)
    assert backend.is_placeholder


@pytest.mark.parametrize("images", [[], [np.zeros((4, 4), np.uint8)], [np.zeros((4, 4, 3), np.float32)]])
def test_backends_refuse_bad_images(images):
    with pytest.raises(InvalidInputError):
        PlaceholderBackend().run(images)


def test_auto_never_selects_the_placeholder_and_explains_why():
    # without a checkpoint, auto runs the embedded demo model: a real model, never the placeholder
    assert not create_backend(BackendRequest(backend="auto", device="cpu")).is_placeholder
    with pytest.raises(BackendUnavailableError) as caught:
        create_backend(BackendRequest(backend="auto", checkpoint_path="/nonexistent/checkpoint"))
    message = str(caught.value)
    assert "tensorrt" in message and "onnxruntime" in message and "torch" in message
    with pytest.raises(BackendUnavailableError, match="unknown backend 'magic'"):
        create_backend(BackendRequest(backend="magic"))
    assert create_backend(BackendRequest(backend="placeholder")).is_placeholder


def test_the_placeholders_old_name_still_selects_it_and_has_a_rename_warning():
    """`test_pattern` is what users' launch files may still say; the node logs the warning at configure."""
    old = create_backend(BackendRequest(backend="test_pattern"))
    assert isinstance(old, PlaceholderBackend) and old.name == "placeholder"
    assert "renamed to placeholder" in renamed_backend_warning("test_pattern")
    assert renamed_backend_warning("placeholder") is None and renamed_backend_warning("auto") is None


def test_worker_keeps_only_the_newest_pending_item():
    started, release = threading.Event(), threading.Event()
    processed = []

    def process(item):
        started.set()
        release.wait(5)
        processed.append(item)

    worker = LatestOnlyWorker(process, on_error=lambda item, error: None)
    worker.submit(0)
    assert started.wait(5)
    for item in range(1, 6):  # arrive while item 0 is running: only the last one survives
        worker.submit(item)
    release.set()
    deadline = time.monotonic() + 5
    while worker.processed < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stop()
    assert processed == [0, 5]
    assert (worker.submitted, worker.dropped, worker.processed) == (6, 4, 2)
    p50, p95 = worker.latency_percentiles_ms()
    assert 0 < p50 <= p95


def test_worker_survives_exceptions():
    errors = []

    def process(item):
        if item == "bad":
            raise RuntimeError("boom")

    worker = LatestOnlyWorker(process, on_error=lambda item, error: errors.append((item, str(error))))
    worker.submit("bad")
    deadline = time.monotonic() + 5
    while worker.failed < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.submit("good")
    while worker.processed < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stop()
    assert errors == [("bad", "boom")] and worker.processed == 1 and worker.failed == 1


def test_rate_limiter_admits_a_jittered_stream_at_its_rate_but_caps_faster_ones():
    from g2vlm_ros.pipeline.rate_limiter import RateLimiter

    rng = np.random.default_rng(1)
    stream = np.arange(100) * 0.2 + rng.uniform(-0.04, 0.04, 100)  # 5 Hz with 40 ms jitter
    limiter = RateLimiter(5.0)
    assert sum(limiter.admit(t) for t in stream) == 100
    fast = np.arange(1000) * 0.01  # 100 Hz for 10 s
    limiter = RateLimiter(5.0)
    admitted = [t for t in fast if limiter.admit(t)]
    assert 50 <= len(admitted) <= 51 and np.min(np.diff(admitted)) >= 0.1 - 1e-9
