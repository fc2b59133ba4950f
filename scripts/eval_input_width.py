"""Accuracy against input width on the held-out procedural scenes (CPU, fp32, demo model).

    python3 scripts/eval_input_width.py [--scenes 8] [--views 2 4] [--widths 518 392 336 280]

Each width renders the same scenes (same seeds) at width x height (4:3 rounded to patch
multiples) and scores the model's depth and poses against the exact ground truth rendered at that
size (scale-free metrics of g2vlm_ros.training.evaluate). Used for the Orin preset's input width.
"""
import argparse
import json
import time

import torch

from g2vlm_ros.backends.registry import DEMO_CHECKPOINT
from g2vlm_ros.backends.torch_backend import folder_token_ids
from g2vlm_ros.model import load_checkpoint
from g2vlm_ros.model.config import PATCH_SIZE
from g2vlm_ros.training.evaluate import evaluate

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--scenes", type=int, default=8)
parser.add_argument("--views", type=int, nargs="+", default=[2, 4])
parser.add_argument("--widths", type=int, nargs="+", default=[518, 392, 336, 280])
parser.add_argument("--json")
args = parser.parse_args()
torch.set_num_threads(2)
model = load_checkpoint(DEMO_CHECKPOINT, device="cpu", dtype=torch.float32)
prompt, special = folder_token_ids(DEMO_CHECKPOINT)
rows = []
for width in args.widths:
    height = round(width * 0.75 / PATCH_SIZE) * PATCH_SIZE  # 518 -> 392, as a 640x480 camera after preprocessing
    for views in args.views:
        started = time.perf_counter()
        metrics = evaluate(model, args.scenes, views, height, width, torch.device("cpu"), prompt, special)
        rows.append({"width": width, "height": height, "views": views, **metrics})
        print(f"{width}x{height} {views} views: {metrics} ({time.perf_counter() - started:.0f} s)", flush=True)
print(f"\n{'input':>8} {'views':>5} {'AbsRel':>8} {'d<1.25':>8} {'rot deg':>8} {'trans deg':>9}")
for row in rows:
    print(f"{row['width']}x{row['height']:<4} {row['views']:>5} {row['depth_abs_rel']:>8.4f} "
          f"{row['depth_delta_1_25']:>8.4f} {row['rotation_deg']:>8.2f} {row['translation_deg']:>9.2f}")
if args.json:
    with open(args.json, "w") as handle:
        json.dump(rows, handle, indent=1)
