#!/usr/bin/env python3
"""A real CUDA out-of-memory through the node's own recovery path, on a GPU made small on purpose.

  python3 scripts/gpu_out_of_memory_check.py [--views 16]

Runs the embedded demo model on the torch backend in bf16. It first measures how much memory a
2-view and a 4-view window take, then caps this process's CUDA memory between the two
(torch.cuda.set_per_process_memory_fraction), which makes the GPU too small for 4 views or more.
A window of --views keyframes then goes through run_window() and InferenceHealth, the code the node
runs. Printed: the real error type and whether it was recognised, each retry, the window that
fitted, the memory in use before and after, and the same window again, now starting at the kept
limit.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from types import SimpleNamespace

import torch

from g2vlm_ros.backends.registry import DEMO_CHECKPOINT
from g2vlm_ros.backends.torch_backend import TorchBackend
from g2vlm_ros.pipeline.inference_health import InferenceHealth, is_out_of_memory, run_window
from g2vlm_ros.pipeline.windowing import Window
from g2vlm_ros.playback.frames import SyntheticSequence

MIB = 2 ** 20


def peak_mib(backend: TorchBackend, images) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    backend.run(images)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / MIB


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=16)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    backend = TorchBackend(str(DEMO_CHECKPOINT), "cuda", "bf16")
    images = [frame.rgb for frame in SyntheticSequence(views=max(args.views, 4)).frames][: args.views]
    two, four = peak_mib(backend, images[:2]), peak_mib(backend, images[:4])
    total = torch.cuda.get_device_properties(0).total_memory / MIB
    cap = (two + four) / 2
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(cap / total)
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}: peak {two:.0f} MiB for 2 views, {four:.0f} "
          f"MiB for 4; this process capped at {cap:.0f} MiB of {total:.0f}")

    try:
        backend.run(images)
        print(f"{args.views} views fitted under the cap: nothing to show", file=sys.stderr)
        return 1
    except Exception as error:  # the raw error, to show what the node's check sees
        print(f"a {args.views}-view window raises {type(error).__module__}.{type(error).__name__}; "
              f"recognised as out of memory: {is_out_of_memory(error)}")

    frames = [SimpleNamespace(rgb=image) for image in images]
    window = Window(frames=frames, cameras=["camera"], keyframes=len(frames), newest_stamp_ns=0, anchor_stamp_ns=0)
    health, retries = InferenceHealth("reduce_window"), []
    start = time.perf_counter()
    used, result = run_window(backend, window, health,
                              lambda before, after, error: retries.append(len(after.frames)))
    elapsed = time.perf_counter() - start
    print(f"run_window: {len(retries)} retries ({args.views} -> {' -> '.join(map(str, retries))} views) in "
          f"{elapsed:.2f} s; the result has {result.num_views} views, keyframe limit now {health.keyframe_limit}; "
          f"{torch.cuda.memory_allocated() / MIB:.0f} MiB allocated, {torch.cuda.memory_reserved() / MIB:.0f} "
          "MiB reserved after the retries")
    # The first result is dropped before the repeat: in the node the previous window's result stays on the GPU
    # while the next window runs, which under a cap this tight can cost one more keyframe.
    fitted = len(used.frames)
    del result, used
    gc.collect()
    again, result = run_window(backend, window, health, lambda *ignored: retries.append(-1))
    print(f"the same {args.views}-view window again: {len(again.frames)} views at once, "
          f"{'no' if -1 not in retries else 'a'} new out-of-memory")
    ok = 2 <= fitted < 4 and health.keyframe_limit == fitted and result.num_views == fitted and -1 not in retries
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
