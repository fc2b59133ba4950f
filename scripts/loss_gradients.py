"""Gradient norm of each training-loss term on a few batches of the training scenes, for a checkpoint.

  python scripts/loss_gradients.py g2vlm_ros/demo_model --batches 3 [--autocast] [--motion mostly_forward]
      [--seed 424000007]   (with the shipped weights: a batch where bf16 heads rounded a step to zero)

Prints, per batch, each term's value and the norm of its gradient over all parameters, per unit weight, and
that of the other terms together (local + global + camera + 0.5 normal, as trained). A diagnostic for
choosing loss weights (docs/demo_model.md, run 9); --autocast runs the forward in bf16 as training on a GPU
does (CPU autocast here).
"""
from __future__ import annotations

import argparse
import time

import torch

from g2vlm_ros.model import load_checkpoint
from g2vlm_ros.training.losses import LossWeights, batch_losses
from g2vlm_ros.training.scenes import MOTIONS, render_scenes
from g2vlm_ros.training.train import geometry_forward


def gradient_norm(value: torch.Tensor, parameters: list[torch.Tensor]) -> float:
    grads = torch.autograd.grad(value, parameters, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--seed", type=int, default=777_000_001, help="the first batch's scene seed (then +1 each)")
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--motion", choices=MOTIONS, default="mostly_forward")
    parser.add_argument("--autocast", action="store_true")
    args = parser.parse_args()
    model = load_checkpoint(args.checkpoint, dtype=torch.float32)
    model.train()
    parameters = list(model.parameters())
    for parameter in parameters:
        parameter.requires_grad_(True)
    started = time.perf_counter()
    for index in range(args.batches):
        views = 2 + index % 3
        batch = render_scenes(args.scenes, views, 392, 518, seed=args.seed + index, device=torch.device("cpu"),
                              motion=args.motion)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast):
            raw = geometry_forward(model, batch.images)
        parts = batch_losses(raw, batch.camera_to_world, batch.depth, batch.intrinsics, LossWeights())
        others = parts["local"] + parts["global"] + parts["camera"] + 0.5 * parts["normal"]
        norms = {name: gradient_norm(parts[name], parameters) for name in ("local", "global", "camera", "normal",
                                                                            "direction")}
        print(f"batch {index} ({views} views): others {gradient_norm(others, parameters):.2f}; "
              + ", ".join(f"{name} {float(parts[name]):.3f} / {norm:.2f}" for name, norm in norms.items()),
              flush=True)
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
