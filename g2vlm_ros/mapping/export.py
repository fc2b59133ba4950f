"""Files users open elsewhere: TUM trajectories (scored with evo), PLY and PCD point clouds (MeshLab,
CloudCompare, Open3D, PCL).

- TUM: one line per pose, "timestamp tx ty tz qx qy qz qw", timestamp in seconds (nanosecond digits kept), the
  quaternion from geometry/rotations.py (x, y, z, w with w >= 0). The translation is in the map's unit: metres
  only when the map is metric, which the caller states in the header comment.
- PLY: binary little-endian, float32 x y z and uint8 red green blue per vertex.
- PCD (v0.7): binary, float32 x y z and the colour packed as PCL does (0x00RRGGBB in a 4-byte field "rgb" of
  type F), so PCL, Open3D and CloudCompare all read it.
Files are written to a temporary name and renamed, so a reader never sees half a file.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import numpy as np

from g2vlm_ros.geometry.rotations import matrix_to_quaternion_xyzw

PathLike = Union[str, os.PathLike]


def _atomic_write(path: PathLike, payload: bytes) -> None:
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        temporary.write_bytes(payload)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def tum_lines(trajectory: Sequence[tuple[int, np.ndarray]]) -> list[str]:
    """The TUM lines of (stamp_ns, camera_to_map [4,4]) pairs, in the given order."""
    lines = []
    for stamp_ns, pose in trajectory:
        pose = np.asarray(pose, np.float64)
        if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
            raise ValueError(f"the pose at {stamp_ns} ns is not a finite [4,4] matrix")
        seconds, nanoseconds = divmod(int(stamp_ns), 1_000_000_000)
        x, y, z, w = matrix_to_quaternion_xyzw(pose[:3, :3])
        tx, ty, tz = pose[:3, 3]
        lines.append(f"{seconds}.{nanoseconds:09d} {tx:.9f} {ty:.9f} {tz:.9f} {x:.9f} {y:.9f} {z:.9f} {w:.9f}")
    return lines


def write_tum(path: PathLike, trajectory: Sequence[tuple[int, np.ndarray]], comment: Optional[str] = None) -> None:
    """TUM trajectory file; `comment` (e.g. the frame and unit) goes into '#' header lines, which evo skips."""
    header = ["# timestamp tx ty tz qx qy qz qw"]
    if comment:
        header += [f"# {line}" for line in comment.splitlines()]
    _atomic_write(path, ("\n".join(header + tum_lines(trajectory)) + "\n").encode())


def _checked_cloud(points: np.ndarray, colors: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be [M,3], got {points.shape}")
    if colors is None:
        colors = np.full(points.shape, 255, np.uint8)
    colors = np.asarray(colors)
    if colors.shape != points.shape or colors.dtype != np.uint8:
        raise ValueError(f"colors must be uint8 {points.shape}, got {colors.dtype} {colors.shape}")
    return points.astype("<f4"), colors


def write_ply(path: PathLike, points: np.ndarray, colors: Optional[np.ndarray] = None) -> None:
    """Binary little-endian PLY with float32 positions and uint8 colours (white when none are given)."""
    points, colors = _checked_cloud(points, colors)
    vertex = np.empty(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                          ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for axis, name in enumerate("xyz"):
        vertex[name] = points[:, axis]
    for channel, name in enumerate(("red", "green", "blue")):
        vertex[name] = colors[:, channel]
    header = ("ply\nformat binary_little_endian 1.0\ncomment g2vlm_ros map\n"
              f"element vertex {len(points)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    _atomic_write(path, header.encode("ascii") + vertex.tobytes())


def write_pcd(path: PathLike, points: np.ndarray, colors: Optional[np.ndarray] = None) -> None:
    """Binary PCD v0.7 with float32 x y z and PCL's packed rgb."""
    points, colors = _checked_cloud(points, colors)
    packed = ((colors[:, 0].astype(np.uint32) << 16) | (colors[:, 1].astype(np.uint32) << 8)
              | colors[:, 2].astype(np.uint32))
    record = np.empty(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4")])
    for axis, name in enumerate("xyz"):
        record[name] = points[:, axis]
    record["rgb"] = packed  # the bits of PCL's float rgb field
    header = ("# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS x y z rgb\nSIZE 4 4 4 4\n"
              f"TYPE F F F F\nCOUNT 1 1 1 1\nWIDTH {len(points)}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\n"
              f"POINTS {len(points)}\nDATA binary\n")
    _atomic_write(path, header.encode("ascii") + record.tobytes())
