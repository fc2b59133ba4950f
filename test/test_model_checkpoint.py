"""Loading and writing checkpoints in the official layout: key checks, dtypes, tokenizer, memory."""
import json
import shutil
import subprocess
import sys
from typing import Optional

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from g2vlm_ros.model import CheckpointError, load_checkpoint, tiny_config, write_random_checkpoint
from g2vlm_ros.model.checkpoint import WEIGHTS_FILE

SPECIAL = {"bos_token_id": 1, "eos_token_id": 2, "start_of_image": 3, "end_of_image": 4}


def copy_with_tensors(source, destination, edit):
    """Copies a checkpoint folder, passing its tensor dict through `edit` first."""
    shutil.copytree(source, destination)
    with safe_open(str(source / WEIGHTS_FILE), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    save_file(edit(tensors), str(destination / WEIGHTS_FILE))
    return destination


def run(model, views=2):
    return model.reconstruct(torch.rand(views, 3, 42, 56, generator=torch.Generator().manual_seed(0)),
                             prefix_token_ids=[10, 11, 12], special_token_ids=SPECIAL)


def test_written_checkpoint_round_trips_in_the_official_layout(tiny_checkpoint, tmp_path):
    assert sorted(p.name for p in tiny_checkpoint.iterdir()) == [
        "dino_config.json", "model.safetensors", "text_config.json", "vit_config.json"]
    text = json.loads((tiny_checkpoint / "text_config.json").read_text())
    assert (text["num_attention_heads"], text["num_key_value_heads"], text["qk_norm"]) == (2, 1, True)
    with safe_open(str(tiny_checkpoint / WEIGHTS_FILE), framework="pt") as handle:
        keys = set(handle.keys())
    assert "language_model.model.layers.0.self_attn.q_proj_moe_geo.weight" in keys
    assert "dino_model.encoder.layer.1.layer_scale2.lambda1" in keys and "global_point_head.proj.bias" in keys
    model = load_checkpoint(tiny_checkpoint)
    first = run(model)
    again = run(load_checkpoint(tiny_checkpoint))
    torch.testing.assert_close(first["points"], again["points"], rtol=0, atol=0)
    assert not model.training and all(not p.requires_grad for p in model.parameters())


def test_renamed_tensor_is_refused_naming_both_keys(tiny_checkpoint, tmp_path):
    def rename(tensors):
        tensors["point_head.projection.weight"] = tensors.pop("point_head.proj.weight")
        return tensors

    folder = copy_with_tensors(tiny_checkpoint, tmp_path / "renamed", rename)
    with pytest.raises(CheckpointError, match=r"unexpected tensors.*point_head\.projection\.weight"):
        load_checkpoint(folder)


def test_missing_tensor_is_refused_naming_it_unless_allowed(tiny_checkpoint, tmp_path):
    def drop(tensors):
        del tensors["camera_head.fc_rot.weight"]
        del tensors["language_model.model.layers.1.ls1.gamma"]
        return tensors

    folder = copy_with_tensors(tiny_checkpoint, tmp_path / "missing", drop)
    with pytest.raises(CheckpointError, match=r"missing tensors: camera_head\.fc_rot\.weight, "
                                              r"language_model\.model\.layers\.1\.ls1\.gamma"):
        load_checkpoint(folder)
    model = load_checkpoint(folder, allow_missing=True)  # the official strict=False behaviour
    assert torch.all(model.language_model.model.layers[1].ls1.gamma == 0.01)  # official initial value
    assert model.camera_head.fc_rot.weight.shape == (9, 512)
    assert torch.isfinite(run(model)["camera_poses"]).all()


def test_wrong_shape_is_refused_naming_the_tensor(tiny_checkpoint, tmp_path):
    def reshape(tensors):
        tensors["dino2llm.weight"] = torch.zeros(256, 16)
        return tensors

    folder = copy_with_tensors(tiny_checkpoint, tmp_path / "shape", reshape)
    with pytest.raises(CheckpointError, match=r"wrong shape: dino2llm\.weight \[256, 16\] \(expected \[256, 32\]\)"):
        load_checkpoint(folder)


@pytest.mark.parametrize("damage, message", [
    (lambda folder: (folder / WEIGHTS_FILE).write_bytes((folder / WEIGHTS_FILE).read_bytes()[:1000]),
     "not a valid safetensors file"),
    (lambda folder: (folder / WEIGHTS_FILE).unlink(), "no model.safetensors"),
    (lambda folder: (folder / "dino_config.json").unlink(), "has no dino_config.json"),
    (lambda folder: (folder / "text_config.json").write_text("{not json"), "cannot read"),
])
def test_damaged_folders_give_clear_errors(tiny_checkpoint, tmp_path, damage, message):
    folder = tmp_path / "damaged"
    shutil.copytree(tiny_checkpoint, folder)
    damage(folder)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(folder)


def test_truncated_tensor_data_is_an_error(tiny_checkpoint, tmp_path):
    folder = tmp_path / "truncated"
    shutil.copytree(tiny_checkpoint, folder)
    data = (folder / WEIGHTS_FILE).read_bytes()
    (folder / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])  # header intact, data cut
    with pytest.raises(CheckpointError):
        load_checkpoint(folder)


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


@pytest.mark.parametrize("dtype", ["bf16", "fp16", torch.bfloat16])
def test_reduced_precision_loads_and_stays_close_to_fp32(tiny_checkpoint, dtype):
    reference = run(load_checkpoint(tiny_checkpoint, dtype="fp32"))
    model = load_checkpoint(tiny_checkpoint, dtype=dtype)
    assert model.dtype in (torch.bfloat16, torch.float16)
    out = run(model)
    assert out["points"].dtype == torch.float32  # heads run in fp32 as in the official code
    error = (out["local_points"] - reference["local_points"]).abs().max() / reference["local_points"].abs().max()
    assert error < 0.05


def test_unknown_dtype_is_refused(tiny_checkpoint):
    with pytest.raises(ValueError, match="unsupported dtype 'int8'"):
        load_checkpoint(tiny_checkpoint, dtype="int8")


def write_tokenizer(folder, cover_vocab: Optional[int] = None):
    """A small word-level tokenizer with the Qwen chat markers, in Hugging Face files.

    With `cover_vocab`, filler words w<i> give every id below it a text (the 4 markers included), so
    whatever a model of that vocabulary generates decodes to text.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "Reconstruct", "the", "3D", "scene", ".", "\n", "user", "assistant", "system"]
    if cover_vocab is not None:
        words += [f"w{index}" for index in range(cover_vocab - len(words) - 4)]  # 4 markers are added below
    vocab = {word: index for index, word in enumerate(words)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", "isolated"),
                                                        pre_tokenizers.WhitespaceSplit(),
                                                        pre_tokenizers.Punctuation()])
    tokenizer.add_special_tokens(["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"])
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))


def test_tokenizer_in_the_folder_provides_prompt_and_special_ids(tiny_checkpoint, tmp_path):
    pytest.importorskip("transformers")
    folder = tmp_path / "with_tokenizer"
    shutil.copytree(tiny_checkpoint, folder)
    write_tokenizer(folder)
    model = load_checkpoint(folder)
    assert model.special_token_ids == {"bos_token_id": 10, "eos_token_id": 11, "start_of_image": 12,
                                       "end_of_image": 13}
    assert model.tokenizer.encode("Reconstruct the 3D scene.") == [1, 2, 3, 4, 5]
    images = torch.rand(1, 3, 28, 28)
    implicit = model.reconstruct(images)
    explicit = model.reconstruct(images, prefix_token_ids=[1, 2, 3, 4, 5],
                                 special_token_ids=model.special_token_ids)
    torch.testing.assert_close(implicit["points"], explicit["points"], rtol=0, atol=0)


def test_without_tokenizer_the_token_ids_must_be_given(tiny_checkpoint):
    model = load_checkpoint(tiny_checkpoint)
    with pytest.raises(ValueError, match="special token ids"):
        model.reconstruct(torch.rand(1, 3, 28, 28))


# VmHWM (peak RSS of this process image), not ru_maxrss: the latter inherits the parent's peak
MEMORY_PROBE = """
import sys, torch
from g2vlm_ros.model import load_checkpoint

def peak_kb():
    return next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM'))

before = peak_kb()
model = load_checkpoint(sys.argv[1])
total = sum(float(p.double().sum()) for p in model.parameters())  # page every parameter in
size = sum(p.numel() * p.element_size() for p in model.parameters())
print((peak_kb() - before) * 1024 / size)
"""


def test_loading_needs_about_one_model_size_of_memory(tmp_path):
    """Meta-device construction + per-tensor loading: peak growth stays well below twice the model."""
    config = tiny_config(num_layers=4, num_heads=4, num_kv_heads=2)  # ~50M parameters, ~200 MB in fp32
    config.text.intermediate_size = 4096
    folder = write_random_checkpoint(config, tmp_path / "big")
    ratio = float(subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(folder)], capture_output=True, text=True,
                                 check=True).stdout.strip().splitlines()[-1])
    assert 0.8 < ratio < 1.5, f"loading grew the peak RSS by {ratio:.2f}x the model size"


def test_confidence_head_is_detected_and_reported_only_when_present(tmp_path):
    config = tiny_config()
    config.has_confidence_head = True
    folder = write_random_checkpoint(config, tmp_path / "conf")
    with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as handle:
        assert "conf_head.proj.weight" in set(handle.keys())
    out = run(load_checkpoint(folder))
    assert set(out) >= {"conf", "confidence"} and out["confidence"].shape == (2, 42, 56)
    assert ((out["confidence"] >= 0) & (out["confidence"] <= 1)).all()
    without = run(load_checkpoint(write_random_checkpoint(tiny_config(), tmp_path / "plain")))
    assert "confidence" not in without and without.confidence is None
