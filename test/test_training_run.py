"""The demo model's training script runs end to end (a few tiny CPU steps), saves a checkpoint in
the official layout that the node's loader reads, and resumes where it stopped."""
import json

import torch

from g2vlm_ros.backends.torch_backend import folder_token_ids
from g2vlm_ros.model import load_checkpoint
from g2vlm_ros.training import train

TINY_RUN = ["--batch", "1", "--views", "2", "--height", "56", "--width", "56", "--log-every", "1", "--device", "cpu",
            "--minutes", "5"]


def test_training_saves_a_loadable_checkpoint_and_resumes(tmp_path):
    # a snapshot at 0 minutes: after the first step, a loadable folder beside the run's own
    assert train.main(["--out", str(tmp_path), "--total-steps", "3", "--snapshot-minutes", "0",
                       "--direction-weight", "0.1", *TINY_RUN]) == 0
    load_checkpoint(tmp_path / "snapshot_0", device="cpu", dtype=torch.float32)
    log = [json.loads(line) for line in (tmp_path / "training_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(entry["total"])) for entry in log)
    assert all(entry["direction"] >= 0 for entry in log)
    assert train.main(["--out", str(tmp_path), "--total-steps", "5", "--resume", *TINY_RUN]) == 0
    log = [json.loads(line) for line in (tmp_path / "training_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3, 4, 5]
    assert torch.load(tmp_path / "train_state.pt", map_location="cpu")["step"] == 5

    model = load_checkpoint(tmp_path, device="cpu", dtype=torch.float32)  # strict: every key present and shaped
    prompt, special = folder_token_ids(tmp_path)
    images = torch.rand(2, 3, 56, 56)
    outputs = model.reconstruct(images, prompt, special)
    assert outputs["depth"].shape == (2, 56, 56) and torch.isfinite(outputs["depth"]).all()
