"""Where a demo-model training step spends its time (a check for a GPU machine, not a test).

  python3 scripts/profile_training_step.py

Times rendering, forward, losses, backward and the optimizer step separately (synchronised) for
all scenes of a step in one batch (as train.py runs it) and, for reference in the same run, one
scene at a time (the first version); then prints the top CUDA kernels of one batched step.
"""
from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from g2vlm_ros.training.losses import LossWeights, batch_losses, scene_losses  # noqa: E402
from g2vlm_ros.training.scenes import render_scenes  # noqa: E402
from g2vlm_ros.training.train import build_model, geometry_forward  # noqa: E402


def timed(label: str, fn, results: dict):
    torch.cuda.synchronize()
    start = time.perf_counter()
    value = fn()
    torch.cuda.synchronize()
    results[label] = results.get(label, 0.0) + (time.perf_counter() - start) * 1e3
    return value


def step(model, optimizer, batch_size: int, views: int, height: int, width: int, seed: int, results: dict,
         batched: bool = True) -> None:
    batch = timed("render", lambda: render_scenes(batch_size, views, height, width, seed, "cuda"), results)
    optimizer.zero_grad(set_to_none=True)
    if batched:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            raw = timed("forward", lambda: geometry_forward(model, batch.images), results)
        total = timed("losses", lambda: batch_losses(raw, batch.camera_to_world, batch.depth, batch.intrinsics,
                                                      LossWeights())["total"], results)
    else:
        totals = []
        for item in range(batch_size):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                raw = timed("forward", lambda item=item: geometry_forward(model, batch.images[item]), results)
            parts = timed("losses", lambda raw=raw, item=item: scene_losses(
                raw, batch.camera_to_world[item], batch.depth[item], batch.intrinsics[item], LossWeights()), results)
            totals.append(parts["total"])
        total = torch.stack(totals).mean()
    timed("backward", lambda: total.backward(), results)
    timed("optimizer", lambda: optimizer.step(), results)


def main() -> int:
    model = build_model(torch.device("cuda"), 0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cases = ((4, False), (16, True), (32, True))
    for batch_size, batched in cases:
        height, width, views = 392, 518, 3
        for warm in range(2):
            step(model, optimizer, batch_size, views, height, width, warm, {}, batched)
        results: dict[str, float] = {}
        repeats = 5
        torch.cuda.reset_peak_memory_stats()
        for index in range(repeats):
            step(model, optimizer, batch_size, views, height, width, 100 + index, results, batched)
        total = sum(results.values()) / repeats
        print(f"{height}x{width}, {batch_size} scenes x {views} views, {'batched' if batched else 'one by one'}: "
              f"{total:.0f} ms per step, {total / batch_size:.1f} ms per scene, peak "
              f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB; "
              + ", ".join(f"{key} {value / repeats:.0f}" for key, value in results.items()), flush=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA,
                                            torch.profiler.ProfilerActivity.CPU]) as profiler:
        step(model, optimizer, 16, 3, 392, 518, 7, {})
    print(profiler.key_averages().table(sort_by="cuda_time_total", row_limit=15), flush=True)
    print(profiler.key_averages().table(sort_by="cpu_time_total", row_limit=12), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
