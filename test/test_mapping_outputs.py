"""What the map gives out: the memory-bounded map cloud (map_cloud.py), TUM/PLY/PCD files (export.py, read back
by evo and by independent parsers) and the 2-D occupancy grid (occupancy.py)."""
from __future__ import annotations

import numpy as np
import pytest
from evo.tools import file_interface

from g2vlm_ros.geometry.rotations import matrix_from_translation_quaternion
from g2vlm_ros.mapping.export import write_pcd, write_ply, write_tum
from g2vlm_ros.mapping.map_cloud import MapCloud, voxel_downsample
from g2vlm_ros.mapping.occupancy import FREE, OCCUPIED, UNKNOWN, occupancy_grid
from g2vlm_ros.mapping.synthetic import BoxRoom, ellipse_walk, random_rotation, synthetic_sequence
from g2vlm_ros.mapping.world_map import MapSettings, WorldMap


def test_voxel_downsample_means_each_voxel():
    points = np.array([[0.01, 0.01, 0.01], [0.03, 0.03, 0.03], [0.51, 0.0, 0.0]])
    colors = np.array([[0, 0, 0], [255, 255, 255], [10, 20, 30]], np.uint8)
    merged, merged_colors = voxel_downsample(points, colors, 0.1)
    assert np.allclose(merged, [[0.02, 0.02, 0.02], [0.51, 0.0, 0.0]])
    assert merged_colors.tolist() == [[128, 128, 128], [10, 20, 30]]


def test_map_cloud_stays_within_its_budget_by_evicting_the_oldest_keyframes():
    cloud = MapCloud(voxel_size=0.0, max_points=1000)
    rng = np.random.default_rng(1)
    for node in range(10):
        cloud.add(node, rng.normal(size=(300, 3)), np.full((300, 3), node, np.uint8))
        assert cloud.stored_points <= 1000
    assert cloud.keyframes == 3 and cloud.evicted_keyframes == 7
    points, colors = cloud.build({node: np.eye(4) for node in range(10)})
    assert len(points) == 900 and set(colors[:, 0].tolist()) == {7, 8, 9}  # the newest keyframes stay
    cloud.add(10, rng.normal(size=(5000, 3)), np.zeros((5000, 3), np.uint8))  # alone larger than the budget
    assert cloud.stored_points == 1000 and cloud.keyframes == 1


def test_world_map_cloud_follows_the_optimized_poses_and_its_bound():
    sequence = synthetic_sequence(ellipse_walk(20), window_size=3, seed=2, grid=(24, 32))
    world = WorldMap(MapSettings(voxel_size=0.05, max_points=3000))
    for views, stamp in zip(sequence.windows, sequence.stamps, strict=True):
        world.add_window(views, stamp)
        assert world.stats().cloud_points <= 3000
    points, colors = world.cloud()
    assert 0 < len(points) <= 3000 and colors.dtype == np.uint8 and points.dtype == np.float32
    assert world.stats().evicted_keyframes > 0
    # every point lies on the true room's walls, in the map frame (the first window's frame and unit)
    room, gauge = BoxRoom(), sequence.gauges[0]
    first_to_world = sequence.world_truth[sequence.windows[0][0].key]
    world_points = (gauge.inverse().apply_points(points.astype(np.float64)) @ first_to_world[:3, :3].T
                    + first_to_world[:3, 3])
    distance_to_walls = np.minimum(np.abs(world_points - room.low), np.abs(world_points - room.high)).min(1)
    assert np.percentile(distance_to_walls, 99) < 0.05  # the voxel size


def test_tum_round_trip_through_evo(tmp_path):
    rng = np.random.default_rng(3)
    trajectory = []
    for index in range(5):
        pose = matrix_from_translation_quaternion(rng.normal(size=3), rng.normal(size=4))
        trajectory.append((1_700_000_000_123_456_789 + index * 33_333_333, pose))
    path = tmp_path / "trajectory.tum"
    write_tum(path, trajectory, comment="frame g2vlm_map, unit: metres")
    loaded = file_interface.read_tum_trajectory_file(str(path))
    assert np.allclose(loaded.timestamps, [stamp * 1e-9 for stamp, _ in trajectory], rtol=0, atol=1e-6)
    for (_, pose), read in zip(trajectory, loaded.poses_se3, strict=True):
        assert np.allclose(read, pose, atol=1e-8)
    first_line = path.read_text().splitlines()[2].split()
    assert first_line[0] == "1700000000.123456789" and len(first_line) == 8
    with pytest.raises(ValueError, match="finite"):
        write_tum(path, [(0, np.full((4, 4), np.nan))])


def _read_ply(path) -> tuple[np.ndarray, np.ndarray]:
    data = path.read_bytes()
    header, body = data.split(b"end_header\n", 1)
    lines = header.decode().splitlines()
    assert lines[:2] == ["ply", "format binary_little_endian 1.0"]
    count = int(next(line for line in lines if line.startswith("element vertex")).split()[2])
    record = np.frombuffer(body, dtype=[("xyz", "<f4", 3), ("rgb", "u1", 3)], count=count)
    assert len(body) == record.nbytes
    return record["xyz"], record["rgb"]


def _read_pcd(path) -> tuple[np.ndarray, np.ndarray]:
    data = path.read_bytes()
    header, body = data.split(b"DATA binary\n", 1)
    fields = dict(line.split(" ", 1) for line in header.decode().splitlines() if not line.startswith("#"))
    assert fields["FIELDS"] == "x y z rgb" and fields["SIZE"] == "4 4 4 4"
    record = np.frombuffer(body, dtype=[("xyz", "<f4", 3), ("rgb", "<u4")], count=int(fields["POINTS"]))
    packed = record["rgb"]
    colors = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], 1).astype(np.uint8)
    return record["xyz"], colors


def test_ply_and_pcd_round_trips(tmp_path):
    rng = np.random.default_rng(4)
    points = rng.normal(size=(257, 3)).astype(np.float32)
    colors = rng.integers(0, 256, size=(257, 3), dtype=np.uint8)
    write_ply(tmp_path / "map.ply", points, colors)
    write_pcd(tmp_path / "map.pcd", points, colors)
    for reader, name in ((_read_ply, "map.ply"), (_read_pcd, "map.pcd")):
        read_points, read_colors = reader(tmp_path / name)
        assert np.array_equal(read_points, points) and np.array_equal(read_colors, colors), name
    write_ply(tmp_path / "empty.ply", np.zeros((0, 3)), None)
    assert len(_read_ply(tmp_path / "empty.ply")[0]) == 0
    with pytest.raises(ValueError, match="colors"):
        write_pcd(tmp_path / "bad.pcd", points, colors[:5])


def _box_room_points(room: BoxRoom, spacing: float = 0.05) -> np.ndarray:
    """Walls, floor and ceiling of a room sampled on a grid, in an optical frame (y down)."""
    xs = np.arange(room.low[0], room.high[0] + 1e-9, spacing)
    ys = np.arange(room.low[1], room.high[1] + 1e-9, spacing)
    zs = np.arange(room.low[2], room.high[2] + 1e-9, spacing)
    faces = []
    for x in (room.low[0], room.high[0]):
        faces.append(np.stack(np.meshgrid([x], ys, zs), -1).reshape(-1, 3))
    for z in (room.low[2], room.high[2]):
        faces.append(np.stack(np.meshgrid(xs, ys, [z]), -1).reshape(-1, 3))
    for y in (room.low[1], room.high[1]):
        faces.append(np.stack(np.meshgrid(xs, [y], zs), -1).reshape(-1, 3))
    return np.concatenate(faces)


def test_occupancy_grid_of_a_box_room_has_walls_and_a_free_inside():
    room = BoxRoom(half_width=2.0, half_depth=3.0, floor_y=1.2, ceiling_y=-1.4)
    rotation = random_rotation(np.random.default_rng(5))  # the map frame need not be aligned with the room
    points = _box_room_points(room) @ rotation.T
    up = rotation @ np.array([0.0, -1.0, 0.0])  # optical y points down
    viewpoints = np.array([[0.0, 0.0, 0.0], [1.0, 0.2, 1.5], [-1.0, 0.1, -2.0]]) @ rotation.T
    grid = occupancy_grid(points, up, resolution=0.1, viewpoints=viewpoints)
    assert grid.data.dtype == np.int8 and grid.data.shape == (grid.height, grid.width)
    assert grid.floor_height == pytest.approx(-1.2, abs=0.06)
    walls = np.concatenate([[[x, 0.0, z] for z in np.linspace(-2.9, 2.9, 30)] for x in (-2.0, 2.0)]
                           + [[[x, 0.0, z] for x in np.linspace(-1.9, 1.9, 20)] for z in (-3.0, 3.0)])
    wall_cells = grid.cells(walls @ rotation.T)
    assert np.all(grid.data[wall_cells[:, 1], wall_cells[:, 0]] == OCCUPIED)
    inside = np.stack(np.meshgrid(np.linspace(-1.7, 1.7, 15), [0.0], np.linspace(-2.7, 2.7, 20)), -1).reshape(-1, 3)
    inside_cells = grid.cells(inside @ rotation.T)
    assert np.all(grid.data[inside_cells[:, 1], inside_cells[:, 0]] == FREE)
    outside = grid.cells(np.array([[2.3, 0.0, 0.0], [0.0, 0.0, 3.3]]) @ rotation.T)
    assert np.all(grid.data[outside[:, 1], outside[:, 0]] == UNKNOWN)  # behind the walls nothing was seen
    # the origin pose puts cell (0, 0)'s corner on the floor plane
    origin = grid.origin_pose()
    assert origin[:3, 3] @ up == pytest.approx(grid.floor_height)
    assert np.allclose(origin[:3, :3].T @ origin[:3, :3], np.eye(3))
    without_viewpoints = occupancy_grid(points, up, resolution=0.1)
    assert not np.any(without_viewpoints.data == FREE)
    with pytest.raises(ValueError, match="up"):
        occupancy_grid(points, np.zeros(3))
    with pytest.raises(ValueError, match="empty"):
        occupancy_grid(np.zeros((0, 3)), up)


def test_world_map_occupancy_from_its_cloud_and_keyframe_cameras():
    sequence = synthetic_sequence(ellipse_walk(24), window_size=3, seed=6, gauge=False, metric=True)
    world = WorldMap(MapSettings(voxel_size=0.05), metric=True)
    for views, stamp in zip(sequence.windows, sequence.stamps, strict=True):
        world.add_window(views, stamp)
    first_to_world = sequence.world_truth[sequence.windows[0][0].key]
    world_to_map = np.linalg.inv(first_to_world)
    up = world_to_map[:3, :3] @ np.array([0.0, -1.0, 0.0])  # the room's y points down
    grid = world.occupancy(up, resolution=0.1)
    room = BoxRoom()
    assert grid.floor_height == pytest.approx(-room.floor_y + up @ world_to_map[:3, 3], abs=0.1)
    centre, wall = grid.cells(np.array([[0.0, 0.0, 0.0], [room.half_width - 0.02, 0.0, 0.0]]) @ world_to_map[:3, :3].T
                              + world_to_map[:3, 3])
    assert grid.data[centre[1], centre[0]] == FREE
    assert grid.data[wall[1], wall[0]] == OCCUPIED
