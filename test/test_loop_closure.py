"""Loop closure (g2vlm_ros.mapping.loop_closure): descriptor candidates and geometric verification, on rendered rooms
with exact depth (g2vlm_ros.training). The verification window is what a perfect up-to-scale model with noise would
predict (own unit, 2 % depth noise, 1 degree rotation noise), so that the checks, not a model, are under test."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from g2vlm_ros.geometry.pinhole import backproject_depth
from g2vlm_ros.geometry.rotations import rotation_angle_deg
from g2vlm_ros.mapping.loop_closure import (
    IMAGE_DESCRIPTOR_MIN_SIMILARITY,
    LoopDetector,
    LoopSettings,
    image_descriptor,
    verify_loop,
)
from g2vlm_ros.training.scene_render import render
from g2vlm_ros.training.scenes import sample_scene

HEIGHT, WIDTH = 96, 128
STRIDE = 4  # the map keeps every 4th pixel of a keyframe, as a caller subsampling its points would
MAP_UNIT_M = 0.8  # the map is up to scale: one map unit is 0.8 m of the rendered world
WINDOW_UNIT_M = 0.37  # and the verification window has a unit of its own


def turn(yaw_rad: float) -> np.ndarray:
    c, s = np.cos(yaw_rad), np.sin(yaw_rad)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def moved(pose: np.ndarray, forward_m: float, right_m: float, yaw_deg: float) -> np.ndarray:
    """`pose` (camera-to-room) moved in its own frame and turned about its vertical (y) axis."""
    result = pose.copy()
    result[:3, 3] = pose[:3, 3] + pose[:3, :3] @ np.array([right_m, 0.0, forward_m])
    result[:3, :3] = pose[:3, :3] @ turn(np.radians(yaw_deg))
    return result


def room_views(seed: int, poses: list[np.ndarray] | None = None):
    """Renders views of room `seed` (its own sampled cameras unless `poses`) -> (images uint8, local points in
    metres [V,H,W,3], camera_to_room [V,4,4]). Poses near the sampled ones keep the renderer's clearances."""
    spec = sample_scene(seed, 0, 8)
    if poses is not None:
        spec = replace(spec, camera_to_world=np.stack(poses))
    batch = render([spec], len(spec.camera_to_world), HEIGHT, WIDTH, torch.device("cpu"))
    images = (batch.images[0].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    k = batch.intrinsics[0, 0].numpy().astype(np.float64)
    local = np.stack([backproject_depth(depth, k) for depth in batch.depth[0].numpy()])
    return images, local.astype(np.float64), spec.camera_to_world.copy()


def in_map(camera_to_room: np.ndarray, room_in_map_m=(0.0, 0.0, 0.0)) -> np.ndarray:
    """A camera pose in the map: the room placed at `room_in_map_m`, lengths in map units."""
    pose = camera_to_room.copy()
    pose[:3, 3] = (pose[:3, 3] + np.asarray(room_in_map_m)) / MAP_UNIT_M
    return pose


def stored(local_m: np.ndarray) -> np.ndarray:
    """A keyframe's points as the map keeps them: strided (block centres), map units."""
    return local_m[STRIDE // 2::STRIDE, STRIDE // 2::STRIDE] / MAP_UNIT_M


def model_window(candidate_local_m, current_local_m, relative_m: np.ndarray, seed: int = 0):
    """What an up-to-scale model predicts for the window [candidate, current] whose true relative pose (current
    camera in the candidate camera, metres) is `relative_m`: window unit, 2 % depth noise, 1 degree of rotation
    noise and 2 % of the baseline of translation noise."""
    rng = np.random.default_rng(seed)
    poses = np.tile(np.eye(4), (2, 1, 1))
    axis = rng.normal(size=3)
    angle = np.radians(1.0)
    k = np.cross(np.eye(3), axis / np.linalg.norm(axis))
    noise = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    poses[1, :3, :3] = relative_m[:3, :3] @ noise
    baseline = np.linalg.norm(relative_m[:3, 3])
    poses[1, :3, 3] = (relative_m[:3, 3] + 0.02 * baseline * rng.normal(size=3) / np.sqrt(3)) / WINDOW_UNIT_M
    points = np.stack((candidate_local_m, current_local_m)) / WINDOW_UNIT_M
    points = points * (1.0 + 0.02 * rng.normal(size=points.shape[:3]))[..., None]
    return poses, points.astype(np.float32)


def drifted(pose_in_map: np.ndarray, offset_map: float, yaw_deg: float) -> np.ndarray:
    """A chained estimate of `pose_in_map` that drifted by `offset_map` map units sideways and `yaw_deg`."""
    estimate = pose_in_map.copy()
    estimate[:3, 3] += np.array([offset_map, 0.0, 0.0])
    estimate[:3, :3] = turn(np.radians(yaw_deg)) @ estimate[:3, :3]
    return estimate


@pytest.fixture(scope="module")
def revisit():
    """Room 5: a keyframe and, much later, a view 0.25 m ahead, 0.1 m to the right, turned by 6 degrees."""
    _, _, sampled = room_views(5)
    candidate_pose = sampled[0]
    current_pose = moved(candidate_pose, 0.25, 0.1, 6.0)
    images, local, poses = room_views(5, [candidate_pose, current_pose])
    return images, local, poses


def test_a_true_revisit_is_accepted_with_the_right_relative_pose(revisit):
    _, local, poses = revisit
    relative_m = np.linalg.inv(poses[0]) @ poses[1]
    window_poses, window_points = model_window(local[0], local[1], relative_m)
    travelled = 20.0 / MAP_UNIT_M  # 20 m walked since the keyframe; chaining drifted by 0.4 m (2 %) and 2 degrees
    estimate = drifted(in_map(poses[1]), 0.4 / MAP_UNIT_M, 2.0)
    result = verify_loop(stored(local[0]), in_map(poses[0]), estimate, travelled, window_poses, window_points)
    assert result.accepted, result.reason
    assert result.scale == pytest.approx(WINDOW_UNIT_M / MAP_UNIT_M, rel=0.02)
    true_relative = relative_m.copy()
    true_relative[:3, 3] /= MAP_UNIT_M
    assert np.linalg.norm(result.relative_pose[:3, 3] - true_relative[:3, 3]) < 0.02 / MAP_UNIT_M
    assert rotation_angle_deg(result.relative_pose[:3, :3].T @ true_relative[:3, :3]) < 1.5
    assert result.inlier_fraction > 0.85 and result.overlap > 0.5
    # the correction undoes the drift
    assert result.correction.translation == pytest.approx(0.4 / MAP_UNIT_M, abs=0.05 / MAP_UNIT_M)
    assert result.correction.rotation_deg == pytest.approx(2.0, abs=1.2)
    verified = in_map(poses[0]) @ result.relative_pose
    np.testing.assert_allclose(result.correction.transform @ estimate, verified, atol=1e-9)


def test_an_identical_room_elsewhere_matches_by_descriptor_and_geometry_but_odometry_rejects_it(revisit):
    """Repeated textures at their worst: the same room, with the same textures, also stands 30 m further on. The
    current view is in that copy; its image equals what a revisit of the first room would show."""
    images, local, poses = revisit
    copy_at_m = (30.0, 0.0, 0.0)
    detector = LoopDetector()
    # no scene depth: the detector's own distance gate (tested below) would already skip a keyframe 30 m away;
    # without it, the descriptor proposes the copy and verification has to reject it
    detector.add(("cam", 0), image_descriptor(images[0]), in_map(poses[0])[:3, 3])
    for index, seed in enumerate(range(20, 32)):  # the walk from the first room to its copy
        other_images, _, other_poses = room_views(seed)
        detector.add(("cam", (index + 1) * 2_000_000_000), image_descriptor(other_images[index % 8]),
                     in_map(other_poses[index % 8], (2.5 * (index + 1), 0.0, 0.0))[:3, 3])
    current_in_map = in_map(poses[1], copy_at_m)  # where the robot really is, and chaining knows it within 2 %
    travelled = 34.0 / MAP_UNIT_M
    estimate = drifted(current_in_map, 0.5 / MAP_UNIT_M, 2.0)
    found = detector.candidates(("cam", 40_000_000_000), image_descriptor(images[1]), estimate[:3, 3],
                                lambda key: travelled, min_similarity=IMAGE_DESCRIPTOR_MIN_SIMILARITY)
    assert found and found[0].key == ("cam", 0), found  # the descriptor alone would close this loop
    # the model sees two images of identical rooms: it predicts the in-room motion
    window_poses, window_points = model_window(local[0], local[1], np.linalg.inv(poses[0]) @ poses[1])
    result = verify_loop(stored(local[0]), in_map(poses[0]), estimate, travelled, window_poses, window_points)
    assert not result.accepted and "odometry" in result.reason, result.reason
    settings = LoopSettings()
    assert result.scale_spread < settings.max_scale_spread and result.inlier_fraction > settings.min_inlier_fraction
    assert result.correction.translation > 20.0 / MAP_UNIT_M > result.correction.allowed_translation
    # the same window, had chaining put the robot back in the first room, is a loop: odometry made the difference
    back_home = drifted(in_map(poses[1]), 0.5 / MAP_UNIT_M, 2.0)
    assert verify_loop(stored(local[0]), in_map(poses[0]), back_home, travelled, window_poses,
                       window_points).accepted


def test_a_candidate_with_other_geometry_is_rejected_even_when_odometry_agrees(revisit):
    """Another room that a descriptor confused with the candidate; the model claims a small motion between them,
    and chaining happens to agree, so only the geometric check can reject it."""
    _, local, poses = revisit
    for other_seed in (6, 9, 13):
        _, other_local, _ = room_views(other_seed)
        claimed_m = np.linalg.inv(poses[0]) @ poses[1]
        window_poses, window_points = model_window(local[0], other_local[0], claimed_m)
        estimate = in_map(poses[0]) @ np.block([[claimed_m[:3, :3], claimed_m[:3, 3:] / MAP_UNIT_M],
                                                [np.zeros((1, 3)), np.ones((1, 1))]])
        result = verify_loop(stored(local[0]), in_map(poses[0]), estimate, 10.0, window_poses, window_points)
        assert not result.accepted, other_seed
        assert result.reason.startswith(("geometry disagrees", "too little overlap")), result.reason
        assert result.correction.translation < result.correction.allowed_translation  # (c) alone would pass it


def test_a_verification_window_whose_candidate_depth_does_not_fit_the_stored_one_is_rejected(revisit):
    _, local, poses = revisit
    _, other_local, _ = room_views(9)
    relative_m = np.linalg.inv(poses[0]) @ poses[1]
    window_poses, window_points = model_window(other_local[0], local[1], relative_m)
    result = verify_loop(stored(local[0]), in_map(poses[0]), in_map(poses[1]), 10.0, window_poses, window_points)
    assert not result.accepted and result.reason.startswith("inconsistent scale"), result.reason
    # low confidence everywhere: nothing is left to compare
    window_poses, window_points = model_window(local[0], local[1], relative_m)
    result = verify_loop(stored(local[0]), in_map(poses[0]), in_map(poses[1]), 10.0, window_poses, window_points,
                         window_confidence=np.full(window_points.shape[:3], 0.05, np.float32))
    assert not result.accepted and "too few valid pixels" in result.reason


def test_verification_refuses_malformed_input_with_a_clear_error(revisit):
    _, local, poses = revisit
    window_poses, window_points = model_window(local[0], local[1], np.eye(4))
    with pytest.raises(ValueError, match="2 views"):
        verify_loop(stored(local[0]), poses[0], poses[1], 1.0, window_poses[:1], window_points[:1])
    with pytest.raises(ValueError, match="distance_travelled"):
        verify_loop(stored(local[0]), poses[0], poses[1], float("nan"), window_poses, window_points)
    with pytest.raises(ValueError, match="candidate_points"):
        verify_loop(local[0, :, :, 2], poses[0], poses[1], 1.0, window_poses, window_points)


def unit(vector) -> np.ndarray:
    vector = np.asarray(vector, np.float32)
    return vector / np.linalg.norm(vector)


def test_detector_skips_recent_keyframes_and_ranks_the_rest():
    rng = np.random.default_rng(1)
    place = unit(rng.normal(size=16))
    detector = LoopDetector(LoopSettings(max_candidates=2))
    for index in range(30):
        # keyframes 3, 5 and 27 show the place (27 is too recent), with decreasing fidelity for 3 and 5
        noise = {3: 0.05, 5: 0.2, 27: 0.0}.get(index)
        descriptor = place + noise * rng.normal(size=16) if noise is not None else rng.normal(size=16)
        detector.add(("cam", index * 1_000_000_000), unit(descriptor), np.zeros(3))
    found = detector.candidates(("cam", 30_000_000_000), place, np.zeros(3), lambda key: 5.0,
                                min_similarity=0.5)
    assert [candidate.key[1] // 1_000_000_000 for candidate in found] == [3, 5]
    assert found[0].similarity > found[1].similarity > 0.5 and found[0].keyframe_separation == 27
    # seconds count as well as keyframes: 30 keyframes within 3 s are all too recent
    quick = LoopDetector()
    for index in range(30):
        quick.add(("cam", index * 100_000_000), place, np.zeros(3))
    assert quick.candidates(("cam", 3_000_000_000), place, np.zeros(3), lambda key: 5.0) == []


def test_detector_skips_keyframes_too_far_to_be_the_same_place_and_refuses_mixed_descriptors():
    rng = np.random.default_rng(2)
    place = unit(rng.normal(size=8))
    detector = LoopDetector()
    detector.add(("cam", 0), place, np.array([0.0, 0.0, 0.0]), scene_depth=2.0)
    detector.add(("cam", 1), place, np.array([50.0, 0.0, 0.0]), scene_depth=2.0)
    for index in range(2, 20):
        detector.add(("cam", index * 1_000_000_000), unit(rng.normal(size=8)), np.zeros(3))
    # at x = 49 after 40 units of travel: 5 % drift + 2.15 depths reach 6.3 units, so only keyframe 1 is close
    found = detector.candidates(("cam", 60_000_000_000), place, np.array([49.0, 0.0, 0.0]), lambda key: 40.0)
    assert [candidate.key for candidate in found] == [("cam", 1)]
    with pytest.raises(ValueError, match="cannot be mixed"):
        detector.add(("cam", 99), np.ones(4), np.zeros(3))
    with pytest.raises(ValueError, match="non-zero"):
        detector.add(("cam", 100), np.zeros(8), np.zeros(3))
    with pytest.raises(ValueError, match="already"):
        detector.add(("cam", 0), place, np.zeros(3))
    detector.remove(("cam", 1))
    assert len(detector) == 19


def test_image_descriptor_is_normalized_and_exposure_invariant_in_its_thumbnail():
    images, _, _ = room_views(3)
    descriptor = image_descriptor(images[0])
    assert descriptor.dtype == np.float32 and descriptor.shape == (4 * 4 + 4 ** 3,)
    assert np.linalg.norm(descriptor) == pytest.approx(1.0, abs=1e-6)
    darker = (images[0] * 0.8).astype(np.uint8)
    # the thumbnail part (mean removed, contrast normalized) does not change; the histogram part may
    thumb, thumb_dark = descriptor[:16], image_descriptor(darker)[:16]
    assert float(unit(thumb) @ unit(thumb_dark)) > 0.99
    with pytest.raises(ValueError):
        image_descriptor(images[0][..., 0])


# ---------------------------------------------------------------------------------------------------------------
# descriptors from the model (torch backend, tiny random checkpoint)


@pytest.fixture(scope="module")
def torch_backend(tiny_checkpoint, tmp_path_factory):
    from test_backends import IDS

    from g2vlm_ros.backends.torch_backend import TorchBackend

    folder = tmp_path_factory.mktemp("loops") / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "token_ids.json").write_text(json.dumps(IDS))
    return TorchBackend(str(folder), device="cpu", precision="fp32")


def test_torch_backend_descriptors_are_normalized_deterministic_and_closer_for_the_same_place(torch_backend,
                                                                                              revisit):
    images, _, poses = revisit
    other_room, _, _ = room_views(9)
    _, _, sampled = room_views(5)
    facing_away, _, _ = room_views(5, [moved(sampled[0], 0.0, 0.0, 180.0)])
    window = [images[0], images[1], other_room[0], facing_away[0]]
    first = torch_backend.run(window)
    first.validate()
    descriptors = first.descriptors
    assert descriptors.dtype == torch.float32 and descriptors.shape == (4, torch_backend.model.config.dino.hidden_size)
    torch.testing.assert_close(torch.linalg.vector_norm(descriptors, dim=1), torch.ones(4))
    torch.testing.assert_close(torch_backend.run(window).descriptors, descriptors, rtol=0, atol=0)
    similarity = (descriptors @ descriptors[0]).tolist()
    # the revisit is closer to the keyframe than another room or the same room seen from the opposite side
    assert similarity[1] > similarity[2] and similarity[1] > similarity[3], similarity
    # validate() checks descriptors that a backend fills in
    with pytest.raises(ValueError, match="unit L2 norm"):
        replace(first, descriptors=descriptors * 2).validate()
    with pytest.raises(ValueError, match="descriptors has shape"):
        replace(first, descriptors=descriptors[:3]).validate()
