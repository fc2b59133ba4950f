"""Approximate-time alignment, keyframe policy and window assembly (g2vlm_ros.pipeline.windowing), without ROS."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from g2vlm_ros.pipeline.windowing import WindowAssembler, WindowPolicy, image_change, thumbnail

MS = 1_000_000
LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class Frame:
    camera: str
    stamp_ns: int
    thumbnail: np.ndarray = field(default_factory=lambda: np.zeros((4, 4), np.float32), compare=False, repr=False)


def frame(camera: str, stamp_ms: float, thumb: np.ndarray | None = None) -> Frame:
    stamp_ns = round(stamp_ms * MS)
    return Frame(camera, stamp_ns) if thumb is None else Frame(camera, stamp_ns, thumb)


def stamps_ms(window) -> list[float]:
    return [f.stamp_ns / MS for f in window.frames]


def uniform_thumbnail(value: int) -> np.ndarray:
    return thumbnail(np.full((8, 8, 3), value, np.uint8), size=4)


# --- thumbnails ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (31, 33), (480, 640), (7, 1000)])
def test_thumbnail_any_size_gives_grey_in_unit_range(shape):
    rgb = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    thumb = thumbnail(rgb)
    assert thumb.shape == (32, 32) and thumb.dtype == np.float32
    assert 0.0 <= thumb.min() and thumb.max() <= 1.0


def test_thumbnail_is_block_mean_of_luma():
    rgb = np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    expected = ((rgb @ LUMA) / 255.0).reshape(32, 2, 32, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(thumbnail(rgb), expected, atol=1e-6)


def test_thumbnail_of_small_image_repeats_pixels():
    rgb = np.array([[[255, 255, 255], [0, 0, 0]], [[0, 0, 0], [255, 0, 0]]], np.uint8)
    expected = np.kron(np.array([[1.0, 0.0], [0.0, 0.299]]), np.ones((2, 2)))
    np.testing.assert_allclose(thumbnail(rgb, size=4), expected, atol=1e-6)


def test_thumbnail_rejects_non_images():
    with pytest.raises(ValueError):
        thumbnail(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError):
        thumbnail(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError):
        thumbnail(np.zeros((0, 4, 3), np.uint8))


def test_image_change():
    black, white = uniform_thumbnail(0), uniform_thumbnail(255)
    assert image_change(black, black) == 0.0
    assert image_change(black, white) == pytest.approx(1.0)
    assert image_change(white, uniform_thumbnail(204)) == pytest.approx(0.2, abs=1e-6)
    with pytest.raises(ValueError):
        image_change(black, np.zeros((5, 5), np.float32))


# --- policy and construction ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, value", [
    ("window_size", 0), ("window_size", 1.5), ("window_size", True), ("buffer_per_camera", 0),
    ("sync_slop_s", -0.01), ("sync_slop_s", math.nan), ("keyframe_min_interval_s", math.inf),
    ("keyframe_min_motion_m", -1.0), ("keyframe_min_rotation_deg", -1.0), ("keyframe_min_image_change", 1.5),
    ("keyframe_min_image_change", -0.1),
])
def test_policy_validation_names_the_field(name, value):
    policy = WindowPolicy(**{name: value})
    with pytest.raises(ValueError, match=name):
        policy.validate()
    with pytest.raises(ValueError, match=name):
        WindowAssembler(["cam"], policy)


def test_default_policy_is_valid_and_cameras_are_checked():
    WindowPolicy().validate()
    with pytest.raises(ValueError):
        WindowAssembler([], WindowPolicy())
    with pytest.raises(ValueError):
        WindowAssembler(["a", "a"], WindowPolicy())
    assembler = WindowAssembler(["a"], WindowPolicy())
    with pytest.raises(ValueError, match="unknown camera 'b'"):
        assembler.add(frame("b", 0))


# --- single camera ----------------------------------------------------------------------------------------------

def test_single_camera_every_frame_is_a_window_of_one():
    assembler = WindowAssembler(["cam"], WindowPolicy())
    assert assembler.poll() is None
    first = frame("cam", 0)
    assembler.add(first)
    window = assembler.poll()
    assert window.frames == [first] and window.cameras == ["cam"] and window.keyframes == 1
    assert window.newest_stamp_ns == 0 and window.anchor_stamp_ns == 0
    assert assembler.poll() is None  # a set is used once
    for stamp in (100, 200, 300):
        assembler.add(frame("cam", stamp))
    assert stamps_ms(assembler.poll()) == [300]  # only the newest of several new sets
    assert assembler.stats.sets_matched == 4 and assembler.stats.keyframes == 4


def test_window_of_three_fills_then_slides():
    assembler = WindowAssembler(["cam"], WindowPolicy(window_size=3))
    results = []
    for stamp in (0, 100, 200, 300):
        assembler.add(frame("cam", stamp))
        window = assembler.poll()
        results.append(None if window is None else stamps_ms(window))
    assert results == [None, None, [0, 100, 200], [100, 200, 300]]


def test_non_keyframe_is_appended_to_keyframes_so_the_present_is_always_in_the_window():
    assembler = WindowAssembler(["cam"], WindowPolicy(window_size=2, keyframe_min_interval_s=1.0))
    windows = {}
    for stamp in range(0, 1300, 100):
        assembler.add(frame("cam", stamp))
        window = assembler.poll()
        windows[stamp] = None if window is None else stamps_ms(window)
    assert windows[0] is None
    assert windows[100] == [0, 100] and windows[900] == [0, 900]
    assert windows[1000] == [0, 1000]  # 1000 is a keyframe: the last two keyframes
    assert windows[1200] == [1000, 1200]
    assert assembler.stats.keyframes == 2


def test_sets_between_polls_all_feed_the_keyframe_logic():
    policy = WindowPolicy(window_size=2, keyframe_min_interval_s=0.25, buffer_per_camera=10)
    assembler = WindowAssembler(["cam"], policy)
    for stamp in range(0, 1000, 100):
        assembler.add(frame("cam", stamp))
    assert stamps_ms(assembler.poll()) == [600, 900]  # keyframes at 0, 300, 600, 900
    assert assembler.stats.sets_matched == 10 and assembler.stats.keyframes == 4
    assert assembler.poll() is None


def test_out_of_order_frames_are_dropped_or_sorted():
    assembler = WindowAssembler(["cam"], WindowPolicy(window_size=2))
    assembler.add(frame("cam", 100))
    assert assembler.poll() is None
    assembler.add(frame("cam", 50))  # older than the last used frame
    assembler.add(frame("cam", 100))  # same stamp as the last used frame
    assert assembler.stats.out_of_order == 2 and assembler.poll() is None
    assembler.add(frame("cam", 300))
    assembler.add(frame("cam", 200))  # late, but newer than anything used: sorted in
    assert stamps_ms(assembler.poll()) == [200, 300]
    assert assembler.stats.out_of_order == 2 and assembler.stats.frames_unmatched == 0


# --- several cameras --------------------------------------------------------------------------------------------

def test_two_cameras_with_jitter_inside_slop_match_every_time():
    rng = np.random.default_rng(2)
    assembler = WindowAssembler(["left", "right"], WindowPolicy(sync_slop_s=0.05))
    for step in range(30):
        left = frame("left", step * 100 + rng.uniform(-20, 20))
        right = frame("right", step * 100 + rng.uniform(-20, 20))
        for first in rng.permutation([0, 1]):
            assembler.add((left, right)[first])
        window = assembler.poll()
        assert window.frames == [left, right]
        assert window.anchor_stamp_ns == min(left.stamp_ns, right.stamp_ns)  # the pivot's newest frame is the oldest
        assert window.newest_stamp_ns == max(left.stamp_ns, right.stamp_ns)
    assert assembler.stats.sets_matched == 30 and assembler.stats.frames_unmatched == 0


def test_two_cameras_outside_slop_never_match_and_stay_bounded():
    policy = WindowPolicy(sync_slop_s=0.04, buffer_per_camera=4)
    assembler = WindowAssembler(["left", "right"], policy)
    for step in range(50):  # right is half a period (50 ms) from every left frame
        assembler.add(frame("left", step * 100))
        assembler.add(frame("right", step * 100 + 50))
        assert assembler.poll() is None
        assert assembler.buffered_frames <= 2 * policy.buffer_per_camera
    assert assembler.stats.sets_matched == 0
    assert assembler.stats.frames_unmatched >= 2 * 49
    assert 100 == assembler.stats.frames_unmatched + assembler.buffered_frames


def test_three_cameras_with_jitter_form_sets_within_slop():
    rng = np.random.default_rng(3)
    cameras = ["a", "b", "c"]
    assembler = WindowAssembler(cameras, WindowPolicy(window_size=2, sync_slop_s=0.05))
    windows = []
    for step in range(40):
        for camera in rng.permutation(cameras):
            assembler.add(frame(str(camera), step * 66 + rng.uniform(-12, 12)))
        windows.append(assembler.poll())
    assert windows[0] is None and all(window is not None for window in windows[1:])
    for window in windows[1:]:
        for index in range(2):
            set_stamps = [window.frames[camera * 2 + index].stamp_ns for camera in range(3)]
            assert max(set_stamps) - min(set_stamps) <= 50 * MS
    assert assembler.stats.sets_matched == 40 and assembler.stats.frames_unmatched == 0


def test_late_frame_at_or_before_the_last_pivot_never_becomes_a_pivot():
    assembler = WindowAssembler(["a", "b"], WindowPolicy(sync_slop_s=0.05))
    for camera, stamp in (("a", 100), ("a", 200), ("b", 130)):
        assembler.add(frame(camera, stamp))
    assert stamps_ms(assembler.poll()) == [100, 130]  # pivot b at 130, a's closest frame is 100
    assembler.add(frame("a", 130))  # late, newer than a's used frame, but not newer than the last pivot
    assembler.add(frame("b", 160))
    assembler.add(frame("b", 250))
    window = assembler.poll()
    assert stamps_ms(window) == [200, 160] and window.anchor_stamp_ns == 200 * MS
    assert assembler.stats.frames_unmatched == 1 and assembler.stats.out_of_order == 0


def test_window_is_camera_major_in_time_order():
    assembler = WindowAssembler(["a", "b", "c"], WindowPolicy(window_size=2))
    frames = {(camera, set_index): frame(camera, set_index * 100 + offset)
              for set_index in range(2) for offset, camera in enumerate("abc")}
    for key in sorted(frames, key=lambda key: key[1]):
        assembler.add(frames[key])
    window = assembler.poll()
    assert window.frames == [frames[camera, index] for camera in "abc" for index in range(2)]
    assert window.frames_of("b") == [frames["b", 0], frames["b", 1]]
    assert window.anchor_stamp_ns == 100 * MS and window.newest_stamp_ns == 102 * MS


def test_camera_that_stops_blocks_sets_with_bounded_buffers_and_recovers():
    policy = WindowPolicy(buffer_per_camera=8)
    assembler = WindowAssembler(["left", "right"], policy)
    for step in range(5):
        assembler.add(frame("left", step * 100))
        assembler.add(frame("right", step * 100 + 5))
        assert assembler.poll() is not None
    for step in range(5, 35):  # right goes silent
        assembler.add(frame("left", step * 100))
        assert assembler.poll() is None
        assert assembler.buffered_frames <= policy.buffer_per_camera
    assert assembler.stats.frames_unmatched == 30 - policy.buffer_per_camera
    assembler.add(frame("right", 3405))  # right comes back
    assert stamps_ms(assembler.poll()) == [3400, 3405]
    assert assembler.stats.frames_unmatched == 30 - 1 and assembler.buffered_frames == 0


def test_reset_forgets_frames_and_keyframes_but_keeps_counting():
    assembler = WindowAssembler(["cam"], WindowPolicy(window_size=2))
    for stamp in (1000, 1100):
        assembler.add(frame("cam", stamp))
    assembler.add(frame("cam", 1200))
    assert assembler.poll() is not None
    assembler.add(frame("cam", 1300))
    assembler.reset()
    assert assembler.buffered_frames == 0
    assembler.add(frame("cam", 50))  # time went back (e.g. a bag restarted): not out of order after a reset
    assert assembler.poll() is None  # keyframes forgotten: K=2 needs two sets again
    assembler.add(frame("cam", 150))
    assert stamps_ms(assembler.poll()) == [50, 150]
    assert assembler.stats.out_of_order == 0 and assembler.stats.sets_matched == 5


# --- keyframe content criteria ----------------------------------------------------------------------------------

def run_single_camera(policy: WindowPolicy, motion=None, count: int = 11, thumbs=None):
    assembler = WindowAssembler(["cam"], policy, motion)
    windows = []
    for index in range(count):
        assembler.add(frame("cam", index * 100, None if thumbs is None else thumbs[index]))
        window = assembler.poll()
        windows.append(None if window is None else stamps_ms(window))
    return assembler, windows


def test_min_interval_spaces_keyframes():
    assembler, windows = run_single_camera(WindowPolicy(window_size=2, keyframe_min_interval_s=0.3))
    assert assembler.stats.keyframes == 4  # 0, 300, 600, 900
    assert windows[8] == [600, 800] and windows[9] == [600, 900] and windows[10] == [900, 1000]


def test_windows_mark_whether_their_newest_set_is_a_keyframe():
    assembler = WindowAssembler(["a", "b"], WindowPolicy(window_size=3, keyframe_min_interval_s=0.3))
    marks = {}
    for index in range(11):
        for camera in ("a", "b"):
            assembler.add(frame(camera, index * 100))
        window = assembler.poll()
        if window is not None:
            marks[index * 100] = (window.newest_is_keyframe, [window.is_keyframe(i) for i in range(6)])
    # keyframes at 0, 300, 600, 900: the window of 700 ends with a set that is not one; every other set is
    assert marks[600] == (True, [True] * 6)
    assert marks[700] == (False, [True, True, False, True, True, False])
    assert marks[900][0] and not marks[1000][0]


def test_motion_criterion_uses_the_callback():
    calls = []

    def motion(previous, candidate):  # the first camera moves at 1 m/s
        calls.append(([f.stamp_ns for f in previous], [f.stamp_ns for f in candidate]))
        return (candidate[0].stamp_ns - previous[0].stamp_ns) * 1e-9, 0.0

    assembler, windows = run_single_camera(WindowPolicy(window_size=2, keyframe_min_motion_m=0.25), motion)
    assert assembler.stats.keyframes == 4 and windows[10] == [900, 1000]
    assert calls[0] == ([0], [100 * MS]) and calls[3] == ([300 * MS], [400 * MS])  # against the last keyframe
    assert assembler.stats.motion_unknown == 0


def test_rotation_criterion_ignores_translation_when_only_rotation_is_enabled():
    def motion(previous, candidate):  # 100 deg/s, and a large translation that must not count
        return 100.0, (candidate[0].stamp_ns - previous[0].stamp_ns) * 1e-9 * 100

    assembler, windows = run_single_camera(WindowPolicy(window_size=2, keyframe_min_rotation_deg=45.0), motion)
    assert assembler.stats.keyframes == 3  # 0, 500, 1000
    assert windows[9] == [500, 900] and windows[10] == [500, 1000]


def test_min_interval_gates_content_criteria_and_motion_queries():
    calls = []

    def motion(previous, candidate):
        calls.append(candidate[0].stamp_ns)
        return 10.0, 0.0

    policy = WindowPolicy(keyframe_min_interval_s=0.5, keyframe_min_motion_m=0.1)
    assembler, _ = run_single_camera(policy, motion)
    assert assembler.stats.keyframes == 3 and calls == [500 * MS, 1000 * MS]


def test_image_change_criterion_with_thumbnails_of_different_images():
    values = [0, 13, 26, 128, 133, 255]
    policy = WindowPolicy(window_size=2, keyframe_min_image_change=0.3)
    assembler, windows = run_single_camera(policy, count=6, thumbs=[uniform_thumbnail(v) for v in values])
    assert assembler.stats.keyframes == 3  # 0, then 128 (change 0.5), then 255 (change 0.5)
    assert windows[4] == [300, 400] and windows[5] == [300, 500]


def test_image_change_of_any_camera_suffices():
    rng = np.random.default_rng(4)
    scene = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    steady, moved = thumbnail(scene), thumbnail(scene[::-1].copy())
    assert image_change(steady, moved) > 0.1
    assembler = WindowAssembler(["a", "b"], WindowPolicy(keyframe_min_image_change=0.1))
    for index, b_thumb in enumerate([steady, steady, moved]):
        assembler.add(frame("a", index * 100, steady))
        assembler.add(frame("b", index * 100, b_thumb))
        assembler.poll()
    assert assembler.stats.keyframes == 2


@pytest.mark.parametrize("give_callback", [True, False])
def test_unknown_motion_counts_and_does_not_make_keyframes(give_callback):
    policy = WindowPolicy(keyframe_min_motion_m=0.1, keyframe_min_rotation_deg=5.0)
    assembler, windows = run_single_camera(policy, (lambda previous, candidate: None) if give_callback else None, 5)
    assert assembler.stats.motion_unknown == 4 and assembler.stats.keyframes == 1
    assert windows == [[0], [100], [200], [300], [400]]  # K=1: the present is still delivered


def test_unknown_motion_still_counts_when_image_change_makes_the_keyframe():
    policy = WindowPolicy(keyframe_min_motion_m=0.1, keyframe_min_image_change=0.3)
    thumbs = [uniform_thumbnail(v) for v in (0, 255, 255)]
    assembler, _ = run_single_camera(policy, lambda previous, candidate: None, 3, thumbs)
    assert assembler.stats.keyframes == 2 and assembler.stats.motion_unknown == 2


# --- properties -------------------------------------------------------------------------------------------------

event = st.tuples(st.integers(0, 2), st.integers(0, 60), st.integers(-40, 40), st.booleans())


@settings(max_examples=300, deadline=None)
@given(cameras=st.integers(2, 3), window_size=st.integers(1, 3), slop_ms=st.integers(0, 60),
       buffer=st.integers(1, 6), interval_ms=st.sampled_from([0, 50, 200]), use_motion=st.booleans(),
       jitter_scale=st.sampled_from([0, 1, 4]), events=st.lists(event, max_size=120))
def test_windows_are_consistent_for_any_stream(cameras, window_size, slop_ms, buffer, interval_ms, use_motion,
                                               jitter_scale, events):
    names = ["cam0", "cam1", "cam2"][:cameras]
    policy = WindowPolicy(window_size=window_size, sync_slop_s=slop_ms / 1e3, buffer_per_camera=buffer,
                          keyframe_min_interval_s=interval_ms / 1e3, keyframe_min_motion_m=0.1 if use_motion else 0.0)

    def motion(previous, candidate):
        return (candidate[0].stamp_ns - previous[0].stamp_ns) * 1e-9, 0.0

    assembler = WindowAssembler(names, policy, motion)
    now_ms, added, last_anchor = 0, 0, None
    for camera, advance_ms, jitter_ms, poll in events + [(0, 0, 0, True)]:
        now_ms += advance_ms
        if camera < cameras:
            assembler.add(frame(names[camera], now_ms + jitter_ms * jitter_scale))  # 4: often out of order
            added += 1
        window = assembler.poll() if poll else None
        if window is None:
            continue
        assert assembler.poll() is None
        assert len(window.frames) == window_size * cameras and window.keyframes == window_size
        for name in names:
            own = window.frames_of(name)
            assert all(f.camera == name for f in own)
            assert all(a.stamp_ns < b.stamp_ns for a, b in zip(own, own[1:], strict=False))
        for index in range(window_size):
            set_stamps = [window.frames[camera_index * window_size + index].stamp_ns for camera_index in range(cameras)]
            assert max(set_stamps) - min(set_stamps) <= slop_ms * MS
        newest_set = [window.frames_of(name)[-1].stamp_ns for name in names]
        assert window.anchor_stamp_ns in newest_set
        assert window.newest_stamp_ns == max(f.stamp_ns for f in window.frames)
        assert last_anchor is None or window.anchor_stamp_ns > last_anchor
        last_anchor = window.anchor_stamp_ns
    stats = assembler.stats
    # Every frame is accounted for exactly once: dropped on add, discarded unmatched, used in a set, or buffered.
    used = stats.sets_matched * cameras
    assert added == stats.out_of_order + stats.frames_unmatched + used + assembler.buffered_frames
    assert assembler.buffered_frames <= buffer * cameras
    assert stats.keyframes <= stats.sets_matched


def test_buffer_bound_applies_between_polls_too():
    assembler = WindowAssembler(["cam"], WindowPolicy(buffer_per_camera=8))
    for stamp in range(0, 1000, 100):
        assembler.add(frame("cam", stamp))
    assert stamps_ms(assembler.poll()) == [900]
    assert assembler.stats.frames_unmatched == 2 and assembler.stats.sets_matched == 8


# --- runtime policy changes ---------------------------------------------------------------------------------------

def test_image_change_turned_on_while_keyframes_have_no_thumbnail():
    """Keyframes kept while keyframe_min_image_change was 0 carry no thumbnail; turning it on must not fail on
    them: the comparison is unknown, the candidate becomes a keyframe, and later ones compare thumbnails."""
    assembler = WindowAssembler(["cam"], WindowPolicy(window_size=2))
    for index in range(3):
        assembler.add(Frame("cam", index * 100 * MS, None))
        assert (assembler.poll() is not None) == (index > 0)
    assembler.policy = WindowPolicy(window_size=2, keyframe_min_image_change=0.3)
    still = uniform_thumbnail(50)
    for index in range(3, 6):
        assembler.add(Frame("cam", index * 100 * MS, still))
        assert assembler.poll() is not None
    assert assembler.stats.image_change_unknown == 1
    assert assembler.stats.keyframes == 4  # the three before, then the first with a thumbnail; the rest are still


def test_min_interval_and_slop_changed_at_runtime_take_effect():
    assembler = WindowAssembler(["cam"], WindowPolicy(window_size=2))
    for index in range(3):
        assembler.add(frame("cam", index * 100))
        assembler.poll()
    assert assembler.stats.keyframes == 3
    assembler.policy = WindowPolicy(window_size=2, keyframe_min_interval_s=0.45)
    for index in range(3, 10):
        assembler.add(frame("cam", index * 100))
        assembler.poll()
    assert assembler.stats.keyframes == 3 + 1  # 700 only (900 is 0.2 s after it)

    pair = WindowAssembler(["a", "b"], WindowPolicy(sync_slop_s=0.01))
    pair.add(frame("a", 0))
    pair.add(frame("b", 30))
    assert pair.poll() is None
    pair.policy = WindowPolicy(sync_slop_s=0.05)
    pair.add(frame("a", 100))
    pair.add(frame("b", 130))
    assert pair.poll() is not None


def test_window_size_cannot_change_on_a_running_assembler():
    assembler = WindowAssembler(["cam"], WindowPolicy(window_size=2))
    with pytest.raises(ValueError, match="window_size"):
        assembler.policy = WindowPolicy(window_size=3)
