"""TransformBuffer: tf2-style lookups over a tree of static and dynamic links, without ROS.

Expected matrices are worked out by hand (small rotations about one axis) rather than recomputed
with the module's own helpers, so a wrong composition order or inverted link shows up as a failure.
"""
from __future__ import annotations

import math
import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from g2vlm_ros.geometry.rotations import matrix_from_translation_quaternion, matrix_to_quaternion_xyzw, slerp
from g2vlm_ros.geometry.tf_buffer import TransformBuffer, TransformUnavailable

S = 1_000_000_000  # nanoseconds per second
IDENTITY_Q = (0.0, 0.0, 0.0, 1.0)
HALF = math.sqrt(0.5)
Z90_Q = (0.0, 0.0, HALF, HALF)  # +90 degrees about z: x -> y, y -> -x


def robot_tree() -> TransformBuffer:
    """odom -> base (dynamic, one sample at 10 s) -> camera (static); odom -> other (static)."""
    buffer = TransformBuffer()
    buffer.set_transform("odom", "base", 10 * S, (1.0, 0.0, 0.0), Z90_Q)
    buffer.set_transform("base", "camera", 0, (0.0, 0.0, 1.0), IDENTITY_Q, static=True)
    buffer.set_transform("odom", "other", 0, (0.0, 2.0, 0.0), IDENTITY_Q, static=True)
    return buffer


def test_chain_up_to_the_root_composes_links_in_order():
    expected = np.array([[0, -1, 0, 1], [1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1]], dtype=float)
    np.testing.assert_allclose(robot_tree().lookup("odom", "camera", 10 * S), expected, atol=1e-12)


def test_lookup_across_branches_through_the_common_ancestor():
    buffer = robot_tree()
    # other's origin (0, 2, 0) seen from the camera at (1, 0, 1) turned +90 degrees about z: R^T (-1, 2, -1).
    camera_T_other = np.array([[0, 1, 0, 2], [-1, 0, 0, 1], [0, 0, 1, -1], [0, 0, 0, 1]], dtype=float)
    np.testing.assert_allclose(buffer.lookup("camera", "other", 10 * S), camera_T_other, atol=1e-12)
    # The reverse direction: camera origin (1, 0, 1) minus other's origin, rotation +90 degrees about z.
    other_T_camera = np.array([[0, -1, 0, 1], [1, 0, 0, -2], [0, 0, 1, 1], [0, 0, 0, 1]], dtype=float)
    np.testing.assert_allclose(buffer.lookup("other", "camera", 10 * S), other_T_camera, atol=1e-12)


def test_lookup_down_the_tree_is_the_inverse_of_up():
    buffer = robot_tree()
    base_T_odom = buffer.lookup("base", "odom", 10 * S)
    point_in_odom = np.array([1.0, 3.0, 0.0, 1.0])  # 3 m along the base's x axis after its +90 degree turn
    np.testing.assert_allclose(base_T_odom @ point_in_odom, [3.0, 0.0, 0.0, 1.0], atol=1e-12)


def test_identity_for_the_same_frame_even_unknown():
    np.testing.assert_array_equal(robot_tree().lookup("camera", "camera", 3 * S), np.eye(4))
    np.testing.assert_array_equal(TransformBuffer().lookup("nowhere", "nowhere"), np.eye(4))


def test_interpolates_translation_linearly_and_rotation_by_slerp():
    buffer = TransformBuffer()
    buffer.set_transform("odom", "base", 1 * S, (0.0, 0.0, 0.0), IDENTITY_Q)
    buffer.set_transform("odom", "base", 3 * S, (2.0, 4.0, 0.0), Z90_Q)
    expected_halfway = np.array([[HALF, -HALF, 0, 1], [HALF, HALF, 0, 2], [0, 0, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(buffer.lookup("odom", "base", 2 * S), expected_halfway, atol=1e-12)
    # A quarter of the way: 22.5 degrees, 0.5 m and 1 m.
    c, s = math.cos(math.pi / 8), math.sin(math.pi / 8)
    expected_quarter = np.array([[c, -s, 0, 0.5], [s, c, 0, 1], [0, 0, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(buffer.lookup("odom", "base", 1 * S + S // 2), expected_quarter, atol=1e-12)
    # The samples themselves come back exactly.
    np.testing.assert_allclose(buffer.lookup("odom", "base", 3 * S)[:3, 3], [2.0, 4.0, 0.0], atol=1e-15)


def test_slerp_takes_the_short_way_when_the_quaternion_sign_flips():
    q_minus_z90 = tuple(-v for v in Z90_Q)  # the same rotation as Z90_Q
    halfway = slerp(IDENTITY_Q, q_minus_z90, 0.5)
    expected = np.array([0.0, 0.0, math.sin(math.pi / 8), math.cos(math.pi / 8)])
    assert np.allclose(halfway, expected, atol=1e-12) or np.allclose(halfway, -expected, atol=1e-12)


def test_quaternion_from_matrix_near_180_degrees():
    angle = math.pi - 1e-9
    rotation = np.array([[1, 0, 0], [0, math.cos(angle), -math.sin(angle)], [0, math.sin(angle), math.cos(angle)]])
    q = matrix_to_quaternion_xyzw(rotation)
    np.testing.assert_allclose(matrix_from_translation_quaternion((0, 0, 0), q)[:3, :3], rotation, atol=1e-9)
    assert abs(q[0]) == pytest.approx(1.0)


def test_quaternion_is_normalised_on_input():
    buffer = TransformBuffer()
    buffer.set_transform("a", "b", S, (0.0, 0.0, 0.0), (0.0, 0.0, 3.0, 3.0))
    rotation = buffer.lookup("a", "b", S)[:3, :3]
    np.testing.assert_allclose(rotation, [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)


def test_static_links_hold_at_any_time_and_dynamic_ones_only_where_sampled():
    buffer = robot_tree()
    np.testing.assert_allclose(buffer.lookup("base", "camera", 123 * S)[:3, 3], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(buffer.lookup("other", "odom", 0)[:3, 3], [0.0, -2.0, 0.0])
    with pytest.raises(TransformUnavailable, match="future"):
        buffer.lookup("odom", "camera", 11 * S)  # the dynamic odom -> base has only its 10 s sample


def test_stamp_zero_uses_the_latest_time_common_to_every_dynamic_link():
    buffer = TransformBuffer()
    for second in range(1, 6):
        buffer.set_transform("odom", "base", second * S, (float(second), 0.0, 0.0), IDENTITY_Q)
    for second in range(2, 8):
        buffer.set_transform("base", "arm", second * S, (0.0, float(second), 0.0), IDENTITY_Q)
    buffer.set_transform("arm", "tool", 0, (0.0, 0.0, 0.5), IDENTITY_Q, static=True)
    # Latest common time is 5 s (odom -> base ends there), not 7 s (base -> arm's newest).
    np.testing.assert_allclose(buffer.lookup("odom", "tool", 0)[:3, 3], [5.0, 5.0, 0.5])
    np.testing.assert_allclose(buffer.lookup("odom", "arm")[:3, 3], [5.0, 5.0, 0.0])
    # A chain of one dynamic link uses that link's newest sample.
    np.testing.assert_allclose(buffer.lookup("arm", "base", 0)[:3, 3], [0.0, -7.0, 0.0])


def test_stamp_zero_fails_when_the_dynamic_links_never_overlap():
    buffer = TransformBuffer()
    buffer.set_transform("odom", "base", 1 * S, (0.0, 0.0, 0.0), IDENTITY_Q)
    buffer.set_transform("odom", "base", 2 * S, (0.0, 0.0, 0.0), IDENTITY_Q)
    buffer.set_transform("base", "arm", 3 * S, (0.0, 0.0, 0.0), IDENTITY_Q)
    with pytest.raises(TransformUnavailable, match="no time is common") as error:
        buffer.lookup("odom", "arm")
    assert "'odom' -> 'base' from 1 s to 2 s" in str(error.value)
    assert "'base' -> 'arm' from 3 s to 3 s" in str(error.value)


def test_extrapolation_errors_name_the_direction_and_the_times():
    buffer = TransformBuffer()
    buffer.set_transform("odom", "base", 1 * S, (0.0, 0.0, 0.0), IDENTITY_Q)
    buffer.set_transform("odom", "base", 3 * S + 250_000_000, (0.0, 0.0, 0.0), IDENTITY_Q)
    with pytest.raises(TransformUnavailable) as past:
        buffer.lookup("base", "odom", S // 2)
    assert str(past.value) == ("lookup would require extrapolation into the past: requested time 0.5 s, "
                               "but 'odom' -> 'base' has data only from 1 s to 3.25 s")
    with pytest.raises(TransformUnavailable) as future:
        buffer.lookup("base", "odom", 1_700_000_000 * S + 1)
    assert "extrapolation into the future: requested time 1700000000.000000001 s" in str(future.value)
    assert not buffer.can_transform("base", "odom", S // 2)
    assert buffer.can_transform("base", "odom", 2 * S)


def test_disconnected_trees_and_unknown_frames_are_reported():
    buffer = robot_tree()
    buffer.set_transform("map", "landmark", S, (0.0, 0.0, 0.0), IDENTITY_Q)
    with pytest.raises(TransformUnavailable, match="not connected") as error:
        buffer.lookup("camera", "landmark", S)
    assert "rooted at 'odom'" in str(error.value) and "rooted at 'map'" in str(error.value)
    with pytest.raises(TransformUnavailable, match="source frame 'lidar' does not exist"):
        buffer.lookup("odom", "lidar")
    with pytest.raises(TransformUnavailable, match="target frame '' does not exist"):
        buffer.lookup("", "odom")
    assert not buffer.can_transform("camera", "landmark", S)
    assert buffer.frames() == ["base", "camera", "landmark", "map", "odom", "other"]


def test_a_new_parent_replaces_the_old_one():
    buffer = TransformBuffer()
    buffer.set_transform("world", "a", S, (1.0, 0.0, 0.0), IDENTITY_Q, static=True)
    buffer.set_transform("a", "c", S, (0.0, 1.0, 0.0), IDENTITY_Q)
    assert buffer.can_transform("world", "c", S)
    buffer.set_transform("b", "c", 2 * S, (0.0, 0.0, 1.0), IDENTITY_Q)
    with pytest.raises(TransformUnavailable, match="not connected"):
        buffer.lookup("a", "c", 2 * S)
    # The old parent's samples are gone too: only the 2 s sample of b -> c remains.
    np.testing.assert_allclose(buffer.lookup("b", "c", 0)[:3, 3], [0.0, 0.0, 1.0])
    assert not buffer.can_transform("b", "c", S)
    assert buffer.frames() == ["a", "b", "c", "world"]


def test_reparenting_into_a_loop_is_reported_not_followed():
    buffer = TransformBuffer()
    buffer.set_transform("a", "b", 0, (0.0, 0.0, 0.0), IDENTITY_Q, static=True)
    buffer.set_transform("b", "c", 0, (0.0, 0.0, 0.0), IDENTITY_Q, static=True)
    buffer.set_transform("c", "a", 0, (0.0, 0.0, 0.0), IDENTITY_Q, static=True)
    buffer.set_transform("x", "y", 0, (0.0, 0.0, 0.0), IDENTITY_Q, static=True)
    with pytest.raises(TransformUnavailable, match="loop"):
        buffer.lookup("y", "a")


def test_static_replaces_dynamic_for_the_same_child():
    buffer = TransformBuffer()
    buffer.set_transform("odom", "base", 5 * S, (1.0, 0.0, 0.0), IDENTITY_Q)
    buffer.set_transform("odom", "base", 0, (2.0, 0.0, 0.0), IDENTITY_Q, static=True)
    np.testing.assert_allclose(buffer.lookup("odom", "base", 99 * S)[:3, 3], [2.0, 0.0, 0.0])


def test_a_resent_sample_replaces_the_one_at_the_same_stamp():
    buffer = TransformBuffer()
    buffer.set_transform("odom", "base", S, (1.0, 0.0, 0.0), IDENTITY_Q)
    buffer.set_transform("odom", "base", S, (3.0, 0.0, 0.0), IDENTITY_Q)
    np.testing.assert_allclose(buffer.lookup("odom", "base", S)[:3, 3], [3.0, 0.0, 0.0])


def test_samples_older_than_the_cache_time_are_dropped():
    buffer = TransformBuffer(cache_time_s=2.0)
    for second in (5, 1, 2, 3, 4):  # out of order on purpose: inserts are sorted by stamp
        buffer.set_transform("odom", "base", second * S, (float(second), 0.0, 0.0), IDENTITY_Q)
    with pytest.raises(TransformUnavailable, match="past: requested time 2.5 s, but 'odom' -> 'base' has data "
                                                   "only from 3 s to 5 s"):
        buffer.lookup("odom", "base", 2 * S + S // 2)
    np.testing.assert_allclose(buffer.lookup("odom", "base", 3 * S + S // 2)[:3, 3], [3.5, 0.0, 0.0])
    buffer.set_transform("odom", "base", 2 * S, (2.0, 0.0, 0.0), IDENTITY_Q)  # already too old: dropped at once
    assert not buffer.can_transform("odom", "base", 2 * S)


@pytest.mark.parametrize("parent, child, stamp_ns, translation, rotation, reason", [
    ("", "base", 0, (0, 0, 0), IDENTITY_Q, "non-empty"),
    ("odom", "", 0, (0, 0, 0), IDENTITY_Q, "non-empty"),
    ("odom", "odom", 0, (0, 0, 0), IDENTITY_Q, "own parent"),
    ("odom", "base", -1, (0, 0, 0), IDENTITY_Q, "non-negative"),
    ("odom", "base", 0, (0, float("nan"), 0), IDENTITY_Q, "3 finite"),
    ("odom", "base", 0, (0, 0), IDENTITY_Q, "3 finite"),
    ("odom", "base", 0, (0, 0, 0), (0, 0, float("inf"), 1), "4 finite"),
    ("odom", "base", 0, (0, 0, 0), (0, 0, 0, 0), "zero quaternion"),
])
def test_bad_input_is_rejected(parent, child, stamp_ns, translation, rotation, reason):
    buffer = TransformBuffer()
    with pytest.raises(ValueError, match=reason):
        buffer.set_transform(parent, child, stamp_ns, translation, rotation)
    assert buffer.frames() == []


def test_bad_cache_time_is_rejected():
    with pytest.raises(ValueError, match="cache_time_s"):
        TransformBuffer(cache_time_s=0.0)


def test_concurrent_writer_and_reader():
    buffer = TransformBuffer(cache_time_s=0.001)
    buffer.set_transform("odom", "base", 0, (0.0, 0.0, 0.0), IDENTITY_Q)
    failures: list[Exception] = []
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so an unguarded list update would be caught mid-way

    def write():
        for step in range(1, 5000):  # a short cache: every insert also evicts, reshaping the lists under readers
            buffer.set_transform("odom", "base", step * 100_000, (step * 1e-4, 0.0, 0.0), IDENTITY_Q)

    writer = threading.Thread(target=write)
    try:
        writer.start()
        while writer.is_alive():
            try:
                latest = buffer.lookup("odom", "base")
                assert np.allclose(latest[:3, :3], np.eye(3))
            except Exception as error:  # any failure in the reader is the finding
                failures.append(error)
                break
        writer.join()
    finally:
        sys.setswitchinterval(switch_interval)
    assert failures == []
    np.testing.assert_allclose(buffer.lookup("odom", "base")[:3, 3], [0.4999, 0.0, 0.0])


unit_quaternions = st.tuples(*[st.floats(-1.0, 1.0)] * 4).filter(lambda q: np.linalg.norm(q) > 0.1)
translations = st.tuples(*[st.floats(-10.0, 10.0)] * 3)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), frame_count=st.integers(3, 7))
def test_lookups_invert_and_compose_over_random_trees(data, frame_count):
    buffer = TransformBuffer()
    frames = [f"f{index}" for index in range(frame_count)]
    for index in range(1, frame_count):
        parent = frames[data.draw(st.integers(0, index - 1))]
        if data.draw(st.booleans()):
            buffer.set_transform(parent, frames[index], 0, data.draw(translations), data.draw(unit_quaternions),
                                 static=True)
        else:
            for stamp in (1 * S, 2 * S):
                buffer.set_transform(parent, frames[index], stamp, data.draw(translations),
                                     data.draw(unit_quaternions))
    a, b, c = (data.draw(st.sampled_from(frames)) for _ in range(3))
    stamp = data.draw(st.sampled_from([1 * S, 2 * S, 1 * S + S // 3]))
    a_T_b, b_T_a = buffer.lookup(a, b, stamp), buffer.lookup(b, a, stamp)
    np.testing.assert_allclose(a_T_b @ b_T_a, np.eye(4), atol=1e-9)
    np.testing.assert_allclose(a_T_b[:3, :3].T @ a_T_b[:3, :3], np.eye(3), atol=1e-9)
    assert np.linalg.det(a_T_b[:3, :3]) == pytest.approx(1.0)
    np.testing.assert_allclose(buffer.lookup(a, c, stamp), a_T_b @ buffer.lookup(b, c, stamp), atol=1e-9)
