"""The pipeline's map stage without ROS: windows of a perfect up-to-scale model, each in its own random similarity
frame (test/fixtures/scene_backend.py with gauge), chained into one map, and the keyframe images kept for loop
checks within their bound."""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest

from conftest import FIXTURES, wait_until
from g2vlm_ros.mapping.alignment import umeyama
from g2vlm_ros.pipeline.frame import Frame
from g2vlm_ros.pipeline.mapping_stage import KeyframeImages, MapStageSettings
from g2vlm_ros.pipeline.perception import PerceptionPipeline, PipelineSettings
from g2vlm_ros.pipeline.windowing import WindowPolicy

SPEED_M = 0.05  # per frame
STAMP_STEP_NS = 100_000_000


class Log:
    def __init__(self):
        self.errors: list[str] = []

    def warning(self, message: str) -> None:
        pass

    def error(self, message: str) -> None:
        self.errors.append(message)


@pytest.fixture
def scene(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))
    monkeypatch.setenv("G2VLM_TEST_SCENE", json.dumps({"speed_m": SPEED_M, "gauge": True}))
    import synthetic_scene
    from scene_backend import SceneBackend

    yield synthetic_scene, SceneBackend()
    for name in ("scene_backend", "synthetic_scene"):
        sys.modules.pop(name, None)


def test_windows_in_random_frames_chain_into_one_map(scene):
    synthetic_scene, backend = scene
    outputs, log = [], Log()
    settings = PipelineSettings(cameras=("a", "b"), window=WindowPolicy(window_size=3, keyframe_min_interval_s=0.15),
                                max_rate_hz=1000.0, mapping=MapStageSettings(stride=2))
    pipeline = PerceptionPipeline(settings, lambda snapshot, result: outputs.append(result), log)
    pipeline.load(backend)
    pipeline.activate()
    for index in range(30):
        for camera_index, camera in enumerate(("a", "b")):
            pipeline.add_frame(Frame(camera, f"{camera}_optical", 10**9 + index * STAMP_STEP_NS,
                                     synthetic_scene.encode_image(camera_index, index)))
        time.sleep(0.03)  # windows arrive faster than they are mapped: some are dropped, the chain must hold
    wait_until(lambda: pipeline.status().worker.submitted == pipeline.status().worker.processed
               + pipeline.status().worker.dropped, 20, "windows still in the worker")
    status = pipeline.status().map
    assert not log.errors and status.windows_failed == 0 and len(outputs) >= 5
    assert status.stats["segments"] == 1, "every window after the first must chain to the map"
    assert [o.placement.status for o in outputs] == ["initialized"] + ["chained"] * (len(outputs) - 1)
    image_bytes = synthetic_scene.encode_image(0, 0).nbytes
    assert 1 <= status.loop_images <= 200 and status.loop_image_bytes == status.loop_images * image_bytes

    # every view of every window, against the truth: one similarity (the first window's gauge) fits them all
    truth, placed = [], []
    for output in outputs:
        for frame, pose in zip(output.frames, output.camera_to_world, strict=True):
            camera, index = synthetic_scene.decode_image(frame.rgb)
            truth.append(synthetic_scene.camera_position(camera, index, SPEED_M))
            placed.append(pose[:3, 3])
    truth, placed = np.array(truth), np.array(placed)
    fit = umeyama(truth, placed, np.ones(len(truth)))
    error = np.linalg.norm(fit.apply_points(truth) - placed, axis=1).max() / fit.scale  # in metres
    assert error < 1e-4, f"views placed up to {error:.2e} m off the truth"
    rotations = np.array([pose[:3, :3] for output in outputs for pose in output.camera_to_world])
    np.testing.assert_allclose(rotations, np.broadcast_to(fit.rotation, rotations.shape), atol=1e-4)

    trajectory = pipeline.map.trajectory("a")
    assert len(trajectory) >= 5 and all(key[0] == "a" for key, _ in trajectory)
    assert [key[1] for key, _ in trajectory] == sorted(key[1] for key, _ in trajectory)
    points, colors = pipeline.map.cloud()
    assert len(points) > 0 and len(points) == len(colors)
    pipeline.deactivate()
    assert pipeline.map.trajectory() == [] and pipeline.status().map.last_status == ""
    pipeline.unload(5.0)


def test_keyframe_images_stay_bounded_and_spread_over_the_run():
    images = KeyframeImages(capacity=8)
    for stamp in range(100):
        images.add(("a", stamp), np.zeros((4, 5, 3), np.uint8))
    kept = sorted(key[1] for key in images._images)
    assert len(images) == 8 and kept[0] == 0 and kept[-1] == 99, "the oldest and the newest stay"
    assert max(np.diff(kept)) <= 2 * 99 / 7, f"kept images bunch up: {kept}"
    assert images.nbytes == 8 * 4 * 5 * 3  # what diagnostics report as the store's memory


def test_only_the_keyframes_the_map_keeps_take_a_place_in_the_image_store():
    """A camera standing still: after the first window the map culls every new keyframe (keyframe_culling), and
    their images, which could never be loop candidates, must not push out the kept ones'."""
    from g2vlm_ros.cli.bench_node_overhead import walking_result
    from g2vlm_ros.geometry.pinhole import intrinsics_from_fov
    from g2vlm_ros.pipeline.mapping_stage import MapStage
    from g2vlm_ros.pipeline.windowing import Window

    k = intrinsics_from_fov(518, 392, np.deg2rad(60))
    depth = np.random.default_rng(3).uniform(1, 3, (1, 392, 518)).astype(np.float32)
    stage = MapStage(MapStageSettings(), metric=False, log_error=pytest.fail)
    views = 4
    for window in range(12):
        frames = [Frame("cam0", "cam0_optical", (window + i + 1) * STAMP_STEP_NS, np.zeros((48, 64, 3), np.uint8))
                  for i in range(views)]
        result = walking_result(views, 0, 0.0, depth, k)  # every view at the same place, seeing the same depth
        assert stage.place(Window(frames, ["cam0"], views, frames[-1].stamp_ns, frames[-1].stamp_ns), result,
                           1.0, frames[-1].stamp_ns) is not None
    status = stage.status()
    assert status.stats["redundant_sets"] >= 8, status.stats  # the new keyframe of every later window is culled
    assert status.loop_images == status.stats["keyframes"] < views + 2, (status.loop_images, status.stats)
