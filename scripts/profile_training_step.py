"""Where a demo-model training step spends its time (a check for a GPU machine, not a test).

  python3 scripts/profile_training_step.py

Times rendering, forward, losses, backward and the optimizer step separately (synchronised), at
the training resolution and a lower one, then prints the top CUDA kernels of one step.
"""
from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from g2vlm_ros.training.losses import LossWeights, scene_losses  # noqa: E402
from g2vlm_ros.training.scenes import render_scenes  # noqa: E402
from g2vlm_ros.training.train import build_model, geometry_forward  # noqa: E402


def timed(label: str, fn, results: dict):
    torch.cuda.synchronize()
    start = time.perf_counter()
    value = fn()
    torch.cuda.synchronize()
    results[label] = results.get(label, 0.0) + (time.perf_counter() - start) * 1e3
    return value


def step(model, optimizer, batch_size: int, views: int, height: int, width: int, seed: int, results: dict) -> None:
    batch = timed("render", lambda: render_scenes(batch_size, views, height, width, seed, "cuda"), results)
    optimizer.zero_grad(set_to_none=True)
    totals = []
    for item in range(batch_size):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            raw = timed("forward", lambda item=item: geometry_forward(model, batch.images[item]), results)
        parts = timed("losses", lambda raw=raw, item=item: scene_losses(
            raw, batch.camera_to_world[item], batch.depth[item], batch.intrinsics[item], LossWeights()), results)
        totals.append(parts["total"])
    timed("backward", lambda: torch.stack(totals).mean().backward(), results)
    timed("optimizer", lambda: optimizer.step(), results)


def main() -> int:
    model = build_model(torch.device("cuda"), 0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for height, width, batch_size, views in ((392, 518, 4, 4), (224, 294, 4, 4), (224, 294, 16, 4)):
        for warm in range(2):
            step(model, optimizer, batch_size, views, height, width, warm, {})
        results: dict[str, float] = {}
        repeats = 5
        for index in range(repeats):
            step(model, optimizer, batch_size, views, height, width, 100 + index, results)
        total = sum(results.values()) / repeats
        print(f"{height}x{width}, {batch_size} scenes x {views} views: {total:.0f} ms per step; "
              + ", ".join(f"{key} {value / repeats:.0f}" for key, value in results.items()), flush=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA,
                                            torch.profiler.ProfilerActivity.CPU]) as profiler:
        step(model, optimizer, 4, 4, 392, 518, 7, {})
    print(profiler.key_averages().table(sort_by="cuda_time_total", row_limit=15), flush=True)
    print(profiler.key_averages().table(sort_by="cpu_time_total", row_limit=12), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
