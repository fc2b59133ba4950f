"""Does the node's lifecycle cleanup give the GPU memory back? (a check for a GPU machine, not a test)

  python3 scripts/gpu_memory_release.py [--config full|tiny] [--views 2]

Mirrors PerceptionNode._release on the torch backend (eager, then CUDA graphs): build the model on
the GPU, run a window of 640x480 images, then drop the result, close the backend, drop every
reference, collect garbage and empty the CUDA cache. Prints allocated / reserved / device-free
memory at each step; the process's own CUDA context (a few hundred MiB) stays, by design.
"""
from __future__ import annotations

import argparse
import gc
import sys

import numpy as np
import torch

sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.dirname(__file__)))

from g2vlm_ros.backends.torch_backend import TorchBackend  # noqa: E402
from g2vlm_ros.cli.bench_model import PROMPT_IDS, SPECIAL, build_model  # noqa: E402

MIB = 1024 * 1024


def memory(label: str) -> None:
    free, total = torch.cuda.mem_get_info()
    print(f"  {label:<34} allocated {torch.cuda.memory_allocated() / MIB:>8.0f} MiB  reserved "
          f"{torch.cuda.memory_reserved() / MIB:>8.0f} MiB  device used {(total - free) / MIB:>8.0f} MiB", flush=True)


def cycle(config: str, views: int, cuda_graphs: bool) -> None:
    print(f"torch backend, {config} model, bf16, cuda_graphs={cuda_graphs}, {views} views of 640x480", flush=True)
    memory("before configure")
    model = build_model(config, torch.device("cuda"), torch.bfloat16, seed=0)
    vocab = model.config.text.vocab_size
    backend = TorchBackend.from_model(model, [v % vocab for v in PROMPT_IDS],
                                      {k: v % vocab for k, v in SPECIAL.items()}, "bf16", cuda_graphs=cuda_graphs)
    del model
    memory("configured (model loaded)")
    images = [np.random.default_rng(i).integers(0, 255, (480, 640, 3), dtype=np.uint8) for i in range(views)]
    result = backend.run(images)
    torch.cuda.synchronize()
    memory("after one window (result held)")
    del result  # the node drops its snapshot
    backend.close()
    del backend
    gc.collect()
    torch.cuda.empty_cache()
    memory("after cleanup")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("full", "tiny"), default="full")
    parser.add_argument("--views", type=int, default=2)
    args = parser.parse_args()
    torch.cuda.init()
    memory("CUDA context only")
    cycle(args.config, args.views, cuda_graphs=False)
    cycle(args.config, args.views, cuda_graphs=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
