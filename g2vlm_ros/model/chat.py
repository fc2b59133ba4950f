"""The semantic path: answering a question with the reconstruction's geometry tokens in context.

Sequence of the official chat-with-reconstruction, each step appended to one KV cache:
  1. system prompt text (causal, semantic expert);
  2. the geometry image block of all views (DINO patch tokens through the geometry expert);
  3. per view, a Qwen2-VL vision block: `<|vision_start|>`, merged vision tokens, `<|vision_end|>`
     (non-causal, semantic expert; M-RoPE positions from the merged grid);
  4. the user's question followed by `<|im_end|>\\n<|im_start|>assistant` (causal);
  5. decoding from the chat template's last token ("\\n"), one token per step, until a stop token
     or the token budget.
Every generated token therefore attends to the geometry tokens of step 2.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from g2vlm_ros.model.decode import static_decoder
from g2vlm_ros.model.mot import KVCache, TokenGroup
from g2vlm_ros.model.rope import mrope_cos_sin

SYSTEM_PROMPT = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
ASSISTANT_SUFFIX = "<|im_end|>\n<|im_start|>assistant"
# the decoding start token is the last token of this template, as in the official code
START_TEMPLATE = "<|im_start|>user\\your text<|im_end|>\n<|im_start|>assistant\n"


def vision_block_positions(start: int, grid_thw: Sequence[int], merge: int) -> tuple[torch.Tensor, int]:
    """M-RoPE positions [3, tokens + 2] of a vision block starting at `start`, and the next free one.

    `<|vision_start|>` sits at `start`; merged tokens get (t, h, w) = base + (frame, row, col) with
    base = start + 1; `<|vision_end|>` follows the largest of those by one.
    """
    frames, grid_h, grid_w = (int(v) for v in grid_thw)
    rows_h, rows_w = grid_h // merge, grid_w // merge
    t = torch.arange(frames).repeat_interleave(rows_h * rows_w)
    h = torch.arange(rows_h).repeat_interleave(rows_w).repeat(frames)
    w = torch.arange(rows_w).repeat(frames * rows_h)
    tokens = torch.stack((t, h, w)) + start + 1
    end = int(tokens.max()) + 1
    return torch.cat((torch.full((3, 1), start), tokens, torch.full((3, 1), end)), dim=1), end + 1


@dataclass
class GenerationConfig:
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: sample from the whole vocabulary (the official behaviour)
    stop_token_ids: tuple[int, ...] = ()  # empty: the model's <|im_end|>
    seed: Optional[int] = None  # makes sampling reproducible

    def validate(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        if self.do_sample and not self.temperature > 0:
            raise ValueError("temperature must be > 0 when sampling")


@dataclass
class GenerationResult:
    token_ids: list[int]  # generated tokens; neither the start token nor the stop token
    stopped_by: str  # "stop_token", "max_new_tokens" or "interrupted" (on_token returned False)
    text: Optional[str] = None
    logits: list[torch.Tensor] = field(default_factory=list, repr=False)  # per step, when requested


OnToken = Callable[[list[int]], bool]


class ChatSession:
    """One growing token sequence over a G2VLM: a KV cache and the next free M-RoPE position."""

    def __init__(self, model):
        self.model = model
        self.cache = KVCache()
        self.position = 0

    def _positions_group(self, embeddings: torch.Tensor, positions: torch.Tensor) -> TokenGroup:
        text = self.model.config.text
        cos, sin = mrope_cos_sin(positions.to(embeddings.device), text.head_dim, text.rope_theta)
        return TokenGroup(embeddings, cos, sin)

    def append_text(self, token_ids: Sequence[int]) -> torch.Tensor:
        """Causal text step; returns the final-normed hidden states of the new tokens."""
        group = self.model.text_group(token_ids, self.position)
        hidden, _, self.cache = self.model.language_model.forward_step(group, None, self.cache, causal=True)
        self.position += len(token_ids)
        return hidden

    def append_geometry(self, images: torch.Tensor, special: dict[str, int]) -> torch.Tensor:
        tokens, self.cache, self.position = self.model.encode_geometry_tokens(
            images.to(self.model.device), self.cache, special, first_position=self.position)
        return tokens

    def append_vision(self, pixel_values: torch.Tensor, grid_thw: Sequence[int], special: dict[str, int]) -> None:
        """One image's Qwen2-VL block (semantic expert, non-causal)."""
        model = self.model
        grid = torch.as_tensor([list(grid_thw)], dtype=torch.long, device=model.device)
        vision_tokens = model.vit_model(pixel_values.to(model.device, model.dtype), grid).to(model.dtype)
        merge = model.config.vision.spatial_merge_size
        positions, next_position = vision_block_positions(self.position, grid_thw, merge)
        markers = model.embed([special["start_of_image"], special["end_of_image"]])
        embeddings = torch.cat((markers[:1], vision_tokens, markers[1:]))
        _, _, self.cache = model.language_model.forward_step(
            self._positions_group(embeddings, positions), None, self.cache, causal=False)
        self.position = next_position

    @torch.no_grad()
    def generate(self, start_token_id: int, config: GenerationConfig, eos_token_id: int,
                 keep_logits: bool = False, on_token: Optional[OnToken] = None,
                 static_cache: Optional[bool] = None) -> GenerationResult:
        """Greedy or sampled decoding; `on_token(tokens so far)` after each token may stop it by returning False
        (streaming, cancellation, deadlines).

        static_cache (default: on CUDA devices) decodes over a preallocated cache with the step
        replayed as a CUDA graph (`decode.StaticDecoder`); otherwise each token is one
        `append_text` step. Both compute the same logits."""
        config.validate()
        stop = set(config.stop_token_ids or (eos_token_id,))
        generator = None
        if config.seed is not None:
            generator = torch.Generator(device=self.model.device).manual_seed(config.seed)
        if static_cache is None:
            static_cache = self.model.device.type == "cuda"
        decoder = None
        if static_cache and config.max_new_tokens > 0:
            decoder = static_decoder(self.model, len(self.cache), config.max_new_tokens)
            decoder.load(self.cache, self.position)
        token, generated, logits_log = start_token_id, [], []
        stopped_by = "max_new_tokens"
        for _ in range(config.max_new_tokens):
            if decoder is not None:
                logits = decoder.step(token)
                self.position += 1
            else:
                hidden = self.append_text([token])
                logits = self.model.language_model.lm_head(hidden[-1]).float()
            if keep_logits:
                logits_log.append(logits.cpu())
            token = choose_token(logits, config, generator)
            if token in stop:
                stopped_by = "stop_token"
                break
            generated.append(token)
            if on_token is not None and not on_token(generated):
                stopped_by = "interrupted"
                break
        if decoder is not None:
            self.cache = decoder.cache()
        return GenerationResult(generated, stopped_by, logits=logits_log)


def choose_token(logits: torch.Tensor, config: GenerationConfig, generator: Optional[torch.Generator]) -> int:
    if not config.do_sample:
        return int(torch.argmax(logits))
    scaled = logits / config.temperature
    if config.top_k > 0:
        threshold = torch.topk(scaled, min(config.top_k, scaled.numel())).values[-1]
        scaled = scaled.masked_fill(scaled < threshold, float("-inf"))
    probabilities = torch.softmax(scaled, dim=-1)
    return int(torch.multinomial(probabilities, 1, generator=generator))


VisionInput = tuple[torch.Tensor, Sequence[int]]  # (pixel_values, grid_thw) of one image


@dataclass
class ChatTokens:
    """Token ids of one chat turn; built from a tokenizer, or given directly (tests, fixtures)."""

    system: list[int]
    question: list[int]
    start: int
    special: dict[str, int]

    @classmethod
    def from_tokenizer(cls, tokenizer, question: str, special: dict[str, int]) -> ChatTokens:
        return cls(system=tokenizer.encode(SYSTEM_PROMPT), question=tokenizer.encode(question + ASSISTANT_SUFFIX),
                   start=tokenizer.encode(START_TEMPLATE, add_special_tokens=False)[-1], special=special)


@torch.no_grad()
def chat_with_geometry(model, geometry_images: torch.Tensor, vision_images: Sequence[VisionInput], tokens: ChatTokens,
                       config: GenerationConfig, keep_logits: bool = False,
                       on_token: Optional[OnToken] = None, static_cache: Optional[bool] = None) -> GenerationResult:
    """Runs steps 1-5 of the module docstring.

    geometry_images [N,3,H,W] in [0,1] (see `preprocess`); vision_images: per view
    (pixel_values, grid_thw) from `vision_preprocess.vision_inputs`.
    """
    session = ChatSession(model)
    session.append_text(tokens.system)
    session.append_geometry(geometry_images, tokens.special)
    for pixel_values, grid_thw in vision_images:
        session.append_vision(pixel_values, grid_thw, tokens.special)
    session.append_text(tokens.question)
    return session.generate(tokens.start, config, tokens.special["eos_token_id"], keep_logits, on_token, static_cache)


def chat(model, images: Sequence[np.ndarray], question: str, config: Optional[GenerationConfig] = None,
         vision_size: Optional[int] = None, on_token: Optional[OnToken] = None) -> GenerationResult:
    """Answers `question` about RGB uint8 images, with the model's tokenizer; returns text and ids."""
    from g2vlm_ros.model.preprocess import preprocess
    from g2vlm_ros.model.vision_preprocess import SEMANTIC_IMAGE_SIZE, vision_inputs

    if model.tokenizer is None or model.special_token_ids is None:
        raise ValueError("chat needs a checkpoint folder with tokenizer files")
    if not question.strip():
        raise ValueError("the question is empty")
    config = config or GenerationConfig()
    vision = []
    for image in images:
        pixel_values, grid = vision_inputs([image], size=vision_size or SEMANTIC_IMAGE_SIZE)
        vision.append((pixel_values, grid[0].tolist()))
    tokens = ChatTokens.from_tokenizer(model.tokenizer, question, model.special_token_ids)
    result = chat_with_geometry(model, preprocess(images), vision, tokens, config, on_token=on_token)
    result.text = model.tokenizer.decode(result.token_ids)
    return result
