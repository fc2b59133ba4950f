"""Loading and writing G2VLM checkpoints in the official folder layout.

Loading builds the model on the `meta` device and fills it one tensor at a time from the
memory-mapped safetensors file(s), converting each to the requested dtype and device, so peak
host memory stays near the size of the converted model instead of twice the checkpoint.

Key checks: a tensor the model does not have, or one whose shape differs, is an error naming
the keys. So is a tensor the model needs but the file lacks, unless `allow_missing=True`: then,
like the official loader (load_state_dict with strict=False), absent parameters keep the official
code's initial values. Constant ones (norm scales, layer scales, zero biases of the Hugging Face
sub-models, DINO's mask/register tokens, the zero-initialised dino2llm) are reproduced exactly;
random ones are drawn from the official distributions. Every absent key is logged.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from g2vlm_ros.model.config import LAYER_SCALE_INIT, ConfigError, G2VLMConfig
from g2vlm_ros.model.g2vlm import G2VLM, SPECIAL_TOKENS
from g2vlm_ros.precision import PRECISIONS

LOG = logging.getLogger("g2vlm_ros.model")
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
# in PRECISIONS' order; strict, so a precision added there without a dtype here fails at import
TORCH_DTYPES = dict(zip(PRECISIONS, (torch.float32, torch.float16, torch.bfloat16), strict=True))
DTYPES = {**TORCH_DTYPES, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
INIT_STD = 0.02  # initializer_range of the Qwen2-VL configs


class CheckpointError(RuntimeError):
    """The checkpoint folder cannot be loaded; the message names the file or keys at fault."""


def resolve_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}")
        return dtype
    try:
        return DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unsupported dtype '{dtype}'; use one of {', '.join(DTYPES)}") from None


def weight_files(folder: Path) -> dict[str, Path]:
    """tensor name -> file holding it, for a single file or a sharded index."""
    index = folder / WEIGHTS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as error:
            raise CheckpointError(f"unreadable {index}: {error}") from error
        return {name: folder / shard for name, shard in weight_map.items()}
    single = folder / WEIGHTS_FILE
    if not single.is_file():
        raise CheckpointError(f"no {WEIGHTS_FILE} or {WEIGHTS_INDEX} in {folder}")
    try:
        with safe_open(str(single), framework="pt") as handle:
            return {name: single for name in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{single} is not a valid safetensors file: {error}") from error


def _describe(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


HF_SUBMODELS = ("language_model.", "vit_model.", "dino_model.")  # initialised by Hugging Face _init_weights


def initial_value(name: str, shapes: dict[str, torch.Size], config: G2VLMConfig) -> torch.Tensor:
    """What the official code's initialisation gives parameter `name` (random ones: a fresh draw).

    `shapes` maps every parameter name to its shape (a bias's fan-in comes from its weight).
    """
    shape, leaf = shapes[name], name.rsplit(".", 1)[-1]
    if name.endswith(("ls1.gamma", "ls2.gamma")):
        return torch.full(shape, LAYER_SCALE_INIT)
    if name.endswith(".lambda1"):
        return torch.full(shape, config.dino.layerscale_value)
    if name.startswith("dino2llm.") or name.endswith(("mask_token", "register_tokens")):
        return torch.zeros(shape)
    if leaf == "weight" and len(shape) == 1:  # RMSNorm / LayerNorm scales
        return torch.ones(shape)
    weight_shape = shapes.get(name[: -len("bias")] + "weight")
    is_norm_bias = weight_shape is not None and len(weight_shape) == 1
    if name.startswith(HF_SUBMODELS):
        if leaf == "bias":
            return torch.zeros(shape)
        draw = torch.randn(shape) * INIT_STD
        return draw.clamp(-2 * INIT_STD, 2 * INIT_STD) if name.startswith("dino_model.") else draw
    if leaf == "bias":  # π³ heads: PyTorch's default Linear init; LayerNorm biases start at zero
        if is_norm_bias:
            return torch.zeros(shape)
        bound = 1.0 / (weight_shape[1] ** 0.5)
        return torch.empty(shape).uniform_(-bound, bound)
    bound = 1.0 / (shape[1] ** 0.5)  # kaiming_uniform(a=sqrt(5)) reduces to U(-1/sqrt(fan_in), ...)
    return torch.empty(shape).uniform_(-bound, bound)


def _set_tensor(model: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    module._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)


def _has_confidence_head(names) -> bool:
    return any(name.startswith("conf_head.") for name in names)


def load_checkpoint(folder: Union[str, Path], device: Union[str, torch.device] = "cpu",
                    dtype: Union[str, torch.dtype] = torch.float32, allow_missing: bool = False) -> G2VLM:
    """Loads a checkpoint folder in the official layout; returns the model in eval mode.

    Raises CheckpointError naming the files or tensors at fault (see the module docstring).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    dtype = resolve_dtype(dtype)
    try:
        config = G2VLMConfig.from_folder(folder)
    except ConfigError as error:
        raise CheckpointError(str(error)) from error
    files = weight_files(folder)
    config.has_confidence_head = _has_confidence_head(files)
    with torch.device("meta"):
        model = G2VLM(config)
    expected = dict(model.state_dict())

    unexpected = sorted(set(files) - set(expected))
    if unexpected:
        raise CheckpointError(f"{folder}: unexpected tensors (not part of G2VLM): {_describe(unexpected)}")
    mismatched = []
    by_file: dict[Path, list[str]] = {}
    for name, path in files.items():
        by_file.setdefault(path, []).append(name)
    for path, names in by_file.items():
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for name in names:
                    shape = tuple(handle.get_slice(name).get_shape())
                    if shape != tuple(expected[name].shape):
                        mismatched.append(f"{name} {list(shape)} (expected {list(expected[name].shape)})")
                if mismatched:
                    continue
                for name in names:
                    _set_tensor(model, name, handle.get_tensor(name).to(device=device, dtype=dtype))
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"cannot read {path}: {error}") from error
    if mismatched:
        raise CheckpointError(f"{folder}: tensors with the wrong shape: {_describe(mismatched)}")

    missing = sorted(set(expected) - set(files))
    if missing and not allow_missing:
        raise CheckpointError(f"{folder}: missing tensors: {_describe(missing)} (allow_missing=True keeps their "
                              "official initial values, as the official loader does)")
    if missing:
        LOG.warning("%s: %d tensors absent from the checkpoint keep their initial values: %s",
                    folder, len(missing), _describe(missing))
    shapes = {name: tensor.shape for name, tensor in expected.items()}
    for name in missing:
        _set_tensor(model, name, initial_value(name, shapes, config).to(device=device, dtype=dtype))
    model.eval()
    model.tokenizer, model.special_token_ids = load_tokenizer(folder)
    return model


def load_tokenizer(folder: Path):
    """(tokenizer, special token ids) from the folder's tokenizer files, or (None, None) without them.

    The official loader adds the four chat/vision markers when the tokenizer lacks them; so do we.
    """
    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.json", "tokenizer_config.json")):
        return None, None
    from transformers import AutoTokenizer  # heavy import, only for folders that ship a tokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as error:  # transformers raises many types for broken tokenizer files
        raise CheckpointError(f"cannot load the tokenizer in {folder}: {error}") from error
    present = set(tokenizer.get_vocab())
    absent = [token for token in SPECIAL_TOKENS.values() if token not in present]
    if absent:
        tokenizer.add_tokens(absent, special_tokens=True)
    special = {key: tokenizer.convert_tokens_to_ids(token) for key, token in SPECIAL_TOKENS.items()}
    return tokenizer, special


def randomize(model: G2VLM, seed: int, std: float = INIT_STD) -> G2VLM:
    """Gives every parameter a random value (norm scales around 1), so that no path is degenerate.

    Values are drawn on the parameters' device (a full-size model stays on the GPU).
    """
    generators: dict[torch.device, torch.Generator] = {}
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            generator = generators.setdefault(parameter.device,
                                              torch.Generator(device=parameter.device).manual_seed(seed))
            noise = torch.randn(parameter.shape, generator=generator, device=parameter.device) * std
            is_scale = name.rsplit(".", 1)[-1] in ("weight", "gamma", "lambda1") and parameter.ndim == 1
            parameter.copy_(1.0 + noise if is_scale else noise)
    return model


def _owned(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor with storage of its own: safetensors refuses views into shared storage, which
    fused projections are (see model.fused)."""
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        return tensor.clone()
    return tensor


def save_checkpoint(model: G2VLM, folder: Union[str, Path], dtype: Optional[Union[str, torch.dtype]] = None) -> Path:
    """Writes config JSONs and model.safetensors in the official layout; returns the folder."""
    folder = Path(folder)
    model.config.write(folder)
    target = resolve_dtype(dtype) if dtype is not None else None
    tensors = {name: _owned((t.to(target) if target is not None else t).detach().cpu().contiguous())
               for name, t in model.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    return folder


def write_random_checkpoint(config: G2VLMConfig, folder: Union[str, Path], seed: int = 0,
                            dtype: Union[str, torch.dtype] = torch.float32) -> Path:
    """A randomly initialised G2VLM of `config` saved in the official layout (for tests and tools)."""
    torch.manual_seed(seed)
    model = randomize(G2VLM(config), seed)
    return save_checkpoint(model, folder, dtype)
