"""~/save_map and ~/save_trajectory: the persistent map and its keyframe trajectory written to files.

save_map writes the map cloud (map frame, map units) as PLY or PCD, by the path's extension; save_trajectory the
first camera's optimized keyframe poses in TUM format ("t tx ty tz qx qy qz qw"), which `evo` reads. An empty
path writes under ~/.ros/g2vlm/ with the date and time in the name. Failures are answered, never raised.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from g2vlm_interfaces.srv import SaveMap, SaveTrajectory
from g2vlm_ros.pipeline.mapping_stage import MapStage

DEFAULT_FOLDER = Path("~/.ros/g2vlm")
MAP_FORMATS = (".ply", ".pcd")


def output_path(requested: str, stem: str, default_extension: str) -> Path:
    if requested.strip():
        return Path(requested.strip()).expanduser().resolve()
    return (DEFAULT_FOLDER.expanduser() / f"{stem}_{time.strftime('%Y%m%d_%H%M%S')}{default_extension}").resolve()


def save_map(world_map: Optional[MapStage], requested_path: str, describe_units: str, map_frame: str) -> tuple[
        bool, str, str]:
    """(success, message, path) of writing the map cloud."""
    from g2vlm_ros.mapping.export import write_pcd, write_ply

    if world_map is None:
        return False, "no map: the node is not configured", ""
    path = output_path(requested_path, "map", ".ply")
    if path.suffix.lower() not in MAP_FORMATS:
        return False, f"unknown map format '{path.suffix}': the path must end in .ply or .pcd", str(path)
    points, colors = world_map.cloud()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        (write_ply if path.suffix.lower() == ".ply" else write_pcd)(path, points, colors)
    except (OSError, ValueError) as error:
        return False, f"cannot write {path}: {error}", str(path)
    return True, f"{len(points)} points in frame '{map_frame}', {describe_units}", str(path)


def save_trajectory(world_map: Optional[MapStage], requested_path: str, camera: str, describe_units: str,
                    map_frame: str) -> tuple[bool, str, str]:
    """(success, message, path) of writing the first camera's keyframe trajectory in TUM format."""
    from g2vlm_ros.mapping.export import write_tum

    if world_map is None:
        return False, "no map: the node is not configured", ""
    path = output_path(requested_path, "trajectory", ".tum")
    trajectory = [(key[1], pose) for key, pose in world_map.trajectory(camera)]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_tum(path, trajectory, comment=f"camera '{camera}' optical frame in '{map_frame}', {describe_units}")
    except (OSError, ValueError) as error:
        return False, f"cannot write {path}: {error}", str(path)
    return True, (f"{len(trajectory)} keyframe poses of camera '{camera}' (its optical frame in '{map_frame}'), "
                  f"{describe_units}"), str(path)


def create_map_services(node, map_source: Callable[[], Optional[MapStage]], camera: str, map_frame: Callable[[], str],
                        units: Callable[[], str], guard, callback_group) -> list:
    """The two services on `node`; `map_source()` gives the current map (None while not configured)."""

    def on_save_map(request, response):
        response.success, response.message, response.path = save_map(map_source(), request.path, units(),
                                                                     map_frame())
        return response

    def on_save_trajectory(request, response):
        response.success, response.message, response.path = save_trajectory(map_source(), request.path, camera,
                                                                            units(), map_frame())
        return response

    def failed(request, response):
        response.success, response.message = False, "internal error; the node logged it and keeps running"
        return response

    return [
        node.create_service(SaveMap, "~/save_map", guard.wrap("save_map service", on_save_map, failed),
                            callback_group=callback_group),
        node.create_service(SaveTrajectory, "~/save_trajectory", guard.wrap(
            "save_trajectory service", on_save_trajectory, failed), callback_group=callback_group),
    ]
