"""A window's post-processing split at the host: poses solved on the host, the rest on the device, eager or
captured as a CUDA graph (backends/window_post.py). The captured half runs only where CUDA is available."""
import pytest
import torch

from g2vlm_ros.backends.window_post import CapturedPost, confidence_source, eager_post, finish_window, host_poses
from g2vlm_ros.geometry.window_frame import anchor_to_first_camera, head_agreement_confidence
from g2vlm_ros.model.g2vlm import Reconstruction


def raw_outputs(views: int = 3, height: int = 6, width: int = 8, seed: int = 0, device: str = "cpu",
                conf: bool = False) -> dict[str, torch.Tensor]:
    """Raw head outputs of a plausible window: rotations near the identity, points in front of the camera."""
    generator = torch.Generator().manual_seed(seed)
    local = torch.randn(views, height, width, 3, generator=generator)
    local[..., 2] = local[..., 2].abs() + 1.0
    raw = {"rotation_raw": torch.eye(3) + 0.3 * torch.randn(views, 3, 3, generator=generator),
           "translation": torch.randn(views, 3, generator=generator),
           "local_points": local,
           "global_points": local + 0.05 * torch.randn(views, height, width, 3, generator=generator),
           "descriptor": torch.nn.functional.normalize(torch.randn(views, 5, generator=generator), dim=-1)}
    if conf:
        raw["conf"] = torch.randn(views, height, width, generator=generator)
    return {name: tensor.to(device) for name, tensor in raw.items()}


def test_host_poses_are_rotations_and_the_first_inverse_undoes_the_first_pose():
    raw = raw_outputs()
    poses, first_inverse = host_poses(raw["rotation_raw"], raw["translation"])
    rotations = poses[:, :3, :3].double()
    torch.testing.assert_close(rotations @ rotations.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(3, 3, 3),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rotations), torch.ones(3, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(poses[:, :3, 3], raw["translation"])
    torch.testing.assert_close(first_inverse[0] @ poses[0], torch.eye(4), atol=1e-6, rtol=0)
    # the same rotation as the model's own pose matrix (the path that matches the official outputs)
    torch.testing.assert_close(poses, Reconstruction.from_raw(raw).camera_poses, atol=1e-6, rtol=0)


def test_eager_post_is_the_reconstruction_anchored_to_the_first_camera():
    raw = raw_outputs()
    outputs = eager_post(raw)
    reference = Reconstruction.from_raw(raw)
    anchored, world_points = anchor_to_first_camera(reference.camera_poses, reference.points)
    torch.testing.assert_close(outputs["camera_to_world"], anchored, atol=1e-5, rtol=0)
    torch.testing.assert_close(outputs["world_points"], world_points, atol=1e-5, rtol=0)
    torch.testing.assert_close(outputs["intrinsics"], reference.intrinsics)
    torch.testing.assert_close(outputs["depth"], raw["local_points"][..., 2])
    torch.testing.assert_close(outputs["confidence"], head_agreement_confidence(
        world_points, raw["global_points"], reference.depth), atol=1e-5, rtol=0)
    assert outputs["descriptors"] is raw["descriptor"]
    assert confidence_source(raw) == "head_agreement"


def test_confidence_comes_from_the_head_where_there_is_one():
    raw = raw_outputs(conf=True)
    assert confidence_source(raw) == "head"
    torch.testing.assert_close(eager_post(raw)["confidence"], torch.sigmoid(raw["conf"]))


def test_the_device_part_never_reads_back_from_the_device():
    """finish_window must stay capturable: with poses given, none of its steps may copy to the host."""
    raw = raw_outputs()
    poses, first_inverse = host_poses(raw["rotation_raw"], raw["translation"])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        finish_window(raw, poses, first_inverse)
    names = {event.name for event in profile.events()}
    assert not names & {"aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::linalg_svd",
                        "aten::linalg_inv_ex"}, names


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_captured_post_replays_what_the_eager_post_computes_window_after_window():
    buffers = raw_outputs(device="cuda", seed=0)
    captured = CapturedPost(buffers, torch.device("cuda"))
    for seed in (1, 2, 3):  # new values in the same buffers, as the network graph's replay leaves them
        window = raw_outputs(device="cuda", seed=seed)
        for name, tensor in window.items():
            buffers[name].copy_(tensor)
        got, expected = captured(), eager_post(window)
        assert got.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(got[name], expected[name].float(), atol=1e-6, rtol=1e-6, msg=name)
    with pytest.raises(ValueError, match="captured with"):
        captured(raw_outputs(device="cuda"))
