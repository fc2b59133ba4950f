"""Our G2VLM against outputs the official implementation produced (../shared/parity/tiny_recon)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PARITY, SHARED
from g2vlm_ros.model import load_checkpoint, preprocess

pytestmark = pytest.mark.skipif(not PARITY.is_dir(), reason="../shared/parity is not present")


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


@pytest.fixture(scope="module")
def fixture():
    return json.loads((PARITY / "fixture.json").read_text()), np.load(PARITY / "recon_outputs.npz")


def test_reconstruction_matches_the_official_outputs(fixture):
    spec, reference = fixture
    model = load_checkpoint(PARITY, device="cpu", dtype=torch.float32)
    out = model.reconstruct(torch.from_numpy(reference["images"][0]), prefix_token_ids=spec["prompt_token_ids"],
                            special_token_ids=spec["special_token_ids"])
    for key in ("local_points", "points", "global_points", "camera_poses"):
        ours, expected = out[key].numpy(), reference[key][0]
        assert ours.shape == expected.shape, key
        assert relative_error(ours, expected) < 1e-5, f"{key}: relative error {relative_error(ours, expected):.2e}"
    np.testing.assert_array_equal(out["depth"].numpy(), out["local_points"][..., 2].numpy())
    assert out["intrinsics"].shape == (2, 3, 3) and "conf" not in out  # the release has no confidence head


def test_preprocessing_of_the_original_frames_matches_the_official_images(fixture):
    spec, reference = fixture
    frames = [np.asarray(Image.open(SHARED / "data" / "arkitscenes" / name).convert("RGB")) for name in spec["images"]]
    images = preprocess(frames)
    assert tuple(images.shape) == tuple(spec["outputs"]["images"][1:])
    np.testing.assert_allclose(images.numpy(), reference["images"][0], atol=1e-6, rtol=0)
