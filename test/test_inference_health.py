"""Out-of-memory handling and failure grading of the inference thread (ROS-free)."""
import pytest
import torch

from g2vlm_ros.pipeline.inference_health import (
    FAILING_AFTER,
    InferenceHealth,
    is_out_of_memory,
    newest_sets,
    run_window,
)
from g2vlm_ros.pipeline.windowing import Window


def window(cameras=("a", "b"), keyframes=4) -> Window:
    frames = [f"{camera}{k}" for camera in cameras for k in range(keyframes)]  # camera-major, oldest first
    return Window(frames=frames, cameras=list(cameras), keyframes=keyframes, newest_stamp_ns=9, anchor_stamp_ns=9)


def test_a_window_is_cut_to_its_newest_sets_of_every_camera():
    cut = newest_sets(window(), 2)
    assert cut.frames == ["a2", "a3", "b2", "b3"] and cut.keyframes == 2 and cut.frames_of("b") == ["b2", "b3"]
    assert newest_sets(window(), 9).frames == window().frames


@pytest.mark.parametrize("error, expected", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), True),
    (MemoryError(), True),
    (RuntimeError("[ONNXRuntimeError] : 6 : Failed to allocate memory for requested buffer"), True),
    (RuntimeError("shape mismatch"), False),
    (ValueError("bad image"), False),
])
def test_out_of_memory_is_recognised_from_torch_and_other_runtimes(error, expected):
    assert is_out_of_memory(error) is expected


def test_out_of_memory_shrinks_the_window_one_set_at_a_time_and_keeps_the_limit():
    health = InferenceHealth("reduce_window")
    oom = torch.cuda.OutOfMemoryError("out of memory")
    smaller = health.smaller_after_out_of_memory(window(keyframes=3), oom)
    assert smaller.keyframes == 2 and health.keyframe_limit == 2
    assert health.limited(window(keyframes=4)).keyframes == 2  # later windows start at the limit
    assert health.smaller_after_out_of_memory(window(keyframes=1), oom) is None  # nothing left to drop
    assert health.smaller_after_out_of_memory(window(), RuntimeError("a bug")) is None  # not memory: just fail
    assert health.out_of_memory_events == 2
    assert health.status().level == "warn" and "limited to 2 keyframe(s)" in health.status().message


def test_skip_window_never_retries():
    health = InferenceHealth("skip_window")
    assert health.smaller_after_out_of_memory(window(), torch.cuda.OutOfMemoryError("oom")) is None
    assert health.keyframe_limit is None
    with pytest.raises(ValueError, match="not one of reduce_window, skip_window"):
        InferenceHealth("pray")


def test_failures_in_a_row_are_an_error_and_a_success_ends_it():
    health = InferenceHealth()
    assert health.status().level == "ok"
    health.record_failure(RuntimeError("boom"))
    assert health.status().level == "warn" and "RuntimeError: boom" in health.status().message
    for _ in range(FAILING_AFTER - 1):
        health.record_failure(RuntimeError("boom"))
    assert health.status().level == "error" and f"the last {FAILING_AFTER} windows failed" in health.status().message
    health.record_success()
    assert health.status().level == "warn"  # recovered, but the failure is recent


class Frame:
    def __init__(self, name: str):
        self.name, self.rgb = name, name


def test_run_window_retries_smaller_after_out_of_memory_and_reports_each_retry():
    health, retries = InferenceHealth(), []
    frames = [Frame(f"a{k}") for k in range(4)]
    big = Window(frames=frames, cameras=["a"], keyframes=4, newest_stamp_ns=3, anchor_stamp_ns=3)

    class Backend:
        releases = 0

        def run(self, images):
            if len(images) > 2:
                raise torch.cuda.OutOfMemoryError(f"CUDA out of memory for {len(images)} images")
            return list(images)

        def release_caches(self):
            self.releases += 1

    backend = Backend()
    used, result = run_window(backend, big, health, lambda before, after, reason: retries.append(
        (len(before.frames), len(after.frames), reason)))
    assert result == ["a2", "a3"] and used.keyframes == 2 and backend.releases == 2
    assert [(a, b) for a, b, _ in retries] == [(4, 3), (3, 2)]
    assert retries[0][2] == "OutOfMemoryError: CUDA out of memory for 4 images"
    _, again = run_window(backend, big, health, lambda *args: retries.append(args))
    assert again == ["a2", "a3"] and len(retries) == 2  # the limit holds: no new out-of-memory

    class Broken(Backend):
        def run(self, images):
            raise ValueError("not memory")

    with pytest.raises(ValueError, match="not memory"):
        run_window(Broken(), big, health, lambda *args: None)


def test_per_size_caches_keep_only_the_most_recently_used_buckets():
    from g2vlm_ros.backends.network_backend import BucketCache

    cache = BucketCache(capacity=2)
    cache.put("16 views", "a")
    cache.put("15 views", "b")
    assert cache.get("16 views") == "a"  # used again: now the most recent
    cache.put("14 views", "c")
    assert cache.get("15 views") is None and cache.get("16 views") == "a" and len(cache) == 2
    cache.clear()
    assert len(cache) == 0


def test_the_torch_backend_frees_its_per_size_graphs_on_request(tiny_checkpoint, tmp_path):
    import json
    import shutil

    import numpy as np
    from test_backends import IDS

    from g2vlm_ros.backends.torch_backend import TorchBackend

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "token_ids.json").write_text(json.dumps(IDS))
    backend = TorchBackend(str(folder), "cpu")
    # wide frames: 518x126 after preprocessing instead of 518x392 for 4:3 ones, a third of the tokens, so the
    # 21 views below take seconds, not minutes, on a CPU; each view count is still a bucket of its own
    images = [np.zeros((16, 64, 3), np.uint8)] * 6
    for views in (1, 2, 3, 4, 5, 6):  # a window shrinking or growing one keyframe at a time
        backend.run(images[:views])
    assert len(backend._networks) == 4  # bounded, not one per size ever seen
    backend.release_caches()
    assert len(backend._networks) == 0
    assert backend.run(images[:2]).num_views == 2  # rebuilt on demand
