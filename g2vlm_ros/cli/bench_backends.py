"""End-to-end latency of the inference backends on camera-sized frames (random weights).

  bench_backends --views 1 2 4 8 --precisions bf16 fp16          # torch eager + CUDA graphs, on cuda
  bench_backends --config tiny --device cpu --ort --views 1 2    # anywhere, with ONNX Runtime (CPU)

For each backend, precision and view count: median over --repeats runs after warm-up of
  end-to-end: 640x480 uint8 frames -> preprocessing -> model -> post-processing as the node does it
              (SVD pose, world points, depth resampled to 640x480, cloud points selected) -> host;
  node e2e:   the same frames -> backend.run -> the node's own post-processing (pipeline.postprocess.
              window_outputs with the node's default output parameters: the newest view's depth and
              confidence at 640x480, intrinsics, poses, the cloud of every view at stride 2) -> host;
              the frames are one camera's window, as with the node's default single camera;
  model:      the network alone on a preprocessed batch.
Ratios use the compute floor: FLOPs of the geometry path / a bf16 8192^3 matmul measured in the run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from g2vlm_ros.backends.preprocess import prepare_images
from g2vlm_ros.cli.bench_model import PROMPT_IDS, SPECIAL, build_model, count_flops, matmul_tflops, time_ms
from g2vlm_ros.geometry.pinhole import resize_nearest
from g2vlm_ros.model.checkpoint import TORCH_DTYPES
from g2vlm_ros.precision import PRECISIONS

CAMERA_W, CAMERA_H = 640, 480


def node_postprocess(result, stride: int = 2) -> int:
    """What the node does with a result, minus message packing: every view's depth resampled to the
    camera size, its finite strided points with their colours, the poses; on the host. All views
    at once (one copy per output, one wait for the point selection). Returns the element count."""
    depth = resize_nearest(result.depth.permute(1, 2, 0), CAMERA_W, CAMERA_H).permute(2, 0, 1)
    points = result.world_points[:, ::stride, ::stride].reshape(-1, 3)
    keep = torch.isfinite(points).all(dim=1).nonzero()[:, 0]
    colors = result.colors[:, ::stride, ::stride].reshape(-1, 3).index_select(0, keep)
    cloud, colors, depth = points.index_select(0, keep).cpu().numpy(), colors.cpu().numpy(), depth.cpu().numpy()
    result.camera_to_world.cpu()
    return len(cloud) + len(colors) + depth.size


def node_outputs(frames: list[np.ndarray], result) -> int:
    """The node's post-processing of a window of one camera (pipeline.postprocess.window_outputs), its parameters
    at their defaults (cloud_stride 2, no voxel grid, no confidence threshold, no scale). Returns the cloud size."""
    from g2vlm_ros.pipeline.frame import Frame
    from g2vlm_ros.pipeline.postprocess import OutputPolicy, window_outputs

    window = [Frame("camera", "camera_optical", index, rgb) for index, rgb in enumerate(frames)]
    return len(window_outputs(window, result, OutputPolicy(None, cloud_stride=2), "camera").cloud.points)


def geometry_flops(model, views: int, prompt: list[int], special: dict[str, int]) -> float:
    images = torch.rand(views, 3, 392, 518, device=model.device)
    return count_flops(lambda: model.reconstruct(images, prompt, special))


def measure(backend, views: int, args, device: torch.device, floor_ms: float) -> dict:
    rng = np.random.default_rng(views)
    frames = [rng.integers(0, 255, (CAMERA_H, CAMERA_W, 3), dtype=np.uint8) for _ in range(views)]
    batch, _ = prepare_images(frames, device)
    end_to_end = time_ms(lambda: node_postprocess(backend.run(frames)), device, args.warmup, args.repeats)
    node_end_to_end = time_ms(lambda: node_outputs(frames, backend.run(frames)), device, args.warmup, args.repeats)
    model_only = time_ms(lambda: backend.raw_outputs(batch), device, args.warmup, args.repeats)
    e2e, model = statistics.median(end_to_end), statistics.median(model_only)
    # first window of this size: network build, warm-up and (CUDA graphs) capture
    warmup = getattr(backend, "warmup_seconds", {}).get(f"{batch.shape[0]}x{batch.shape[2]}x{batch.shape[3]}")
    return {"backend": backend.describe(), "views": views, "end_to_end_ms": e2e, "model_ms": model,
            "node_end_to_end_ms": statistics.median(node_end_to_end),
            "warmup_s": warmup,
            "floor_ms": floor_ms, "model_x_floor": model / floor_ms, "end_to_end_x_floor": e2e / floor_ms}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("full", "tiny"), default="full")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["bf16"])
    parser.add_argument("--views", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--ort", action="store_true", help="also ONNX Runtime (fp32 export of the same weights)")
    parser.add_argument("--ort-views", type=int, nargs="+", help="view counts for ONNX Runtime (default: --views)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from g2vlm_ros.backends.onnxruntime_backend import OnnxRuntimeBackend
    from g2vlm_ros.backends.torch_backend import TorchBackend
    from g2vlm_ros.deploy.export import Bucket, export_geometry_onnx

    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    peak = matmul_tflops(device, torch.bfloat16 if device.type == "cuda" else torch.float32,
                         8192 if device.type == "cuda" else 1024)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}, {args.config} G2VLM, matmul peak {peak:.1f} TFLOP/s", flush=True)
    rows, floors = [], {}
    for precision in args.precisions:
        model = build_model(args.config, device, TORCH_DTYPES[precision], seed=0)
        vocab = model.config.text.vocab_size
        special = {key: value % vocab for key, value in SPECIAL.items()}
        prompt = [value % vocab for value in PROMPT_IDS]
        for views in args.views:
            if views not in floors:
                floors[views] = geometry_flops(model, views, prompt, special) / (peak * 1e12) * 1e3
        modes = [False, True] if device.type == "cuda" else [False]
        for cuda_graphs in modes:
            backend = TorchBackend.from_model(model, prompt, special, precision, cuda_graphs=cuda_graphs)
            for views in args.views:
                try:
                    rows.append(measure(backend, views, args, device, floors[views]) | {"precision": precision})
                except RuntimeError as error:  # e.g. non-finite outputs reaching the pose SVD: report, go on
                    print(f"  {backend.describe():<34} {views} view(s): FAILED: {error}", flush=True)
                    continue
                print(f"  {rows[-1]['backend']:<34} {views} view(s): e2e {rows[-1]['end_to_end_ms']:.1f} ms, "
                      f"node e2e {rows[-1]['node_end_to_end_ms']:.1f} ms, model {rows[-1]['model_ms']:.1f} ms",
                      flush=True)
            backend._networks.clear()
        if args.ort and precision == args.precisions[0]:
            cpu_model = model.float().cpu()
            with tempfile.TemporaryDirectory() as folder:
                for views in args.ort_views or args.views:
                    export_geometry_onnx(cpu_model, Bucket(views, 392, 518), folder, prefix_token_ids=prompt,
                                         special_token_ids=special, model_hash="bench", external_data=True)
                ort_backend = OnnxRuntimeBackend(folder, "bench", device="cpu")
                for views in args.ort_views or args.views:
                    ort_args = argparse.Namespace(warmup=1, repeats=max(3, args.repeats // 3))
                    rows.append(measure(ort_backend, views, ort_args, torch.device("cpu"), floors[views])
                                | {"precision": "fp32"})
                    print(f"  {rows[-1]['backend']:<34} {views} view(s): e2e {rows[-1]['end_to_end_ms']:.1f} ms",
                          flush=True)
        model = None  # free the weights before the next precision
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print(f"\n{'backend':<40} {'prec':>5} {'views':>5} {'e2e ms':>9} {'node e2e':>9} {'model ms':>9} "
          f"{'floor ms':>9} {'model/floor':>11} {'e2e/floor':>9} {'warm-up s':>9}")
    for row in rows:
        print(f"{row['backend']:<40} {row['precision']:>5} {row['views']:>5} {row['end_to_end_ms']:>9.1f} "
              f"{row['node_end_to_end_ms']:>9.1f} "
              f"{row['model_ms']:>9.1f} {row['floor_ms']:>9.1f} {row['model_x_floor']:>11.2f} "
              f"{row['end_to_end_x_floor']:>9.2f} "
              + (f"{row['warmup_s']:>9.2f}" if row.get("warmup_s") is not None else f"{'-':>9}"))
    if args.json:
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "matmul_tflops": peak,
                                         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
