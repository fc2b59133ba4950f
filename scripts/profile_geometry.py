"""Profiles one `reconstruct` call of the full-size model (random bf16 weights) on CUDA.

    python3 scripts/profile_geometry.py 1 8     # view counts; prints the top ops by CUDA and CPU time
"""
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from g2vlm_ros.cli.bench_model import PROMPT_IDS, SPECIAL, build_model

model = build_model("full", torch.device("cuda"), torch.bfloat16, seed=0)
for views in [int(v) for v in sys.argv[1:]] or [1]:
    images = torch.rand(views, 3, 392, 518, device="cuda")

    def run(images=images):
        return model.reconstruct(images, prefix_token_ids=PROMPT_IDS, special_token_ids=SPECIAL)

    for _ in range(3):
        run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    print(f"===== {views} view(s): by CUDA time")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
    print(f"===== {views} view(s): by CPU time")
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=14, max_name_column_width=60))
