"""Checks that the CUDA path computes the same geometry as the CPU path (fp32, TF32 off).

    python3 scripts/gpu_cpu_agreement.py        # on a machine with a GPU
"""
import torch

from g2vlm_ros.model import G2VLM, tiny_config
from g2vlm_ros.model.checkpoint import randomize

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
SPECIAL = {"bos_token_id": 1, "eos_token_id": 2, "start_of_image": 3, "end_of_image": 4}
model = randomize(G2VLM(tiny_config(num_heads=2, num_kv_heads=1)), seed=3).eval()
images = torch.rand(3, 3, 392, 518, generator=torch.Generator().manual_seed(0))
cpu = model.reconstruct(images, prefix_token_ids=[10, 11, 12], special_token_ids=SPECIAL)
gpu = model.cuda().reconstruct(images.cuda(), prefix_token_ids=[10, 11, 12], special_token_ids=SPECIAL)
for key in ("local_points", "points", "global_points", "camera_poses"):
    error = (gpu[key].cpu() - cpu[key]).abs().max() / cpu[key].abs().max()
    print(f"{key:14s} relative error GPU vs CPU (fp32): {error:.2e}")
    assert error < 1e-4, key
print("GPU and CPU agree")
