"""Quaternion and rotation/rigid-transform matrix helpers (numpy only, no transforms3d needed at runtime).

Kept in one module so that each convention (quaternions as x, y, z, w with w >= 0; 4x4 transforms as
parent_T_child) is written once; the TF buffer, the TF adapters and the CLIs import from here.
"""
from __future__ import annotations

import math

import numpy as np


def matrix_to_quaternion_xyzw(rotation: np.ndarray) -> tuple[float, float, float, float]:
    """Converts a 3x3 rotation matrix to a unit quaternion (x, y, z, w) with w >= 0.

    Uses the branch on the largest diagonal term (Shepperd's method) so that precision holds near
    180-degree rotations; the input is projected onto SO(3) first so slightly non-orthonormal
    model output still yields a valid rotation.
    """
    u, _, vt = np.linalg.svd(np.asarray(rotation, dtype=np.float64))
    r = u @ vt
    if np.linalg.det(r) < 0:
        r = u @ np.diag([1.0, 1.0, -1.0]) @ vt
    trace = np.trace(r)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        w, x, y, z = 0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = 2.0 * np.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
        w, x, y, z = (r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s
    elif r[1, 1] > r[2, 2]:
        s = 2.0 * np.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
        w, x, y, z = (r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s
    else:
        s = 2.0 * np.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
        w, x, y, z = (r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s
    quaternion = np.array([x, y, z, w])
    quaternion /= np.linalg.norm(quaternion)
    if quaternion[3] < 0:
        quaternion = -quaternion
    return tuple(float(v) for v in quaternion)


def rotation_angle_deg(rotation: np.ndarray) -> float:
    """Angle of a rotation matrix in degrees, in [0, 180] (clipped so rounding never yields NaN)."""
    cosine = (np.trace(np.asarray(rotation, dtype=np.float64)) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))


def matrix_from_translation_quaternion(translation, quaternion_xyzw) -> np.ndarray:
    """4x4 rigid transform from a translation and a (not necessarily unit) quaternion x, y, z, w."""
    x, y, z, w = np.asarray(quaternion_xyzw, dtype=np.float64) / np.linalg.norm(quaternion_xyzw)
    matrix = np.eye(4)
    matrix[:3, :3] = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    matrix[:3, 3] = np.asarray(translation, dtype=np.float64)
    return matrix


def slerp(q0_xyzw, q1_xyzw, fraction: float) -> np.ndarray:
    """Spherical interpolation between unit quaternions along the shorter arc (q and -q are one rotation)."""
    q0 = np.asarray(q0_xyzw, dtype=np.float64)
    q1 = np.asarray(q1_xyzw, dtype=np.float64)
    cos_angle = float(np.dot(q0, q1))
    if cos_angle < 0.0:
        q1, cos_angle = -q1, -cos_angle
    if cos_angle > 0.9995:
        # Nearly equal: sin(angle) ~ 0 would amplify rounding, and the chord is indistinguishable from the arc.
        blended = q0 + fraction * (q1 - q0)
        return blended / np.linalg.norm(blended)
    angle = math.acos(min(cos_angle, 1.0))
    blended = (math.sin((1.0 - fraction) * angle) * q0 + math.sin(fraction * angle) * q1) / math.sin(angle)
    return blended / np.linalg.norm(blended)


def invert_rigid(transform: np.ndarray) -> np.ndarray:
    """Inverse of a 4x4 rigid transform (rotation transposed, no general matrix inverse needed)."""
    inverse = np.eye(4)
    inverse[:3, :3] = transform[:3, :3].T
    inverse[:3, 3] = -transform[:3, :3].T @ transform[:3, 3]
    return inverse
