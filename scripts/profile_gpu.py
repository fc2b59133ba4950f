"""Where the GPU time goes: top kernels of one decode step and of one geometry forward, and the
host stages of an end-to-end window (full-size architecture, random weights, bf16, CUDA).

  PYTHONPATH=. python3 scripts/profile_gpu.py --decode --geometry --views 1 8 --stages

Decode: the static decoder's captured step, replayed under torch.profiler (kernels per step, GPU
time per step, top kernels) and timed with events (replay alone, and replay + argmax + host read
as the generation loop does). Geometry: one CUDA-graph replay of the torch backend's network under
the profiler (top kernels by GPU time). Stages: an end-to-end window split at synchronisation
points (preprocess, network, post-processing, the node's post-processing), and the copies an
end-to-end window cannot avoid, timed alone.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile


def top_kernels(prof, steps: int, count: int, title: str) -> None:
    totals, calls = defaultdict(float), defaultdict(int)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            name = event.name[:90]
            totals[name] += event.device_time_total if hasattr(event, "device_time_total") else event.cuda_time_total
            calls[name] += 1
    total = sum(totals.values())
    launches = sum(calls.values())
    print(f"\n== {title}: {total / steps / 1e3:.3f} ms GPU per step, {launches / steps:.0f} kernels per step")
    for name, micros in sorted(totals.items(), key=lambda kv: -kv[1])[:count]:
        print(f"  {micros / steps:9.1f} us {calls[name] / steps:6.1f}x {100 * micros / total:5.1f}%  {name}")


def event_ms(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end))
    return statistics.median(samples)


def profile_decode(model, args) -> None:
    from g2vlm_ros.cli.bench_decode import answer
    from g2vlm_ros.model.chat import ChatTokens
    from g2vlm_ros.model.decode import StaticDecoder
    from g2vlm_ros.model.vision_preprocess import SEMANTIC_IMAGE_SIZE, vision_inputs

    device = model.device
    vocab = model.config.text.vocab_size
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    geometry = torch.rand(1, 3, 392, 518, device=device)
    pixel_values, grid = vision_inputs([frame], size=SEMANTIC_IMAGE_SIZE)
    special = {"bos_token_id": 151644 % vocab, "eos_token_id": 151645 % vocab,
               "start_of_image": 151652 % vocab, "end_of_image": 151653 % vocab}
    tokens = ChatTokens(system=[int(t) for t in rng.integers(0, vocab, 20)],
                        question=[int(t) for t in rng.integers(0, vocab, 60)], start=198 % vocab, special=special)
    for _ in range(2):
        row = answer(model, geometry, [(pixel_values, grid[0].tolist())], tokens, 30, True)
    print(f"decode answer: {row}")
    decoder = next(d for d in model.__dict__["_static_decoders"].values() if isinstance(d, StaticDecoder))
    length = decoder.length

    def replay():
        decoder.graph.replay()

    def loop_step():  # what generate() does per token besides the replay
        decoder.token.fill_(int(torch.argmax(decoder.logits)))
        decoder.graph.replay()

    for fn, label in ((replay, "replay"), (loop_step, "replay + argmax + read")):
        decoder.slot.fill_(length - 20)
        ms = event_ms(lambda fn=fn: [fn() for _ in range(10)], 5) / 10
        print(f"decode step ({label}): {ms:.3f} ms")
    decoder.slot.fill_(length - 20)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            replay()
        torch.cuda.synchronize()
    top_kernels(prof, 10, args.top, "decode step")


def profile_geometry(model, args) -> None:
    from g2vlm_ros.backends.preprocess import prepare_images
    from g2vlm_ros.backends.torch_backend import TorchBackend
    from g2vlm_ros.cli.bench_backends import node_postprocess
    from g2vlm_ros.cli.bench_model import PROMPT_IDS, SPECIAL

    vocab = model.config.text.vocab_size
    special = {key: value % vocab for key, value in SPECIAL.items()}
    prompt = [value % vocab for value in PROMPT_IDS]
    backend = TorchBackend.from_model(model, prompt, special, "bf16", cuda_graphs=True)
    for views in args.views:
        rng = np.random.default_rng(views)
        frames = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(views)]
        batch, _ = prepare_images(frames, model.device)
        for _ in range(3):
            node_postprocess(backend.run(frames))
        torch.cuda.synchronize()
        model_ms = event_ms(lambda batch=batch: backend.raw_outputs(batch), 10)
        e2e_ms = event_ms(lambda frames=frames: node_postprocess(backend.run(frames)), 10)
        print(f"\n{views} view(s): model {model_ms:.2f} ms, end to end {e2e_ms:.2f} ms")
        if args.stages:
            stage_times(backend, frames, 10)
            transfer_times(views)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                backend.raw_outputs(batch)
            torch.cuda.synchronize()
        top_kernels(prof, 3, args.top, f"geometry forward, {views} view(s)")
        if args.ops:
            top_ops(backend, batch, args.top)
        if args.post:
            post_profile(backend, frames, args.top)
    backend._networks.clear()


def top_ops(backend, batch, count: int) -> None:
    """Eager forward of the same network: GPU time per PyTorch op and input shapes."""
    network = backend._network(__import__("g2vlm_ros.deploy.export", fromlist=["Bucket"]).Bucket(
        batch.shape[0], batch.shape[2], batch.shape[3]))
    with torch.no_grad():
        network(batch)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
            network(batch)
            torch.cuda.synchronize()
    table = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cuda_time_total", row_limit=count,
                                                               max_name_column_width=40, max_shapes_column_width=70)
    print(table)


def post_profile(backend, frames, count: int) -> None:
    """Host side of an end-to-end window after the network: CPU time per op."""
    from g2vlm_ros.cli.bench_backends import node_postprocess

    node_postprocess(backend.run(frames))
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        node_postprocess(backend.run(frames))
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=count, max_name_column_width=50))


def stage_times(backend, frames, repeats: int) -> None:
    """Host wall time of each stage of an end-to-end window (CUDA graphs), with a sync after each."""
    from g2vlm_ros.backends.backend import GeometryResult
    from g2vlm_ros.backends.preprocess import prepare_images
    from g2vlm_ros.backends.window_post import confidence_source
    from g2vlm_ros.cli.bench_backends import node_postprocess

    samples = defaultdict(list)
    for _ in range(repeats):
        torch.cuda.synchronize()
        marks = [time.perf_counter()]
        batch, colors = prepare_images(frames, backend.input_device)
        torch.cuda.synchronize()
        marks.append(time.perf_counter())
        with torch.no_grad():
            captured = backend._network_for(batch)
            raw = captured.replay(batch)
            torch.cuda.synchronize()
            marks.append(time.perf_counter())
            result = GeometryResult.from_outputs(captured.post(), colors, confidence_source(raw))
            torch.cuda.synchronize()
            marks.append(time.perf_counter())
        node_postprocess(result)
        marks.append(time.perf_counter())
        for name, a, b in zip(("preprocess", "network", "post (host pose, captured)", "node post"), marks[:-1],
                              marks[1:], strict=True):
            samples[name].append((b - a) * 1e3)
    print("  stages (ms, synced): " + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in samples.items()))


def transfer_times(views: int, repeats: int = 20) -> None:
    """The copies an end-to-end window cannot avoid, alone: frames stacked into page-locked memory and
    uploaded, and the host outputs of bench_backends' node post-processing (every view's depth at 640x480,
    its stride-2 cloud and colours) downloaded as that code does (pageable), and page-locked for comparison."""
    frames = [np.zeros((480, 640, 3), np.uint8) for _ in range(views)]
    pinned = torch.empty((views, 480, 640, 3), dtype=torch.uint8, pin_memory=True)
    depth = torch.zeros(views, 480, 640, device="cuda")
    cloud = torch.zeros(views * 196 * 259, 3, device="cuda")
    colors = torch.zeros(views * 196 * 259, 3, dtype=torch.uint8, device="cuda")
    outputs = (depth, cloud, colors)
    landing = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in outputs]

    def timed(fn) -> float:
        fn()
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - started) / repeats * 1e3

    stack = timed(lambda: np.stack(frames, out=pinned.numpy()))
    upload = timed(lambda: pinned.to("cuda", non_blocking=True))
    pageable = timed(lambda: [t.cpu() for t in outputs])
    locked = timed(lambda: [dst.copy_(t, non_blocking=True) for dst, t in zip(landing, outputs, strict=True)])
    megabytes = sum(t.numel() * t.element_size() for t in outputs) / 1e6
    print(f"  transfers, {views} view(s): stack {stack:.2f} ms + upload {upload:.2f} ms "
          f"({pinned.numel() / 1e6:.1f} MB); outputs {megabytes:.1f} MB down: pageable {pageable:.2f} ms, "
          f"page-locked {locked:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--decode", action="store_true")
    parser.add_argument("--geometry", action="store_true")
    parser.add_argument("--stages", action="store_true")
    parser.add_argument("--ops", action="store_true", help="eager per-op GPU time with shapes")
    parser.add_argument("--post", action="store_true", help="CPU profile of the end-to-end window")
    parser.add_argument("--views", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    from g2vlm_ros.cli.bench_model import build_model

    torch.backends.cuda.matmul.allow_tf32 = False
    model = build_model("full", torch.device("cuda"), torch.bfloat16, seed=0)
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    if args.decode:
        profile_decode(model, args)
    if args.geometry:
        profile_geometry(model, args)


if __name__ == "__main__":
    main()
