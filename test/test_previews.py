"""Preview images and PLY files: what the demo writes for a person to look at."""
import numpy as np
import pytest

from g2vlm_ros.cli.previews import (
    CAPTION_HEIGHT,
    colorize,
    confidence_preview,
    depth_preview,
    display_range,
    save_ply,
)
from g2vlm_ros.cli.topdown import PATH_RGB, nice_length, render_topdown, view_axes

WALL, FLOOR, CEILING = (0, 0, 255), (0, 160, 0), (255, 0, 255)


def level_cameras(count: int, step: float = 0.1) -> np.ndarray:
    """Level cameras (optical axes: y down, z forward) walking forwards along +z."""
    poses = np.tile(np.eye(4), (count, 1, 1))
    poses[:, 2, 3] = np.arange(count) * step
    return poses


def room_cloud() -> tuple[np.ndarray, np.ndarray]:
    """A wall 2 units ahead, a floor 1 unit below the cameras and a ceiling 2 units above them."""
    u, v = np.meshgrid(np.linspace(-1, 1, 60), np.linspace(-1, 1, 60))
    wall = np.stack([u.ravel(), v.ravel(), np.full(u.size, 2.0)], axis=1)
    floor = np.stack([u.ravel(), np.full(u.size, 1.0), 1.0 + v.ravel()], axis=1)
    ceiling = np.stack([u.ravel(), np.full(u.size, -2.0), 1.0 + v.ravel()], axis=1)
    colors = np.concatenate([np.tile(c, (u.size, 1)) for c in (WALL, FLOOR, CEILING)]).astype(np.uint8)
    return np.concatenate([wall, floor, ceiling]), colors


def pixels_of(image: np.ndarray, rgb) -> np.ndarray:
    """(row, column) of every pixel of exactly this colour."""
    return np.argwhere((image == np.array(rgb, np.uint8)).all(axis=-1))


def test_a_level_camera_looks_forward_with_up_against_its_y_axis():
    right, forward, up = view_axes(level_cameras(3))
    np.testing.assert_allclose(right, [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(forward, [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(up, [0, -1, 0], atol=1e-12)


def test_the_top_down_view_shows_walls_ahead_of_the_cameras_and_hides_the_ceiling():
    points, colors = room_cloud()
    points = np.concatenate([points, np.full((5, 3), np.nan)])  # invalid points are skipped, not drawn
    colors = np.concatenate([colors, np.zeros((5, 3), np.uint8)])
    image = render_topdown(points, colors, level_cameras(4), "m", "caption")
    plot = image[:-CAPTION_HEIGHT]
    assert len(pixels_of(plot, CEILING)) == 0  # from above it would cover the whole room
    wall, floor, path = pixels_of(plot, WALL), pixels_of(plot, FLOOR), pixels_of(plot, PATH_RGB)
    assert len(wall) > 100 and len(floor) > 1000 and len(path) > 20
    assert np.ptp(wall[:, 0]) <= 3 < np.ptp(wall[:, 1])  # the wall is a thin horizontal line seen from above
    assert wall[:, 0].mean() < floor[:, 0].min() + 3  # ahead of (above, in the picture) the floor in front of it
    assert wall[:, 0].mean() < path[:, 0].min()  # and ahead of the cameras
    # the floor spans 2 units across and the wall is 1 unit ahead of the floor's middle: same scale both ways
    across = np.ptp(floor[:, 1])
    ahead = np.median(floor[:, 0]) - wall[:, 0].mean()
    assert ahead == pytest.approx(across / 2, rel=0.1)


@pytest.mark.parametrize("span, expected", [(2.3, 0.5), (10.0, 2.0), (0.07, 0.01), (37.0, 5.0)])
def test_the_scale_bar_has_a_round_length(span, expected):
    assert nice_length(span) == pytest.approx(expected)


def test_depth_and_confidence_previews_put_the_camera_beside_a_colour_bar():
    camera = np.full((48, 64, 3), 128, np.uint8)
    depth = np.linspace(1.0, 3.0, 48 * 64, dtype=np.float32).reshape(48, 64)
    depth[0, 0] = np.nan
    image = depth_preview(camera, depth, "m", "caption")
    assert image.shape[0] == 48 + CAPTION_HEIGHT and image.shape[1] > 2 * 64
    np.testing.assert_array_equal(image[:48, :64], camera)
    near, far = image[0, 64 + 8 + 1], image[47, 64 + 8 + 63]  # depth grows along the rows
    assert far.sum() > near.sum()  # far is bright (yellow), near is dark
    np.testing.assert_array_equal(image[0, 64 + 8], [0, 0, 0])  # NaN: black, never a depth colour
    confidence = confidence_preview(camera, np.full((48, 64), 0.5, np.float32), "caption")
    assert confidence.shape == image.shape


def test_colour_ranges_ignore_outliers_and_invalid_values():
    values = np.concatenate([np.linspace(0, 1, 1000), [1e6, np.inf, np.nan]]).astype(np.float32)
    low, high = display_range(values)
    assert 0.0 <= low < 0.05 and 0.95 < high <= 1.0
    assert (colorize(np.full((2, 2), np.nan)) == 0).all()


def test_ply_files_hold_every_point_with_its_colour(tmp_path):
    points = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
    colors = np.random.default_rng(1).integers(0, 256, size=(100, 3)).astype(np.uint8)
    data = save_ply(points, colors, tmp_path / "cloud.ply").read_bytes()
    header, _, body = data.partition(b"end_header\n")
    assert b"element vertex 100" in header
    layout = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
    vertices = np.frombuffer(body, layout)
    np.testing.assert_array_equal(np.stack([vertices["x"], vertices["y"], vertices["z"]], 1), points)
    np.testing.assert_array_equal(np.stack([vertices["r"], vertices["g"], vertices["b"]], 1), colors)
