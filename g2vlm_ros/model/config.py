"""Configuration of G2VLM, read from (and written to) the checkpoint folder's own JSON files.

A checkpoint folder in the official layout holds `text_config.json` (Qwen2-VL text stack, shared by
both experts), `vit_config.json` (Qwen2-VL vision tower, semantic path), `dino_config.json`
(DINOv2-with-registers encoder, geometry path) and `model.safetensors`. Values the official
loader overrides after reading (q/k norm on, untied embeddings, MoT layers, vision patch size 14)
are fixed here the same way.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

# The official code hard-codes these; they are not in the checkpoint's configs.
MROPE_SECTION = (16, 24, 24)  # rotary channel pairs for (t, h, w): requires head_dim == 128
HEAD_DECODER_HEADS = 16  # attention heads of the point / camera / global-point decoders
HEAD_DECODER_DEPTH = 5
POINT_DECODER_OUT = 1024
CAMERA_DECODER_OUT = 512
HEAD_ROPE_FREQUENCY = 100.0  # 2D RoPE of the head decoders
LAYER_SCALE_INIT = 0.01  # ls1/ls2 of the MoT layers (geometry tokens only)
DINO_INPUT_WIDTH = 518
PATCH_SIZE = 14


class ConfigError(ValueError):
    """A configuration file is missing, unreadable or describes an unsupported model."""


def _pick(cls, values: dict[str, Any]):
    """Builds dataclass `cls` from the keys of `values` it knows; the rest are ignored."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class TextConfig:
    """The Qwen2-VL language stack; each expert (semantic, geometry) has these dimensions."""

    vocab_size: int = 151936
    hidden_size: int = 1536
    intermediate_size: int = 8960
    num_hidden_layers: int = 28
    num_attention_heads: int = 12
    num_key_value_heads: int = 2
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by {self.num_attention_heads} heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.head_dim != 2 * sum(MROPE_SECTION):
            raise ConfigError(f"head_dim {self.head_dim} != {2 * sum(MROPE_SECTION)} required by the M-RoPE "
                              f"sections {MROPE_SECTION} that the official code hard-codes")
        if self.hidden_act != "silu":
            raise ConfigError(f"unsupported hidden_act '{self.hidden_act}' (Qwen2 uses silu)")


@dataclass
class VisionConfig:
    """The Qwen2-VL vision tower (semantic path). `hidden_size` is its output (= LLM) width."""

    depth: int = 32
    embed_dim: int = 1280
    hidden_size: int = 1536
    hidden_act: str = "quick_gelu"
    mlp_ratio: float = 4.0
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = PATCH_SIZE  # the official loader forces 14 whatever the file says
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2


@dataclass
class DinoConfig:
    """DINOv2 with registers (geometry path encoder)."""

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    mlp_ratio: float = 4.0
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    image_size: int = 518
    patch_size: int = PATCH_SIZE
    num_channels: int = 3
    qkv_bias: bool = True
    layerscale_value: float = 1.0
    use_swiglu_ffn: bool = False
    num_register_tokens: int = 4

    def validate(self) -> None:
        if self.use_swiglu_ffn:
            raise ConfigError("DINO SwiGLU FFN is not supported (the released model uses an MLP)")
        if self.hidden_act != "gelu":
            raise ConfigError(f"unsupported DINO hidden_act '{self.hidden_act}'")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError("DINO hidden_size is not divisible by its heads")


@dataclass
class G2VLMConfig:
    text: TextConfig = field(default_factory=TextConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    dino: DinoConfig = field(default_factory=DinoConfig)
    has_confidence_head: bool = False  # train_conf_pi3 in the official code; false in the release

    def validate(self) -> None:
        self.text.validate()
        self.dino.validate()
        if self.text.hidden_size % HEAD_DECODER_HEADS:
            raise ConfigError(f"LLM width {self.text.hidden_size} is not divisible by the {HEAD_DECODER_HEADS} "
                              "heads of the geometry decoders")
        if self.vision.hidden_size != self.text.hidden_size:
            raise ConfigError("vision tower output width must equal the LLM width")

    # ------------------------------------------------------------------ files
    FILES = {"text": "text_config.json", "vision": "vit_config.json", "dino": "dino_config.json"}

    @classmethod
    def from_folder(cls, folder: str | Path) -> G2VLMConfig:
        folder = Path(folder)
        parts = {}
        for name, filename in cls.FILES.items():
            path = folder / filename
            if not path.is_file():
                raise ConfigError(f"checkpoint folder {folder} has no {filename}")
            try:
                values = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as error:
                raise ConfigError(f"cannot read {path}: {error}") from error
            if name == "text" and "vision_config" in values:
                values = {k: v for k, v in values.items() if k != "vision_config"}
            parts[name] = values
        vision = _pick(VisionConfig, parts["vision"])
        vision.patch_size = PATCH_SIZE
        config = cls(text=_pick(TextConfig, parts["text"]), vision=vision, dino=_pick(DinoConfig, parts["dino"]),
                     has_confidence_head=bool(parts["text"].get("train_conf_pi3", False)))
        config.validate()
        return config

    def write(self, folder: str | Path) -> None:
        """Writes the three JSON files with the fields the official loaders read."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        text = asdict(self.text) | {
            "model_type": "qwen2_vl", "qk_norm": True, "tie_word_embeddings": False,
            "layer_module": "Qwen2VLMoTDecoderLayer", "use_sliding_window": False, "attention_dropout": 0.0,
            "rope_scaling": {"type": "default", "rope_type": "default", "mrope_section": list(MROPE_SECTION)},
        }
        vision = asdict(self.vision) | {"model_type": "qwen2_vl"}
        dino = asdict(self.dino) | {"model_type": "dinov2_with_registers", "hidden_dropout_prob": 0.0,
                                    "attention_probs_dropout_prob": 0.0, "drop_path_rate": 0.0,
                                    "apply_layernorm": True}
        for name, values in (("text", text), ("vision", vision), ("dino", dino)):
            (folder / self.FILES[name]).write_text(json.dumps(values, indent=1, sort_keys=True))


def tiny_config(num_layers: int = 2, num_heads: int = 1, num_kv_heads: int = 1, vocab_size: int = 1000,
                dino_width: int = 32, dino_layers: int = 2, dino_heads: int = 2) -> G2VLMConfig:
    """A few-MB configuration for tests: head_dim stays 128 as the M-RoPE sections require."""
    hidden = 128 * num_heads
    config = G2VLMConfig(
        text=TextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                        max_position_embeddings=4096),
        vision=VisionConfig(depth=1, embed_dim=32, hidden_size=hidden, mlp_ratio=2.0, num_heads=2),
        dino=DinoConfig(hidden_size=dino_width, num_hidden_layers=dino_layers, num_attention_heads=dino_heads),
    )
    config.validate()
    return config
