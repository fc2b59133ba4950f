"""The PyTorch backend: the G2VLM module itself, eager, optionally compiled or replayed as CUDA graphs.

Each bucket's network is `GeometryGraph` (the geometry path with its constants precomputed).
With CUDA graphs (the default on CUDA devices; `cuda_graphs=False` turns them off) it is
captured once as a CUDA graph and replayed, which removes the per-kernel launch cost that bounds
eager latency; the first window of each size pays the warm-up and capture, which is logged and
reported in `details()`. The captured graph keeps its network alive (`CapturedGraph.network`):
the graph reads the network's buffers by address. With CUDA graphs the post-processing is captured
too, per size, after the pose's SVD on the host (`window_post.CapturedPost`).
`compile=True` wraps the network in torch.compile first; without CUDA graphs the post-processing
runs eagerly.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from g2vlm_ros.backends.backend import BackendUnavailableError, GeometryResult, check_rgb_images
from g2vlm_ros.backends.network_backend import BucketCache, NetworkBackend
from g2vlm_ros.backends.preprocess import prepare_images
from g2vlm_ros.backends.window_post import CapturedPost, confidence_source
from g2vlm_ros.deploy.export import Bucket, GeometryGraph, graph_output_names
from g2vlm_ros.model import CheckpointError, load_checkpoint
from g2vlm_ros.precision import AUTO_PRECISION

LOG = logging.getLogger("g2vlm_ros.backends")
TOKEN_IDS_FILE = "token_ids.json"  # for checkpoint folders without tokenizer files


def resolve_device(device: str) -> torch.device:
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(f"device '{device}' requested but CUDA is not available here")
    return resolved


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' is bf16 on GPUs that support it (as the official inference), fp32 on the CPU."""
    if precision != AUTO_PRECISION:
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp16" if device.type == "cuda" else "fp32"


def folder_token_ids(folder: Path) -> tuple[Optional[list[int]], Optional[dict[str, int]]]:
    path = folder / TOKEN_IDS_FILE
    if not path.is_file():
        return None, None
    ids = json.loads(path.read_text())
    return ids.get("prompt_token_ids"), ids.get("special_token_ids")


class CapturedGraph:
    """One bucket's GeometryGraph captured as a CUDA graph with static input/output buffers."""

    def __init__(self, network: torch.nn.Module, bucket: Bucket, device: torch.device, output_names: Sequence[str],
                 warmup: int = 3):
        # the graph reads the network's buffers (prompt keys/values, marker embeddings, rotary and
        # position tables) by address: they must live as long as the graph. Without this reference
        # the backend dropped the GeometryGraph after the capture, the caching allocator handed its
        # buffers' memory to later tensors, and every replay after the first read garbage (issue 17)
        self.network = network
        self.static_input = torch.zeros(bucket.views, 3, bucket.height, bucket.width, device=device)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(warmup):  # lets lazy initialisation and autotuning happen outside the capture
                network(self.static_input)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.static_outputs = dict(zip(output_names, network(self.static_input), strict=True))
        # the post-processing reads the static outputs: captured with them, dropped with them
        self.post = CapturedPost(self.static_outputs, device)

    def replay(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The static outputs, valid until the next replay."""
        self.static_input.copy_(images)
        self.graph.replay()
        return self.static_outputs

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        # copies: the next replay overwrites the static buffers, and results outlive a call
        return {name: output.clone() for name, output in self.replay(images).items()}


class TorchBackend(NetworkBackend):
    name = "torch"

    def __init__(self, checkpoint_path: str, device: str = "cuda", precision: str = "auto",
                 cuda_graphs: bool = True, compile: bool = False):
        folder = Path(checkpoint_path) if checkpoint_path else None
        if folder is None or not folder.is_dir():
            raise BackendUnavailableError(f"backend 'torch': checkpoint folder '{checkpoint_path}' does not exist")
        self.checkpoint: Optional[Path] = folder
        self.device = self.input_device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        try:
            self.model = load_checkpoint(folder, device=self.device, dtype=self.precision)
        except (CheckpointError, ValueError) as error:
            raise BackendUnavailableError(f"backend 'torch': {error}") from error
        self.prefix_token_ids, self.special_token_ids = folder_token_ids(folder)
        try:
            self.model.resolve_token_ids(self.prefix_token_ids, self.special_token_ids)
        except ValueError as error:
            raise BackendUnavailableError(f"backend 'torch': {error} (or add {TOKEN_IDS_FILE})") from error
        self.model.fuse_projections()
        self._configure(cuda_graphs, compile)

    def _configure(self, cuda_graphs: bool, compile: bool) -> None:
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.compile = compile
        self._networks = BucketCache()  # per bucket: a network or its captured CUDA graph
        self.warmup_seconds: dict[str, float] = {}  # per bucket stem: build (+ capture) time
        mode = "cuda graphs" if self.cuda_graphs else ("compiled" if compile else "eager")
        self.name = f"torch ({mode})" if mode != "eager" else "torch"

    @classmethod
    def from_model(cls, model, prefix_token_ids, special_token_ids, precision: str,
                   cuda_graphs: bool = True, compile: bool = False) -> TorchBackend:
        """A backend around an already loaded model (benchmarks and tools)."""
        backend = cls.__new__(cls)
        backend.model, backend.device, backend.precision = model.fuse_projections(), model.device, precision
        backend.checkpoint = None
        backend.input_device = model.device
        backend.prefix_token_ids, backend.special_token_ids = prefix_token_ids, special_token_ids
        backend._configure(cuda_graphs, compile)
        return backend

    def describe(self) -> str:
        return f"{self.name} on {self.device} ({self.precision})"

    def details(self) -> dict[str, str]:
        details = {"device": str(self.device), "mode": self.name}
        if self.checkpoint is not None:
            details["checkpoint"] = str(self.checkpoint)
        if self.warmup_seconds:  # first window of each input size: build, warm-up and capture
            details["warmup_s"] = ", ".join(f"{stem}: {seconds:.2f}" for stem, seconds in self.warmup_seconds.items())
        return details

    def _network(self, bucket: Bucket):
        # with descriptors: GeometryResult.descriptors for loop closure, from tokens the encoder computes anyway
        network = GeometryGraph(self.model, bucket, self.prefix_token_ids, self.special_token_ids,
                                descriptors=True).eval()
        if self.compile:
            network = torch.compile(network)
        return network

    def _network_for(self, batch: torch.Tensor):
        """The bucket's network (eager or compiled) or CapturedGraph, built on first use."""
        bucket = Bucket(batch.shape[0], batch.shape[2], batch.shape[3])
        network = self._networks.get(bucket)
        if network is None:
            started = time.perf_counter()
            network = self._network(bucket)
            if self.cuda_graphs:
                network = CapturedGraph(network, bucket, self.device, graph_output_names(self.model, descriptors=True))
                torch.cuda.synchronize(self.device)
            self.warmup_seconds[bucket.stem] = time.perf_counter() - started
            LOG.info("input size %s ready in %.2f s (%s)", bucket.stem, self.warmup_seconds[bucket.stem],
                     "warm-up and CUDA graph capture" if self.cuda_graphs else "constants precomputed")
            self._networks.put(bucket, network)
        return network

    def raw_outputs(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """The network's raw outputs for a preprocessed batch (the model-only part of `run`)."""
        network = self._network_for(batch)
        with torch.no_grad():
            outputs = network(batch)
        if self.cuda_graphs:
            return outputs
        return dict(zip(graph_output_names(self.model, descriptors=True), outputs, strict=True))

    def run(self, images: Sequence[np.ndarray]) -> GeometryResult:
        if not self.cuda_graphs:
            return super().run(images)
        check_rgb_images(images)
        batch, colors = prepare_images(images, self.input_device)
        captured = self._network_for(batch)
        with torch.no_grad():
            raw = captured.replay(batch)  # no copies: the captured post-processing reads them in place
            outputs = captured.post()
        return GeometryResult.from_outputs(outputs, colors, confidence_source(raw))

    def release_caches(self) -> None:
        self._networks.clear()

    def close(self) -> None:
        self._networks.clear()
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
