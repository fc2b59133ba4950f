"""G2VLM composed from its parts: the geometry path (`reconstruct`) and the language stack both
experts share. The module tree mirrors the official checkpoint keys exactly, so a state dict in
the official layout loads without renaming.

Recon token layout (official `recon`): `<|im_start|>` + prompt tokens, causal, semantic expert,
cached; then one non-causal block holding, per view, `<|vision_start|>`, the view's DINO patch
tokens (geometry expert) and `<|vision_end|>`, attending to the cached prompt. The geometry path
reads the semantic expert only for the prompt and the two marker tokens per view; it never runs
the vision tower or the LM head.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Optional

import torch
from torch import nn

from g2vlm_ros.geometry.intrinsics import solve_intrinsics
from g2vlm_ros.model.config import (
    CAMERA_DECODER_OUT,
    HEAD_DECODER_DEPTH,
    HEAD_DECODER_HEADS,
    HEAD_ROPE_FREQUENCY,
    PATCH_SIZE,
    POINT_DECODER_OUT,
    G2VLMConfig,
)
from g2vlm_ros.model.dino import DinoEncoder
from g2vlm_ros.model.heads import CameraHead, PixelHead, TransformerDecoder, pose_matrix
from g2vlm_ros.model.mot import KVCache, MoTLanguageModel, TokenGroup
from g2vlm_ros.model.preprocess import normalize_for_dino
from g2vlm_ros.model.rope import RoPE2D, mrope_cos_sin, patch_grid_positions
from g2vlm_ros.model.vision import QwenVisionTower

RECON_PROMPT = "Reconstruct the 3D scene."
SPECIAL_TOKENS = {"bos_token_id": "<|im_start|>", "eos_token_id": "<|im_end|>",
                  "start_of_image": "<|vision_start|>", "end_of_image": "<|vision_end|>"}


@dataclass(frozen=True)
class Reconstruction(Mapping):
    """Geometry of N views at the model's input resolution (H, W); also a read-only mapping by name.

    Frames: local_points in each camera's optical frame (x right, y down, z forward; OpenCV = ROS
    optical); camera_poses camera-to-world; points = camera_poses applied to local_points;
    global_points predicted directly in the world frame (the first view's camera). Units are the
    model's: up to scale, not metres. conf/confidence exist only for checkpoints with a confidence
    head (the released one has none) and are then absent from the mapping, not faked.
    """

    local_points: torch.Tensor  # [N,H,W,3]
    points: torch.Tensor  # [N,H,W,3]
    global_points: torch.Tensor  # [N,H,W,3]
    camera_poses: torch.Tensor  # [N,4,4]
    depth: torch.Tensor  # [N,H,W], z of local_points
    intrinsics: torch.Tensor  # [N,3,3], solved from local_points (g2vlm_ros.geometry.intrinsics)
    conf: Optional[torch.Tensor] = None  # [N,H,W] logits
    confidence: Optional[torch.Tensor] = None  # [N,H,W] sigmoid(conf)

    @classmethod
    def from_raw(cls, raw: dict[str, torch.Tensor]) -> Reconstruction:
        """Completes the heads' raw outputs (see `G2VLM.decode_geometry_raw`): the pose's rotation
        (SVD), world points, depth, intrinsics and confidence. Runs on the tensors' device."""
        return cls.from_raw_and_poses(raw, pose_matrix(raw["rotation_raw"], raw["translation"]))

    @classmethod
    def from_raw_and_poses(cls, raw: dict[str, torch.Tensor], camera_poses: torch.Tensor) -> Reconstruction:
        """`from_raw` with the camera poses [N,4,4] already made from the raw rotation and translation: no step
        waits for the device, so a CUDA graph can capture it (backends.window_post)."""
        local_points = raw["local_points"].float()
        rotation, translation = camera_poses[:, :3, :3], camera_poses[:, None, None, :3, 3]
        conf = raw["conf"].float() if raw.get("conf") is not None else None
        confidence = torch.sigmoid(conf) if conf is not None else None
        return cls(
            local_points=local_points,
            points=torch.einsum("nij,nhwj->nhwi", rotation, local_points) + translation,
            global_points=raw["global_points"].float(),
            camera_poses=camera_poses,
            depth=local_points[..., 2],
            intrinsics=solve_intrinsics(local_points, confidence).float(),
            conf=conf,
            confidence=confidence,
        )

    def _present(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._present():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._present())

    def __len__(self) -> int:
        return len(self._present())


@dataclass(frozen=True)
class ImageBlockLayout:
    """Static token layout of the image block for N views of a gh x gw patch grid."""

    positions_und: torch.Tensor  # [3, 2N]: <|vision_start|>, <|vision_end|> of each view
    positions_geo: torch.Tensor  # [3, N*gh*gw]: patch tokens, view-major, row-major
    next_position: int  # first free M-RoPE position after the block

    @classmethod
    def build(cls, first_position: int, views: int, grid_h: int, grid_w: int) -> ImageBlockLayout:
        rows = torch.arange(grid_h).repeat_interleave(grid_w)
        cols = torch.arange(grid_w).repeat(grid_h)
        markers, patches = [], []
        position = first_position
        for _ in range(views):
            start = position
            base = start + 1
            patches.append(torch.stack((torch.full_like(rows, base), base + rows, base + cols)))
            # the official layout advances by the largest grid index, not by the token count
            end = base + max(grid_h, grid_w)
            markers.append(torch.tensor([[start, end]] * 3))
            position = end + 1
        return cls(torch.cat(markers, dim=1), torch.cat(patches, dim=1), position)


@dataclass
class ImageBlockInputs:
    """Marker embeddings and M-RoPE angles of an image block (see ImageBlockLayout)."""

    markers: torch.Tensor  # [2N, C]
    und_cos: torch.Tensor
    und_sin: torch.Tensor
    geo_cos: torch.Tensor
    geo_sin: torch.Tensor
    next_position: int


def text_positions(first_position: int, count: int) -> torch.Tensor:
    return torch.arange(first_position, first_position + count).expand(3, -1)


class G2VLM(nn.Module):
    def __init__(self, config: G2VLMConfig):
        super().__init__()
        config.validate()
        self.config = config
        width = config.text.hidden_size
        self.language_model = MoTLanguageModel(config.text)
        self.vit_model = QwenVisionTower(config.vision)
        self.dino_model = DinoEncoder(config.dino)
        self.dino2llm = nn.Linear(config.dino.hidden_size, width)
        rope = RoPE2D(HEAD_ROPE_FREQUENCY)

        def decoder(out_dim: int, cross: bool = False) -> TransformerDecoder:
            return TransformerDecoder(width, HEAD_DECODER_HEADS, HEAD_DECODER_DEPTH, out_dim, rope, cross)

        self.point_decoder = decoder(POINT_DECODER_OUT)
        self.point_head = PixelHead(POINT_DECODER_OUT, PATCH_SIZE, 3)
        self.camera_decoder = decoder(CAMERA_DECODER_OUT)
        self.camera_head = CameraHead(CAMERA_DECODER_OUT)
        self.global_points_decoder = decoder(POINT_DECODER_OUT, cross=True)
        self.global_point_head = PixelHead(POINT_DECODER_OUT, PATCH_SIZE, 3)
        if config.has_confidence_head:
            self.conf_decoder = decoder(POINT_DECODER_OUT)
            self.conf_head = PixelHead(POINT_DECODER_OUT, PATCH_SIZE, 1)
        nn.init.zeros_(self.dino2llm.weight)  # the official initial value of dino2llm
        nn.init.zeros_(self.dino2llm.bias)
        self.tokenizer = None  # set by the loader when the checkpoint folder has tokenizer files
        self.special_token_ids: Optional[dict[str, int]] = None

    def fuse_projections(self) -> G2VLM:
        """One GEMM for q/k/v and one for gate/up per expert and layer in inference, without a
        second copy of the weights (idempotent; again after a dtype or device conversion)."""
        self.language_model.fuse_projections()
        return self

    # ------------------------------------------------------------------ tokens
    @property
    def dtype(self) -> torch.dtype:
        return self.dino2llm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.dino2llm.weight.device

    def resolve_token_ids(self, prefix_token_ids: Optional[Sequence[int]],
                          special_token_ids: Optional[dict[str, int]]) -> tuple[list[int], dict[str, int]]:
        """Explicit ids win; otherwise they come from the checkpoint's tokenizer."""
        special = dict(special_token_ids or self.special_token_ids or {})
        missing = [key for key in SPECIAL_TOKENS if key not in special]
        if missing:
            raise ValueError(f"special token ids {missing} are needed: pass special_token_ids or load a "
                             "checkpoint folder with tokenizer files")
        if prefix_token_ids is None:
            if self.tokenizer is None:
                raise ValueError("prefix_token_ids are needed: the model has no tokenizer")
            prefix_token_ids = self.tokenizer.encode(RECON_PROMPT)
        return list(prefix_token_ids), special

    def embed(self, token_ids: Sequence[int]) -> torch.Tensor:
        ids = torch.as_tensor(list(token_ids), dtype=torch.long, device=self.device)
        return self.language_model.model.embed_tokens(ids)

    def text_group(self, token_ids: Sequence[int], first_position: int) -> TokenGroup:
        positions = text_positions(first_position, len(token_ids)).to(self.device)
        cos, sin = mrope_cos_sin(positions, self.config.text.head_dim, self.config.text.rope_theta)
        return TokenGroup(self.embed(token_ids), cos, sin)

    # ------------------------------------------------------------------ geometry path
    def prefix_cache(self, prefix_token_ids: Sequence[int], special: dict[str, int]) -> KVCache:
        """Keys/values of `<|im_start|>` + prompt (causal, semantic expert): constant per checkpoint."""
        ids = [special["bos_token_id"], *prefix_token_ids]
        _, _, cache = self.language_model.forward_step(self.text_group(ids, 0), None, KVCache(), causal=True)
        return cache

    def encode_geometry_tokens(self, images: torch.Tensor, cache: KVCache, special: dict[str, int],
                               first_position: Optional[int] = None) -> tuple[torch.Tensor, KVCache, int]:
        """Runs the image block after `cache`.

        images [N,3,H,W] in [0,1], or [B,N,3,H,W] for B independent scenes of N views each (one
        batched pass, as training uses; the cache is then shared by all scenes); `first_position`
        is the next free M-RoPE position (the cache length when only text precedes). Returns the
        last hidden states of the patch tokens [(B,) N, P, C], the cache extended by the block,
        and the next free position.
        """
        views, _, height, width = images.shape[-4:]
        start = len(cache) if first_position is None else first_position
        block = self.image_block_inputs(start, views, height // PATCH_SIZE, width // PATCH_SIZE, special)
        flat = normalize_for_dino(images.reshape(-1, *images.shape[-3:]).to(self.dtype))
        scenes = images.shape[0] if images.ndim == 5 else 1
        patches = self.dino2llm(self.dino_model(flat, scenes=scenes))
        tokens, cache = self.run_image_block(patches.reshape(*images.shape[:-3], *patches.shape[1:]), block, cache)
        return tokens, cache, block.next_position

    def image_block_inputs(self, first_position: int, views: int, grid_h: int, grid_w: int,
                           special: dict[str, int]) -> ImageBlockInputs:
        """Everything of the image block that depends only on its layout (constant per bucket)."""
        layout = ImageBlockLayout.build(first_position, views, grid_h, grid_w)
        text = self.config.text
        und_cos, und_sin = mrope_cos_sin(layout.positions_und.to(self.device), text.head_dim, text.rope_theta)
        geo_cos, geo_sin = mrope_cos_sin(layout.positions_geo.to(self.device), text.head_dim, text.rope_theta)
        markers = self.embed([special["start_of_image"], special["end_of_image"]] * views)
        return ImageBlockInputs(markers, und_cos, und_sin, geo_cos, geo_sin, layout.next_position)

    def run_image_block(self, patches: torch.Tensor, block: ImageBlockInputs,
                        cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """LLM-width patch embeddings [(B,) N, P, C] through the image block after `cache`; returns
        the patch tokens' last hidden states [(B,) N, P, C] and the extended cache."""
        *lead, views, per_view, width = patches.shape
        markers = block.markers.expand(*lead, *block.markers.shape)
        _, geo, cache = self.language_model.forward_step(
            TokenGroup(markers, block.und_cos, block.und_sin),
            TokenGroup(patches.reshape(*lead, views * per_view, width), block.geo_cos, block.geo_sin),
            cache, causal=False)
        return geo.reshape(*lead, views, per_view, -1), cache

    def decode_geometry_raw(self, tokens: torch.Tensor, height: int, width: int) -> dict[str, torch.Tensor]:
        """Patch tokens [N, P, C] -> the heads' outputs before the pose's SVD step (exportable):
        local_points, global_points [N,H,W,3], rotation_raw [N,3,3], translation [N,3], and
        conf [N,H,W] (logits) when the checkpoint has a confidence head. Tokens [B, N, P, C] of B
        scenes give the same outputs with a leading B axis (global points relative to each
        scene's first view)."""
        if tokens.ndim == 4:
            scenes, views = tokens.shape[:2]
            first_views = tokens[:, :1].expand(-1, views, -1, -1).flatten(0, 1)
            outputs = self._decode(tokens.flatten(0, 1), first_views, height, width)
            return {key: value.unflatten(0, (scenes, views)) for key, value in outputs.items()}
        return self._decode(tokens, tokens[:1].expand(tokens.shape[0], -1, -1), height, width)

    def _decode(self, tokens: torch.Tensor, first_views: torch.Tensor, height: int,
                width: int) -> dict[str, torch.Tensor]:
        """The heads over views [V, P, C]; first_views [V, P, C] holds each view's scene's first view."""
        positions = patch_grid_positions(tokens.shape[0], height // PATCH_SIZE, width // PATCH_SIZE, tokens.device)
        # one set of rotary tables for every block of the three decoders
        positions = self.point_decoder.rope.tables(positions, tokens.shape[-1] // HEAD_DECODER_HEADS, tokens.dtype)
        point_hidden = self.point_decoder(tokens, positions)
        camera_hidden = self.camera_decoder(tokens, positions)
        global_hidden = self.global_points_decoder(tokens, positions, first_views, positions)
        conf_hidden = self.conf_decoder(tokens, positions) if self.config.has_confidence_head else None
        # The heads run in fp32 outside autocast, as in the official model. Under a training autocast their
        # linears would give bf16, whose spacing at camera positions 15-24 units from the origin is 1/16-1/8 unit:
        # coarser than many steps between views, which the pose losses then read as zero or reversed.
        with torch.autocast(tokens.device.type, enabled=False):
            raw = self.point_head(point_hidden, height, width)
            xy, log_z = raw.split((2, 1), dim=-1)
            z = torch.exp(log_z)
            rotation_raw, translation = self.camera_head(camera_hidden)
            outputs = {
                "local_points": torch.cat((xy * z, z), dim=-1),
                "global_points": self.global_point_head(global_hidden, height, width),
                "rotation_raw": rotation_raw,
                "translation": translation,
            }
            if conf_hidden is not None:
                outputs["conf"] = self.conf_head(conf_hidden, height, width)[..., 0]
        return outputs

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, prefix_token_ids: Optional[Sequence[int]] = None,
                    special_token_ids: Optional[dict[str, int]] = None) -> Reconstruction:
        """images [N,3,H,W] in [0,1] (see `preprocess`) -> Reconstruction (a mapping of tensors).

        Token ids default to the checkpoint's tokenizer; folders without one (test fixtures) pass
        `prefix_token_ids` (the prompt "Reconstruct the 3D scene.") and `special_token_ids`.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [N,3,H,W], got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        if height % PATCH_SIZE or width % PATCH_SIZE:
            raise ValueError(f"image size {width}x{height} is not a multiple of {PATCH_SIZE}: use preprocess()")
        prefix, special = self.resolve_token_ids(prefix_token_ids, special_token_ids)
        images = images.to(self.device)
        cache = self.prefix_cache(prefix, special)
        tokens, _, _ = self.encode_geometry_tokens(images, cache, special)
        return Reconstruction.from_raw(self.decode_geometry_raw(tokens, height, width))
