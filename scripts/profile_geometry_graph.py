"""Profiles the GPU work of the captured geometry network (GeometryGraph) of the full-size model
(random bf16 weights): the top kernels by GPU time, for each view count.

    python3 scripts/profile_geometry_graph.py 1 8
"""
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from g2vlm_ros.cli.bench_model import PROMPT_IDS, SPECIAL, build_model
from g2vlm_ros.deploy.export import Bucket, GeometryGraph

model = build_model("full", torch.device("cuda"), torch.bfloat16, seed=0)
for views in [int(v) for v in sys.argv[1:]] or [1]:
    network = GeometryGraph(model, Bucket(views, 392, 518), PROMPT_IDS, SPECIAL).eval()
    images = torch.rand(views, 3, 392, 518, device="cuda")
    with torch.no_grad():
        for _ in range(3):
            network(images)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            network(images)
            torch.cuda.synchronize()
    events = prof.key_averages()
    total = sum(event.device_time_total for event in events)
    print(f"===== {views} view(s): GPU time {total / 1e3:.2f} ms in kernels")
    print(events.table(sort_by="device_time_total", row_limit=25, max_name_column_width=90))
