"""Packing and ray casting of the procedural scenes (g2vlm_ros.training.scenes) on the device, in float32.

Split from the scene sampling so that each module reads whole: scenes.py draws the parameters and defines the
table layouts; this module packs them into tables and casts one ray per pixel against them.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from g2vlm_ros.training.scenes import (  # the table layouts are defined beside the parameters they hold
    _DETAIL_WAVES,
    _G_COS,
    _G_CX,
    _G_CY,
    _G_CZ,
    _G_HX,
    _G_HY,
    _G_HZ,
    _G_KIND,
    _G_SIN,
    _GEOM_FIELDS,
    _GEOM_ROWS,
    _KIND_BOX,
    _KIND_ROOM,
    _KIND_SPHERE,
    _NOISE_WAVES,
    _PARKED_CENTER,
    _T_A,
    _T_B,
    _T_CHECK,
    _T_DETAIL,
    _T_DETAIL_AMP,
    _T_NOISE,
    _T_STRIPE,
    _T_W,
    _TEX_FIELDS,
    _TEX_ROWS,
    MAX_OBJECTS,
    SceneBatch,
    SceneSpec,
)


def _pack(specs: list[SceneSpec]) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Geometry table [B, _GEOM_ROWS, _GEOM_FIELDS], texture table [B, _TEX_ROWS, _TEX_FIELDS], slots in use."""
    geometry = np.zeros((len(specs), _GEOM_ROWS, _GEOM_FIELDS))
    geometry[:, :, _G_COS] = 1.0
    geometry[:, :, _G_HX:_G_HZ + 1] = 1.0
    geometry[:, :, _G_CX:_G_CZ + 1] = _PARKED_CENTER
    geometry[:, 1:1 + MAX_OBJECTS, _G_KIND] = _KIND_BOX
    geometry[:, 1 + MAX_OBJECTS:, _G_KIND] = _KIND_SPHERE
    for b, spec in enumerate(specs):
        geometry[b, 0, _G_CX:_G_CZ + 1] = (0.0, -spec.room_half[1], 0.0)
        geometry[b, 0, _G_HX:_G_HZ + 1] = spec.room_half
        geometry[b, 0, _G_KIND] = _KIND_ROOM
        for i, (center, half, yaw) in enumerate(zip(spec.box_centers, spec.box_halves, spec.box_yaws, strict=True)):
            geometry[b, 1 + i, :_G_KIND] = (*center, math.cos(yaw), math.sin(yaw), *half)
        for i, (center, radius) in enumerate(zip(spec.sphere_centers, spec.sphere_radii, strict=True)):
            geometry[b, 1 + MAX_OBJECTS + i, :_G_KIND] = (*center, 1.0, 0.0, radius, radius, radius)
    textures = np.stack([spec.textures for spec in specs])
    max_boxes = max(len(spec.box_yaws) for spec in specs)
    max_spheres = max(len(spec.sphere_radii) for spec in specs)
    return geometry, textures, max_boxes, max_spheres


def render(specs: list[SceneSpec], views: int, height: int, width: int, device: torch.device) -> SceneBatch:
    batch = len(specs)
    n = batch * views
    f32 = dict(dtype=torch.float32, device=device)
    geometry_np, textures_np, max_boxes, max_spheres = _pack(specs)

    pose = torch.tensor(np.stack([s.camera_to_world for s in specs]), dtype=torch.float64).reshape(n, 4, 4)
    focal = torch.tensor([s.focal_scale * width for s in specs], dtype=torch.float64).repeat_interleave(views)
    intrinsics = torch.zeros(n, 3, 3, dtype=torch.float64)
    intrinsics[:, 0, 0] = focal
    intrinsics[:, 1, 1] = focal
    intrinsics[:, 0, 2] = (width - 1) / 2.0
    intrinsics[:, 1, 2] = (height - 1) / 2.0
    intrinsics[:, 2, 2] = 1.0

    # Per-camera scalars are [n, 1, 1] so they broadcast over the [n, H, W] pixel tensors.
    def per_camera(values) -> torch.Tensor:
        return torch.as_tensor(values, dtype=torch.float64).reshape(n, 1, 1).to(**f32)

    geometry = torch.tensor(geometry_np, dtype=torch.float64).repeat_interleave(views, dim=0)  # [n, rows, fields]
    rot = pose[:, :3, :3]
    origin = [per_camera(pose[:, i, 3]) for i in range(3)]

    # Ray through each pixel centre with camera-frame direction ((u - cx) / f, (v - cy) / f, 1): its parameter t
    # is then directly the camera-frame depth z of the hit.
    cols = torch.arange(width, **f32).reshape(1, 1, width)
    rows = torch.arange(height, **f32).reshape(1, height, 1)
    inv_f = per_camera(1.0 / focal)
    dcx = (cols - (width - 1) / 2.0) * inv_f  # [n, 1, W]
    dcy = (rows - (height - 1) / 2.0) * inv_f  # [n, H, 1]
    r = [[per_camera(rot[:, i, j]) for j in range(3)] for i in range(3)]
    d = [dcx * r[i][0] + dcy * r[i][1] + r[i][2] for i in range(3)]  # world direction, [n, H, W] each

    inv_dy = torch.reciprocal(d[1])  # the y slab is shared by the room and all boxes (they only yaw)

    # Room: the camera is inside, so the hit is the nearest exit; per axis the exit is the larger slab parameter.
    # With d = +-0 the reciprocal is +-inf and the exit +inf, which is what a ray parallel to the slab needs.
    room = geometry[:, 0]
    best = None
    for axis, inv in ((0, torch.reciprocal(d[0])), (1, inv_dy), (2, torch.reciprocal(d[2]))):
        low = per_camera(room[:, _G_CX + axis] - room[:, _G_HX + axis] - pose[:, axis, 3])
        high = per_camera(room[:, _G_CX + axis] + room[:, _G_HX + axis] - pose[:, axis, 3])
        exit_t = torch.maximum(low * inv, high * inv)
        best = exit_t if best is None else torch.minimum(best, exit_t)
    surface = torch.zeros(best.shape, dtype=torch.long, device=device)  # geometry row of the nearest hit

    for slot in range(max_boxes):
        row = 1 + slot
        params = geometry[:, row]
        cos, sin = per_camera(params[:, _G_COS]), per_camera(params[:, _G_SIN])
        rel = pose[:, :3, 3] - params[:, _G_CX:_G_CZ + 1]
        local_o = (params[:, _G_COS] * rel[:, 0] - params[:, _G_SIN] * rel[:, 2], rel[:, 1],
                   params[:, _G_SIN] * rel[:, 0] + params[:, _G_COS] * rel[:, 2])
        inv_local = (torch.reciprocal(cos * d[0] - sin * d[2]), inv_dy, torch.reciprocal(sin * d[0] + cos * d[2]))
        near = far = None
        for axis in range(3):
            half = params[:, _G_HX + axis]
            t1 = per_camera(-half - local_o[axis]) * inv_local[axis]
            t2 = per_camera(half - local_o[axis]) * inv_local[axis]
            lo, hi = torch.minimum(t1, t2), torch.maximum(t1, t2)
            near = lo if near is None else torch.maximum(near, lo)
            far = hi if far is None else torch.minimum(far, hi)
        # The camera is never inside a box, so a hit is the entry point, in front of the camera and before any
        # hit found so far.
        better = (near <= far) & (near > 0) & (near < best)
        best = torch.where(better, near, best)
        surface = torch.where(better, row, surface)

    if max_spheres:
        dd = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    for slot in range(max_spheres):
        row = 1 + MAX_OBJECTS + slot
        params = geometry[:, row]
        oc = pose[:, :3, 3] - params[:, _G_CX:_G_CZ + 1]
        c = per_camera((oc * oc).sum(dim=1) - params[:, _G_HX] ** 2)  # > 0: the camera is outside
        b = d[0] * per_camera(oc[:, 0]) + d[1] * per_camera(oc[:, 1]) + d[2] * per_camera(oc[:, 2])
        # Nearer root of dd t^2 + 2 b t + c = 0. The discriminant is clamped rather than left to give NaN on a
        # miss: NaN arithmetic is several times slower on CPUs.
        disc = b * b - dd * c
        t = -(b + torch.sqrt(disc.clamp(min=0.0))) / dd
        better = (disc >= 0) & (t > 0) & (t < best)
        best = torch.where(better, t, best)
        surface = torch.where(better, row, surface)

    points = [origin[i] + best * d[i] for i in range(3)]
    images = _shade(specs, points, surface, geometry, textures_np, views, device)

    shape = (batch, views, height, width)
    return SceneBatch(
        images=images.reshape(batch, views, 3, height, width),
        depth=best.reshape(shape),
        points=torch.stack(points, dim=-1).reshape(*shape, 3),
        intrinsics=intrinsics.to(**f32).reshape(batch, views, 3, 3),
        camera_to_world=pose.to(**f32).reshape(batch, views, 4, 4))


def _shade(specs: list[SceneSpec], points: list[torch.Tensor], surface: torch.Tensor, geometry: torch.Tensor,
           textures_np: np.ndarray, views: int, device: torch.device) -> torch.Tensor:
    """Lambertian shading of the textured hit points -> images [n, 3, H, W]."""
    n = surface.shape[0]
    f32 = dict(dtype=torch.float32, device=device)
    camera = torch.arange(n, device=device).reshape(n, 1, 1)

    # Per-pixel geometry of the hit surface, looked up by (camera, geometry row).
    geom_table = geometry.reshape(n * _GEOM_ROWS, _GEOM_FIELDS).t().contiguous().to(**f32)
    geom_index = camera * _GEOM_ROWS + surface

    def g(field: int) -> torch.Tensor:
        return torch.take(geom_table[field], geom_index)  # take: a flat gather, faster than indexing on CPU

    cos, sin = g(_G_COS), g(_G_SIN)
    rx, ry, rz = points[0] - g(_G_CX), points[1] - g(_G_CY), points[2] - g(_G_CZ)
    local = (cos * rx - sin * rz, ry, sin * rx + cos * rz)  # hit point in the surface's frame
    kind = g(_G_KIND)
    is_sphere = kind == _KIND_SPHERE
    half = (g(_G_HX), g(_G_HY), g(_G_HZ))

    # Planar faces: the face is the axis on which the hit point lies on the box boundary (|local| / half = 1).
    ratio = [local[i].abs() / half[i] for i in range(3)]
    on_x = (ratio[0] >= ratio[1]) & (ratio[0] >= ratio[2])
    on_y = ~on_x & (ratio[1] >= ratio[2])
    on_z = ~(on_x | on_y)
    outward = torch.where(kind == _KIND_ROOM, -1.0, 1.0)  # the room is seen from inside
    normal_local = []
    coords = []
    for axis, on in enumerate((on_x, on_y, on_z)):
        planar = on.float() * torch.sign(local[axis]) * outward
        normal_local.append(torch.where(is_sphere, local[axis] / half[0], planar))
        # Texture coordinate: the local hit point, with the coordinate across a planar face fixed at 0.
        coords.append(torch.where(on & ~is_sphere, 0.0, local[axis]))
    normal = (cos * normal_local[0] + sin * normal_local[2], normal_local[1],
              -sin * normal_local[0] + cos * normal_local[2])

    # Texture row: room faces by side (x-, x+, y-, y+, z-, z+), objects by slot.
    face_axis = on_y.long() + 2 * on_z.long()
    on_positive = torch.where(on_x, local[0], torch.where(on_y, local[1], local[2])) > 0
    room_row = 2 * face_axis + on_positive.long()
    tex_row = torch.where(surface == 0, room_row, surface + 5)  # geometry row 1 (box) -> 6, 7 (sphere) -> 12
    tex_table = torch.tensor(textures_np, dtype=torch.float64).reshape(-1, _TEX_FIELDS).t().contiguous().to(**f32)
    item = torch.div(camera, views, rounding_mode="floor")
    albedo = _texture(coords, tex_table, item * _TEX_ROWS + tex_row)

    lights = torch.tensor(np.stack([s.light_dirs for s in specs]), dtype=torch.float64).repeat_interleave(views, 0)
    power = torch.tensor(np.stack([s.light_intensity for s in specs]), dtype=torch.float64).repeat_interleave(views, 0)
    ambient = torch.tensor([s.ambient for s in specs], dtype=torch.float64).repeat_interleave(views)
    shade = ambient.reshape(n, 1, 1).to(**f32)
    for light in range(lights.shape[1]):
        lx, ly, lz = (lights[:, light, i].reshape(n, 1, 1).to(**f32) for i in range(3))
        facing = -(normal[0] * lx + normal[1] * ly + normal[2] * lz)
        shade = shade + power[:, light].reshape(n, 1, 1).to(**f32) * facing.clamp(min=0.0)
    return (albedo * shade.unsqueeze(1)).clamp(0.0, 1.0)


def _texture(coords: list[torch.Tensor], table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Procedural albedo at texture coordinates coords (3 x [n, H, W]) of texture rows `index` -> [n, 3, H, W]."""

    def t(field: int) -> torch.Tensor:
        return torch.take(table[field], index)

    x, y, z = coords

    def wave(start: int) -> torch.Tensor:
        return x * t(start) + y * t(start + 1) + z * t(start + 2) + t(start + 3)

    inv_cell = t(_T_CHECK)
    checker = (torch.floor(x * inv_cell + t(_T_CHECK + 1)) + torch.floor(y * inv_cell + t(_T_CHECK + 2))
               + torch.floor(z * inv_cell + t(_T_CHECK + 3)))
    checker = torch.remainder(checker, 2.0)
    stripes = torch.remainder(torch.floor(wave(_T_STRIPE)), 2.0)
    noise = sum(torch.sin(wave(_T_NOISE + 4 * w)) for w in range(_NOISE_WAVES))
    noise = (0.5 + noise * (0.5 / 2.0)).clamp(0.0, 1.0)  # 4 unit waves: std ~1.4, so most values stay unclipped
    mix = t(_T_W) * checker + t(_T_W + 1) * stripes + t(_T_W + 2) * noise
    detail = 1.0 + t(_T_DETAIL_AMP) * sum(torch.sin(wave(_T_DETAIL + 4 * w)) for w in range(_DETAIL_WAVES))
    channels = []
    for c in range(3):
        a = t(_T_A + c)
        channels.append((a + (t(_T_B + c) - a) * mix) * detail)
    return torch.stack(channels, dim=1)
