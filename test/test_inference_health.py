"""Out-of-memory handling and failure grading of the inference thread (ROS-free)."""
import pytest
import torch

from g2vlm_ros.runtime.inference_health import FAILING_AFTER, InferenceHealth, is_out_of_memory, newest_sets
from g2vlm_ros.runtime.windowing import Window


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
