"""How bf16 heads would round the steps between views that the pose losses train on, for a checkpoint.

  python scripts/head_rounding.py g2vlm_ros/demo_model --batches 12 --views 2

Runs the training scenes' forward under bf16 autocast, as training on a GPU does, then the camera head on the
same decoder outputs twice: under autocast (bf16 outputs, as training ran before the heads were taken out of
it) and outside it (fp32, as the model runs them now and as inference always did). Prints how far rounding
turned each step from the first view (degrees), its error as a share of the step, and how many steps it
rounded to zero. A diagnostic behind docs/demo_model.md (run 9).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from g2vlm_ros.model import load_checkpoint
from g2vlm_ros.training.scenes import MOTIONS, render_scenes
from g2vlm_ros.training.train import PROMPT_IDS, SPECIAL

SCENES = 4  # per batch
HEIGHT, WIDTH = 392, 518  # the training resolution


def rounded_steps(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """images [B,V,3,H,W] -> the camera head's steps from each scene's first view [B,V-1,3], computed by a
    bf16 head and by an fp32 head on the same decoder outputs."""
    from g2vlm_ros.model.config import PATCH_SIZE
    from g2vlm_ros.model.rope import patch_grid_positions

    scenes, views, _, height, width = images.shape
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        tokens, _, _ = model.encode_geometry_tokens(images, model.prefix_cache(PROMPT_IDS, SPECIAL), SPECIAL)
        tokens = tokens.flatten(0, 1)
        positions = patch_grid_positions(tokens.shape[0], height // PATCH_SIZE, width // PATCH_SIZE, tokens.device)
        hidden = model.camera_decoder(tokens, positions)
        _, bf16 = model.camera_head(hidden)
        with torch.autocast("cpu", enabled=False):
            _, fp32 = model.camera_head(hidden)
    steps = []
    for translation in (bf16, fp32):
        translation = translation.double().view(scenes, views, 3)
        steps.append(translation[:, 1:] - translation[:, :1])
    return steps[0].flatten(0, 1), steps[1].flatten(0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--motion", choices=MOTIONS, default="mostly_forward")
    args = parser.parse_args()
    model = load_checkpoint(args.checkpoint, dtype=torch.float32).eval()
    rounded, exact = [], []
    for index in range(args.batches):
        batch = render_scenes(SCENES, args.views, HEIGHT, WIDTH, seed=424_000_001 + index,
                              device=torch.device("cpu"), motion=args.motion)
        bf16, fp32 = rounded_steps(model, batch.images)
        rounded.append(bf16)
        exact.append(fp32)
    rounded, exact = torch.cat(rounded), torch.cat(exact)
    zero = rounded.norm(dim=-1) == 0
    kept, truth = rounded[~zero], exact[~zero]
    cosine = (kept * truth).sum(-1) / (kept.norm(dim=-1) * truth.norm(dim=-1))
    angles = torch.rad2deg(torch.arccos(cosine.clamp(-1, 1))).numpy()
    step_error = ((kept - truth).norm(dim=-1) / truth.norm(dim=-1)).numpy()
    lengths = exact.norm(dim=-1).numpy()
    print(f"{len(exact)} steps of {lengths.min():.3f}-{lengths.max():.3f} units (median {np.median(lengths):.3f}); "
          f"rounded to zero: {int(zero.sum())}; turned by rounding: median {np.median(angles):.1f} deg, "
          f"90th percentile {np.percentile(angles, 90):.1f}, max {angles.max():.1f}; "
          f"error as a share of the step: median {np.median(step_error):.0%}")


if __name__ == "__main__":
    main()
