"""ONNX export of the G2VLM geometry path for one fixed bucket (views, height, width).

The exported graph is a pure tensor function `images [N,3,H,W] float32 in [0,1]` ->
`local_points`, `global_points` [N,H,W,3], `rotation_raw` [N,3,3], `translation` [N,3]
(+ `conf` [N,H,W] for checkpoints with a confidence head). Everything constant for a bucket is
computed once at export and embedded: the key/value cache of the text prompt, the marker token
embeddings, the M-RoPE angles of the image block, and DINO's position table resampled to the
patch grid (its bicubic-antialias resampling has no ONNX operator). The pose's SVD step (no ONNX
operator either) and everything derived from the outputs (world points, depth, intrinsics) run in
the backends' post-processing: `Reconstruction.from_raw`.

A JSON manifest beside the graph records what a runtime needs to use it safely: model hash,
bucket, precision, opset, input/output names, shapes and dtypes, and preprocessing constants.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

import g2vlm_ros
from g2vlm_ros.deploy.export_manifest import EXPORT_MANIFEST_FORMAT, export_manifest_path
from g2vlm_ros.model.checkpoint import TORCH_DTYPES
from g2vlm_ros.model.config import DINO_INPUT_WIDTH, PATCH_SIZE
from g2vlm_ros.model.g2vlm import G2VLM, ImageBlockInputs
from g2vlm_ros.model.mot import KVCache
from g2vlm_ros.model.preprocess import RESNET_MEAN, RESNET_STD, normalize_for_dino, resnet_statistics
from g2vlm_ros.precision import PRECISIONS

INPUT_NAME = "images"
RAW_OUTPUTS = ("local_points", "global_points", "rotation_raw", "translation")
DESCRIPTOR_OUTPUT = "descriptor"  # [N, D] per-view global descriptor (loop closure); not exported to ONNX
DEFAULT_OPSET = 18


@dataclass(frozen=True)
class Bucket:
    """A fixed input size: the graph and engine are static for it."""

    views: int
    height: int
    width: int

    def validate(self) -> None:
        if self.views < 1:
            raise ValueError("a bucket needs at least one view")
        if self.height % PATCH_SIZE or self.width % PATCH_SIZE or min(self.height, self.width) < PATCH_SIZE:
            raise ValueError(f"bucket {self.width}x{self.height} must be positive multiples of {PATCH_SIZE}")

    @property
    def stem(self) -> str:
        return f"{self.views}x{self.height}x{self.width}"


class GeometryGraph(nn.Module):
    """The geometry path of `model` for one bucket, with every bucket constant precomputed."""

    def __init__(self, model: G2VLM, bucket: Bucket, prefix_token_ids: Optional[Sequence[int]] = None,
                 special_token_ids: Optional[dict[str, int]] = None, descriptors: bool = False):
        super().__init__()
        bucket.validate()
        self.model, self.bucket = model.fuse_projections(), bucket
        prefix, special = model.resolve_token_ids(prefix_token_ids, special_token_ids)
        self.prefix_token_ids, self.special_token_ids = prefix, special
        grid_h, grid_w = bucket.height // PATCH_SIZE, bucket.width // PATCH_SIZE
        with torch.no_grad():
            cache = model.prefix_cache(prefix, special)
            block = model.image_block_inputs(len(cache), bucket.views, grid_h, grid_w, special)
            for name in ("markers", "und_cos", "und_sin", "geo_cos", "geo_sin"):  # buffers follow .to(device)
                self.register_buffer(name, getattr(block, name), persistent=False)
            self.next_position = block.next_position
            self.register_buffer("dino_positions", model.dino_model.embeddings.patch_position_embeddings(
                grid_h, grid_w), persistent=False)
            mean, std = resnet_statistics(model.device)
            self.register_buffer("pixel_mean", mean, persistent=False)
            self.register_buffer("pixel_std", std, persistent=False)
            for index, (keys, values) in enumerate(cache.layers):
                self.register_buffer(f"prefix_keys_{index}", keys, persistent=False)
                self.register_buffer(f"prefix_values_{index}", values, persistent=False)
        self.output_names = graph_output_names(model, descriptors)

    def prefix(self) -> KVCache:
        layers = range(len(self.model.language_model.model.layers))
        return KVCache([(getattr(self, f"prefix_keys_{i}"), getattr(self, f"prefix_values_{i}")) for i in layers])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        model, bucket = self.model, self.bucket
        pixels = normalize_for_dino(images, (self.pixel_mean, self.pixel_std)).to(model.dtype)
        dino_tokens = model.dino_model(pixels, self.dino_positions)
        patches = model.dino2llm(dino_tokens)
        block = ImageBlockInputs(self.markers, self.und_cos, self.und_sin, self.geo_cos, self.geo_sin,
                                 self.next_position)
        tokens, _ = model.run_image_block(patches, block, self.prefix())
        raw = model.decode_geometry_raw(tokens, bucket.height, bucket.width)
        if DESCRIPTOR_OUTPUT in self.output_names:
            raw[DESCRIPTOR_OUTPUT] = pooled_descriptors(dino_tokens)
        return tuple(raw[name].float() for name in self.output_names)


def graph_output_names(model: G2VLM, descriptors: bool = False) -> tuple[str, ...]:
    """The geometry graph's outputs in order: the heads' raw outputs, `conf` for checkpoints with a confidence
    head, and `descriptor` when asked for (the torch backend; exported graphs leave it out)."""
    return (RAW_OUTPUTS + (("conf",) if model.config.has_confidence_head else ())
            + ((DESCRIPTOR_OUTPUT,) if descriptors else ()))


def pooled_descriptors(dino_tokens: torch.Tensor) -> torch.Tensor:
    """DINO patch tokens [N, P, C] -> one global descriptor per view [N, C] float32 with unit L2 norm: the mean
    of the patch tokens, a place descriptor the encoder computes anyway (no extra network). Pooled in fp32 so
    that bf16 runs give the same ranking. Note: the official DINO attention segments straddle view boundaries
    (model/dino.py), so a view's descriptor varies slightly with the other views of its window."""
    return torch.nn.functional.normalize(dino_tokens.float().mean(dim=1), dim=-1)


def model_fingerprint(model: nn.Module) -> str:
    """sha256 (hex) over parameter names, shapes, dtypes and bytes: identifies the weights exactly."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


CHECKPOINT_FILES = ("text_config.json", "vit_config.json", "dino_config.json")


def checkpoint_fingerprint(folder: Path | str) -> str:
    """sha256 (hex) over a checkpoint folder's config files and weight files, read in 16 MiB
    chunks: identifies the checkpoint an ONNX graph or engine was made from without loading it."""
    folder = Path(folder)
    files = [folder / name for name in CHECKPOINT_FILES] + sorted(folder.glob("*.safetensors"))
    digest = hashlib.sha256()
    for path in files:
        if not path.is_file():
            continue
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            while chunk := handle.read(16 << 20):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ExportResult:
    onnx_path: Path
    manifest_path: Path
    manifest: dict


def export_geometry_onnx(model: G2VLM, bucket: Bucket, output_dir: Path | str, precision: str = "fp32",
                         opset: int = DEFAULT_OPSET, external_data: bool = False,
                         prefix_token_ids: Optional[Sequence[int]] = None,
                         special_token_ids: Optional[dict[str, int]] = None,
                         model_hash: Optional[str] = None) -> ExportResult:
    """Exports the geometry path for `bucket`; returns the ONNX and manifest paths.

    `model` is cast to `precision` for the export (the graph is typed in it); pass a copy if the
    caller keeps using the model in another precision. `model_hash` defaults to the weights'
    fingerprint taken before the cast.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
    if opset < 17:
        raise ValueError("opset must be >= 17 (LayerNormalization)")
    bucket.validate()
    started = time.perf_counter()
    model_hash = model_hash or model_fingerprint(model)
    model = model.to(TORCH_DTYPES[precision]).eval()
    graph = GeometryGraph(model, bucket, prefix_token_ids, special_token_ids).eval()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = f"g2vlm_geometry_{model_hash[:12]}_{bucket.stem}_{precision}"
    onnx_path = output_dir / f"{stem}.onnx"
    manifest_path = export_manifest_path(onnx_path)
    example = torch.rand(bucket.views, 3, bucket.height, bucket.width, device=model.device)
    with torch.no_grad():
        shapes = [tuple(t.shape) for t in graph(example)]
        torch.onnx.export(graph, (example,), str(onnx_path), input_names=[INPUT_NAME],
                          output_names=list(graph.output_names), opset_version=opset, dynamo=False,
                          do_constant_folding=True)
    if external_data:
        _move_weights_to_external_data(onnx_path)
    manifest = {
        "format": EXPORT_MANIFEST_FORMAT,
        "model_hash": model_hash,
        "bucket": asdict(bucket),
        "precision": precision,
        "opset": opset,
        "onnx_file": onnx_path.name,
        "external_data": external_data,
        "inputs": [{"name": INPUT_NAME, "shape": list(example.shape), "dtype": "float32"}],
        "outputs": [{"name": name, "shape": list(shape), "dtype": "float32"}
                    for name, shape in zip(graph.output_names, shapes, strict=True)],
        "preprocessing": {
            "input": "RGB, float32, [0, 1], NCHW; resize as g2vlm_ros.model.preprocess (PIL Lanczos to "
                     f"{DINO_INPUT_WIDTH} px wide, height from the first view's aspect ratio, multiples of "
                     f"{PATCH_SIZE}) or its GPU equivalent",
            "normalisation_inside_graph": {"mean": list(RESNET_MEAN), "std": list(RESNET_STD)},
            "patch_size": PATCH_SIZE,
        },
        "postprocessing": "g2vlm_ros.model.g2vlm.Reconstruction.from_raw",
        "prompt_token_ids": list(graph.prefix_token_ids),
        "special_token_ids": dict(graph.special_token_ids),
        "exporter": {"g2vlm_ros": g2vlm_ros.__version__, "torch": torch.__version__},
        "export_seconds": round(time.perf_counter() - started, 2),
    }
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return ExportResult(onnx_path, manifest_path, manifest)


def _move_weights_to_external_data(onnx_path: Path) -> None:
    """Rewrites the model with its initializers in `<name>.onnx.data` (needed past 2 GB)."""
    import onnx

    model = onnx.load(str(onnx_path))
    onnx.save_model(model, str(onnx_path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=onnx_path.name + ".data", size_threshold=1024)
