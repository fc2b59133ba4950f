"""Latency and peak memory of the G2VLM geometry path (`reconstruct`), random weights.

  bench_model --views 1 2 4 8 --dtype bf16            # full-size architecture on cuda
  bench_model --config tiny --device cpu --views 1 2  # quick check anywhere

For each view count: median latency of `reconstruct` on [N,3,392,518] inputs (CUDA events after
warm-up), peak allocated memory, FLOPs counted by torch's FlopCounterMode, and the ratio of the
measured time to the compute floor (FLOPs / a bf16 8192^3 matmul's rate measured in the same run).
Prints a table; --json writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from g2vlm_ros.model import G2VLM, G2VLMConfig, tiny_config
from g2vlm_ros.model.checkpoint import randomize, resolve_dtype

SPECIAL = {"bos_token_id": 151644, "eos_token_id": 151645, "start_of_image": 151652, "end_of_image": 151653}
PROMPT_IDS = [693, 7596, 279, 220, 18, 35, 6109, 13]  # stands for "Reconstruct the 3D scene."


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device: torch.device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            samples.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - begin) * 1e3)
    return samples


def matmul_tflops(device: torch.device, dtype: torch.dtype, size: int) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    median = statistics.median(time_ms(lambda: a @ b, device, warmup=3, repeats=10))
    return 2 * size**3 / (median * 1e-3) / 1e12


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def build_model(config_name: str, device: torch.device, dtype: torch.dtype, seed: int) -> G2VLM:
    config = tiny_config() if config_name == "tiny" else G2VLMConfig()
    with torch.device("meta"):
        model = G2VLM(config)
    model = model.to_empty(device=device).to(dtype)
    return randomize(model, seed).eval().fuse_projections()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("full", "tiny"), default="full")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--views", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--height", type=int, default=392)
    parser.add_argument("--width", type=int, default=518)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    device, dtype = torch.device(args.device), resolve_dtype(args.dtype)
    torch.backends.cuda.matmul.allow_tf32 = False
    started = time.perf_counter()
    model = build_model(args.config, device, dtype, seed=0)
    synchronize(device)
    parameters = sum(p.numel() for p in model.parameters())
    weights_gib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    peak_rate = matmul_tflops(device, dtype, args.matmul_size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}, {args.config} G2VLM {parameters / 1e9:.2f} B parameters "
          f"({weights_gib:.2f} GiB {args.dtype}), built in {time.perf_counter() - started:.1f} s; "
          f"{args.dtype} matmul {args.matmul_size}^3: {peak_rate:.1f} TFLOP/s", flush=True)

    vocab = model.config.text.vocab_size  # the tiny config's vocabulary is smaller than Qwen2's ids
    special = {key: value % vocab for key, value in SPECIAL.items()}
    prompt = [value % vocab for value in PROMPT_IDS]
    rows = []
    for views in args.views:
        images = torch.rand(views, 3, args.height, args.width, device=device)

        def run(images=images):
            return model.reconstruct(images, prefix_token_ids=prompt, special_token_ids=special)

        out = run()
        finite = all(bool(torch.isfinite(t).all()) for t in out.values())
        flops = count_flops(run)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        samples = time_ms(run, device, args.warmup, args.repeats)
        peak_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        median = statistics.median(samples)
        floor_ms = flops / (peak_rate * 1e12) * 1e3
        rows.append({"views": views, "median_ms": median, "min_ms": min(samples), "max_ms": max(samples),
                     "tflop": flops / 1e12, "achieved_tflops": flops / (median * 1e-3) / 1e12,
                     "floor_ms": floor_ms, "ratio_to_floor": median / floor_ms, "peak_gib": peak_gib,
                     "finite": finite})
        print(f"  {views} view(s) done: {median:.1f} ms", flush=True)

    print(f"\n{'views':>5} {'median ms':>10} {'min..max ms':>15} {'TFLOP':>7} {'TFLOP/s':>8} "
          f"{'floor ms':>9} {'x floor':>8} {'peak GiB':>9}")
    for row in rows:
        print(f"{row['views']:>5} {row['median_ms']:>10.1f} {row['min_ms']:>7.1f}..{row['max_ms']:<7.1f} "
              f"{row['tflop']:>7.2f} {row['achieved_tflops']:>8.0f} {row['floor_ms']:>9.1f} "
              f"{row['ratio_to_floor']:>8.2f} {row['peak_gib']:>9.2f}" + ("" if row["finite"] else "  NON-FINITE"))
    if args.json:
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "config": args.config,
                                         "dtype": args.dtype, "parameters": parameters, "weights_gib": weights_gib,
                                         "matmul_tflops": peak_rate, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
