"""Answer latency of the semantic path: time to first token and time per decoded token (random weights).

  bench_decode --views 1 --tokens 30          # full-size architecture, bf16, on cuda
  bench_decode --config tiny --device cpu     # quick check anywhere

The context is the official chat-with-reconstruction sequence for N 640x480 views: system prompt,
the geometry image block, one Qwen2-VL vision block per view (768 px), a 60-token question. Then
--tokens tokens are decoded (stop tokens disabled), per mode:
  static: static KV cache, the decode step replayed as a CUDA graph (the default on CUDA);
  eager:  one `append_text` step per token (the CPU path).
Reported: time to first token (prefill + first step; the first answer also captures the graph),
the median time per later token, the whole answer, and the bandwidth floor of a token: the bytes a
step must read (the semantic expert's weights, the LM head and the KV cache) over the bandwidth of
a large device-to-device copy measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from g2vlm_ros.cli.bench_model import build_model
from g2vlm_ros.model.chat import ChatTokens, GenerationConfig, chat_with_geometry
from g2vlm_ros.model.vision_preprocess import SEMANTIC_IMAGE_SIZE, vision_inputs


def copy_bandwidth(device: torch.device, gib: float = 2.0) -> float:
    """Bytes read plus bytes written per second of a large device-to-device copy."""
    source = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=device).random_()
    target = torch.empty_like(source)
    for _ in range(3):
        target.copy_(source)
    torch.cuda.synchronize(device)
    samples = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        target.copy_(source)
        end.record()
        torch.cuda.synchronize(device)
        samples.append(start.elapsed_time(end) * 1e-3)
    return 2 * source.numel() / statistics.median(samples)


def bytes_per_token(model, context: int) -> int:
    """What one decode step must read: every semantic-expert weight of the stack, the final norm
    and the LM head once, one embedding row, and the keys and values of the context."""
    total = 0
    for name, parameter in model.language_model.named_parameters():
        if "_moe_geo" in name or name.endswith(("ls1.gamma", "ls2.gamma")):
            continue
        if name.endswith("embed_tokens.weight"):
            total += parameter.shape[1] * parameter.element_size()
            continue
        total += parameter.numel() * parameter.element_size()
    text = model.config.text
    total += 2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim * context * model.dtype.itemsize
    return total


def answer(model, geometry, vision, tokens, new_tokens: int, static: bool) -> dict:
    stamps = []

    def on_token(generated):
        stamps.append(time.perf_counter())
        return True

    config = GenerationConfig(max_new_tokens=new_tokens, stop_token_ids=(-1,))
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    started = time.perf_counter()
    result = chat_with_geometry(model, geometry, vision, tokens, config, on_token=on_token, static_cache=static)
    steps = np.diff(stamps) * 1e3
    return {"tokens": len(result.token_ids), "ttft_ms": (stamps[0] - started) * 1e3,
            "per_token_ms": float(np.median(steps)) if len(steps) else float("nan"),
            "answer_ms": (stamps[-1] - started) * 1e3}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("full", "tiny"), default="full")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--views", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=30)
    parser.add_argument("--eager-tokens", type=int, default=10, help="tokens for the eager comparison (0: skip)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    model = build_model(args.config, device, dtype, seed=0)
    vocab = model.config.text.vocab_size
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(args.views)]
    geometry = torch.rand(args.views, 3, 392, 518, device=device)
    vision = []
    for frame in frames:
        pixel_values, grid = vision_inputs([frame], size=SEMANTIC_IMAGE_SIZE)
        vision.append((pixel_values, grid[0].tolist()))
    special = {"bos_token_id": 151644 % vocab, "eos_token_id": 151645 % vocab,
               "start_of_image": 151652 % vocab, "end_of_image": 151653 % vocab}
    tokens = ChatTokens(system=[int(t) for t in rng.integers(0, vocab, 20)],
                        question=[int(t) for t in rng.integers(0, vocab, 60)], start=198 % vocab, special=special)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    bandwidth = copy_bandwidth(device) if device.type == "cuda" else float("nan")
    print(f"{name}, torch {torch.__version__}, {args.config} G2VLM {args.dtype}, {args.views} view(s); "
          f"copy bandwidth {bandwidth / 1e12:.2f} TB/s", flush=True)
    rows = []
    modes = [("static", True)] + ([("eager", False)] if args.eager_tokens else [])
    for mode, static in modes:
        count = args.tokens if static else args.eager_tokens
        runs = [answer(model, geometry, vision, tokens, count, static) for _ in range(args.repeats)]
        first, warm = runs[0], runs[1:] or runs
        row = {"mode": mode, "tokens": count, "first_ttft_ms": first["ttft_ms"],
               "ttft_ms": statistics.median(r["ttft_ms"] for r in warm),
               "per_token_ms": statistics.median(r["per_token_ms"] for r in warm),
               "answer_ms": statistics.median(r["answer_ms"] for r in warm)}
        rows.append(row)
        print(f"  {mode}: {row}", flush=True)
    context = 0
    from g2vlm_ros.model.decode import StaticDecoder
    for decoder in model.__dict__.get("_static_decoders", {}).values():
        if isinstance(decoder, StaticDecoder):
            context = max(context, decoder.length)
    floor_ms = bytes_per_token(model, context) / bandwidth * 1e3
    print(f"\ncontext {context} tokens; bytes per token {bytes_per_token(model, context) / 2**30:.2f} GiB; "
          f"bandwidth floor {floor_ms:.2f} ms per token")
    print(f"{'mode':<8} {'tokens':>6} {'TTFT ms (first)':>16} {'TTFT ms':>8} {'ms/token':>9} {'x floor':>8} "
          f"{'answer ms':>10}")
    for row in rows:
        print(f"{row['mode']:<8} {row['tokens']:>6} {row['first_ttft_ms']:>16.1f} {row['ttft_ms']:>8.1f} "
              f"{row['per_token_ms']:>9.2f} {row['per_token_ms'] / floor_ms:>8.1f} {row['answer_ms']:>10.1f}")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "context": context,
                                         "copy_bandwidth": bandwidth, "floor_ms": floor_ms, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
