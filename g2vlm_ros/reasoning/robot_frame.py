"""How the answerer reaches the planner's frame: a rigid transform and the direction of "up" (gravity)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

UP_SOURCES = ("tf", "imu", "floor_plane", "none")


@dataclass(frozen=True)
class RobotFrame:
    """Supplied by the node per question (TF / IMU lookups are ROS; the geometry here is not).

    `window_to_target` maps points of the window's world frame, in metres, to `name` (REP 103/105 frames such as
    base_link, odom, map); None answers in the window's own frame, and `name` is then that frame's name.
    `up_in_window` is the unit vector opposite to gravity expressed in the window's world frame (from the
    odom/base_link z axis through TF, or from an IMU's gravity); None lets the answerer fit a floor plane.
    """

    name: str
    window_to_target: Optional[np.ndarray] = None  # [4,4] rigid, metres
    up_in_window: Optional[np.ndarray] = None  # [3] unit vector
    up_source: str = "none"  # "tf" | "imu" | "floor_plane" | "none"

    def __post_init__(self):
        if self.up_source not in UP_SOURCES:
            raise ValueError(f"up_source must be one of {UP_SOURCES}, got {self.up_source!r}")
        if self.window_to_target is not None:
            transform = np.asarray(self.window_to_target, dtype=np.float64)
            rotation = transform[:3, :3] if transform.shape == (4, 4) else None
            if rotation is None or not np.isfinite(transform).all() or \
                    not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-4) or np.linalg.det(rotation) < 0:
                raise ValueError("window_to_target must be a finite rigid 4x4 transform")
        if self.up_in_window is not None:
            up = np.asarray(self.up_in_window, dtype=np.float64)
            if up.shape != (3,) or not np.isfinite(up).all() or abs(np.linalg.norm(up) - 1.0) > 1e-3:
                raise ValueError("up_in_window must be a finite unit 3-vector")

    def to_target(self, points: np.ndarray) -> np.ndarray:
        """[M,3] window-frame points in metres -> the target frame (unchanged without a transform)."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        if self.window_to_target is None:
            return points
        transform = np.asarray(self.window_to_target, dtype=np.float64)
        return points @ transform[:3, :3].T + transform[:3, 3]
