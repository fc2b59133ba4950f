"""G2VLM in PyTorch, ROS-free: loads the official checkpoint layout and reproduces the official outputs.

    from g2vlm_ros.model import load_checkpoint, preprocess
    model = load_checkpoint(folder, device="cpu", dtype=torch.float32)
    out = model.reconstruct(preprocess(list_of_rgb_uint8_images))
"""
from g2vlm_ros.model.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    write_random_checkpoint,
)
from g2vlm_ros.model.config import ConfigError, G2VLMConfig, tiny_config
from g2vlm_ros.model.g2vlm import G2VLM
from g2vlm_ros.model.preprocess import preprocess

__all__ = ["CheckpointError", "ConfigError", "G2VLM", "G2VLMConfig", "load_checkpoint", "preprocess",
           "save_checkpoint", "tiny_config", "write_random_checkpoint"]
