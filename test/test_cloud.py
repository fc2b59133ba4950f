"""Voxel downsampling: hand-computed cases, edge cases, and properties checked against numpy."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from g2vlm_ros.geometry.cloud import voxel_downsample


def cloud(points, colors, confidence=None):
    return (torch.tensor(points, dtype=torch.float32), torch.tensor(colors, dtype=torch.uint8),
            None if confidence is None else torch.tensor(confidence, dtype=torch.float32))


def test_two_points_in_one_voxel_average_and_a_lone_point_is_kept():
    points, colors, confidence = cloud(
        [[0.1, 0.2, 0.3], [0.3, 0.4, 0.1], [1.5, 0.5, 0.5]],
        [[10, 20, 30], [30, 40, 50], [7, 8, 9]],
        [0.2, 0.6, 0.9])
    out_points, out_colors, out_confidence = voxel_downsample(points, colors, confidence, 1.0)
    torch.testing.assert_close(out_points, torch.tensor([[0.2, 0.3, 0.2], [1.5, 0.5, 0.5]]))
    assert out_colors.dtype == torch.uint8 and out_colors.tolist() == [[20, 30, 40], [7, 8, 9]]
    torch.testing.assert_close(out_confidence, torch.tensor([0.4, 0.9]))


def test_negative_coordinates_go_to_the_floor_voxel():
    # with truncation towards zero, -0.2 and 0.2 would share voxel 0; floor puts -0.2 in voxel -1
    points, colors, _ = cloud(
        [[-0.2, 0.5, 0.5], [0.2, 0.5, 0.5], [-0.9, 0.5, 0.5], [-1.1, 0.5, 0.5]],
        [[0, 0, 0], [100, 100, 100], [50, 50, 50], [200, 200, 200]])
    out_points, out_colors, out_confidence = voxel_downsample(points, colors, None, 1.0)
    assert out_confidence is None
    # sorted by voxel index: x voxel -2, then -1, then 0
    torch.testing.assert_close(out_points[:, 0], torch.tensor([-1.1, -0.55, 0.2]))
    assert out_colors[:, 0].tolist() == [200, 25, 100]


def test_points_on_a_voxel_boundary_belong_to_the_upper_voxel():
    points, colors, _ = cloud([[0.5, 0.0, 0.0], [0.49, 0.0, 0.0], [-0.5, 0.0, 0.0]], [[1, 1, 1]] * 3)
    out_points, _, _ = voxel_downsample(points, colors, None, 0.5)
    assert out_points[:, 0].tolist() == pytest.approx([-0.5, 0.49, 0.5])


def test_voxel_index_is_floor_of_the_exact_quotient():
    # float32(0.7) = 0.69999998... lies below the 0.7 boundary (voxel 6, apart from 0.71 in voxel 7); a float32
    # division would round 0.69999998 / 0.1 up to 7.0 and merge the two points
    points, colors, _ = cloud([[0.7, 0.0, 0.0], [0.71, 0.0, 0.0]], [[1, 1, 1]] * 2)
    out_points, _, _ = voxel_downsample(points, colors, None, 0.1)
    assert out_points[:, 0].tolist() == pytest.approx([0.7, 0.71])


def test_mean_colours_are_rounded_to_the_nearest_integer_with_halves_up():
    points, colors, _ = cloud([[0.1, 0.1, 0.1]] * 3, [[10, 0, 255], [11, 1, 254], [10, 1, 254]])
    _, out_colors, _ = voxel_downsample(points, colors, None, 1.0)
    assert out_colors.tolist() == [[10, 1, 254]]  # 31 / 3 = 10.33 -> 10, 2 / 3 = 0.67 -> 1, 763 / 3 = 254.33 -> 254
    _, out_colors, _ = voxel_downsample(points[:2], colors[:2], None, 1.0)
    assert out_colors.tolist() == [[11, 1, 255]]  # halves: 10.5 -> 11, 0.5 -> 1, 254.5 -> 255 (not to even)


def test_output_does_not_depend_on_input_order_and_is_sorted_by_voxel_index():
    rng = np.random.default_rng(3)
    points = torch.from_numpy(rng.uniform(-3, 3, (500, 3)).astype(np.float32))
    colors = torch.from_numpy(rng.integers(0, 256, (500, 3), dtype=np.uint8))
    confidence = torch.from_numpy(rng.uniform(0, 1, 500).astype(np.float32))
    first = voxel_downsample(points, colors, confidence, 0.7)
    order = torch.from_numpy(rng.permutation(500))
    second = voxel_downsample(points[order], colors[order], confidence[order], 0.7)
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b)
    voxel = np.floor(first[0].numpy().astype(np.float64) / 0.7).astype(np.int64)
    assert [tuple(row) for row in voxel] == sorted(tuple(row) for row in voxel)


def test_empty_input_gives_empty_output_of_the_right_types():
    points, colors, confidence = torch.zeros((0, 3)), torch.zeros((0, 3), dtype=torch.uint8), torch.zeros(0)
    out_points, out_colors, out_confidence = voxel_downsample(points, colors, confidence, 0.1)
    assert out_points.shape == (0, 3) and out_points.dtype == torch.float32
    assert out_colors.shape == (0, 3) and out_colors.dtype == torch.uint8
    assert out_confidence.shape == (0,)
    assert voxel_downsample(points, colors, None, 0.1)[2] is None


@pytest.mark.parametrize("voxel_size", [0.0, -1.0])
def test_non_positive_voxel_size_returns_the_inputs_unchanged(voxel_size):
    points, colors, confidence = cloud([[0.1, 0.1, 0.1], [0.2, 0.2, 0.2]], [[1, 2, 3], [4, 5, 6]], [0.5, 0.7])
    out = voxel_downsample(points, colors, confidence, voxel_size)
    assert out[0] is points and out[1] is colors and out[2] is confidence


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_points_are_rejected(bad):
    points, colors, _ = cloud([[0.1, 0.1, 0.1], [0.2, bad, 0.2]], [[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match="NaN or infinite"):
        voxel_downsample(points, colors, None, 0.1)


def test_malformed_inputs_are_rejected():
    points, colors, confidence = cloud([[0.1, 0.1, 0.1]], [[1, 2, 3]], [0.5])
    with pytest.raises(ValueError, match="points"):
        voxel_downsample(points[:, :2], colors, confidence, 0.1)
    with pytest.raises(ValueError, match="colors"):
        voxel_downsample(points, colors.float(), confidence, 0.1)
    with pytest.raises(ValueError, match="confidence"):
        voxel_downsample(points, colors, torch.zeros(2), 0.1)
    with pytest.raises(ValueError, match="voxel_size"):
        voxel_downsample(points, colors, confidence, float("nan"))
    with pytest.raises(ValueError, match="overflow"):
        voxel_downsample(points * 1e30, colors, confidence, 1e-20)


def test_a_cloud_spanning_more_voxels_than_an_int64_key_numbers_is_still_grouped():
    # extent 2e12 voxels per axis: (2e12)^3 keys do not fit in int64, so rows are grouped directly
    points, colors, _ = cloud([[1e6, -1e6, 1e6], [-1e6, 1e6, -1e6], [1e6, -1e6, 1e6]],
                              [[0, 0, 0], [9, 9, 9], [2, 2, 2]])
    out_points, out_colors, _ = voxel_downsample(points, colors, None, 1e-6)
    assert out_points.tolist() == [[-1e6, 1e6, -1e6], [1e6, -1e6, 1e6]]
    assert out_colors.tolist() == [[9, 9, 9], [1, 1, 1]]
    # many voxels: an int64 key that wrapped around would misorder (or merge) them
    rng = np.random.default_rng(11)
    points = torch.from_numpy(rng.uniform(-1e6, 1e6, (100, 3)).astype(np.float32))
    points = torch.cat((points, points[:20]))
    out_points, _, _ = voxel_downsample(points, torch.zeros((120, 3), dtype=torch.uint8), None, 1e-6)
    torch.testing.assert_close(out_points, torch.from_numpy(np.unique(points.numpy(), axis=0)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(5)
    points = torch.from_numpy(rng.normal(0, 2, (20000, 3)).astype(np.float32))
    colors = torch.from_numpy(rng.integers(0, 256, (20000, 3), dtype=np.uint8))
    confidence = torch.from_numpy(rng.uniform(0, 1, 20000).astype(np.float32))
    on_cpu = voxel_downsample(points, colors, confidence, 0.3)
    on_gpu = voxel_downsample(points.cuda(), colors.cuda(), confidence.cuda(), 0.3)
    assert all(tensor.is_cuda for tensor in on_gpu)
    for a, b in zip(on_cpu, on_gpu, strict=True):
        torch.testing.assert_close(a, b.cpu())


coordinates = st.floats(-50, 50, width=32, allow_subnormal=False)


@settings(max_examples=200, deadline=None)
@given(points=st.integers(1, 200).flatmap(lambda m: arrays(np.float32, (m, 3), elements=coordinates)),
       voxel_size=st.floats(0.01, 20.0), seed=st.integers(0, 2 ** 32 - 1))
def test_each_output_is_the_mean_of_one_voxel_within_its_points_bounds(points, voxel_size, seed):
    # few distinct coordinates make points share voxels and sit exactly on voxel boundaries
    rng = np.random.default_rng(seed)
    if rng.uniform() < 0.5:
        points = np.round(points / 5.0).astype(np.float32) * np.float32(2.5)
    colors = rng.integers(0, 256, points.shape, dtype=np.uint8)
    confidence = rng.uniform(0, 1, len(points)).astype(np.float32)
    out_points, out_colors, out_confidence = (tensor.numpy() for tensor in voxel_downsample(
        torch.from_numpy(points), torch.from_numpy(colors), torch.from_numpy(confidence), voxel_size))

    # independent reference: numpy voxel indices; np.unique(axis=0) sorts rows like the function's output
    index = np.floor(points.astype(np.float64) / voxel_size).astype(np.int64)
    voxels, inverse = np.unique(index, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    assert len(out_points) == len(voxels) == len(out_colors) == len(out_confidence)
    for number in range(len(voxels)):
        members = inverse == number
        assert np.all(points[members].min(0) <= out_points[number])
        assert np.all(out_points[number] <= points[members].max(0))
        assert np.all(colors[members].min(0) <= out_colors[number])
        assert np.all(out_colors[number] <= colors[members].max(0))
        assert confidence[members].min() <= out_confidence[number] <= confidence[members].max()
        np.testing.assert_allclose(out_points[number], points[members].astype(np.float64).mean(0),
                                   rtol=1e-6, atol=1e-5)
