"""Trains the small demo G2VLM on procedural scenes (g2vlm_ros.training.scenes); a GPU job, not a test.

  python -m g2vlm_ros.training.train --out /tmp/demo --minutes 9            # fresh run
  python -m g2vlm_ros.training.train --out /tmp/demo --minutes 9 --resume   # continue it
  python -m g2vlm_ros.training.train --out /tmp/demo --minutes 8 --init g2vlm_ros/demo_model  # fine-tune

Same model code as the released checkpoint (official key layout), a small configuration
(DEMO_CONFIG), the geometry path only, π³-style scale-invariant losses (training.losses). Scenes are
rendered on the GPU at the node's input size (392x518), a fresh batch per step, seeded by the
step, so a run is reproducible. By default the cameras walk forwards, backwards, sideways,
in reverse order or turn back (scenes.WALKS): a model that only sees forward walks predicts
forward motion for every pair of views. All scenes of a step go through the model as one batch
([B,V,3,H,W]): the model is small, so a per-scene loop would leave the GPU waiting on kernel
launches (docs/demo_model.md). Each save writes the checkpoint folder (config JSONs,
model.safetensors in bf16, token_ids.json) plus train_state.pt (fp32 weights and optimizer, for
--resume) and appends a line per log interval to training_log.jsonl.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from g2vlm_ros.model import G2VLM, load_checkpoint, save_checkpoint, tiny_config
from g2vlm_ros.model.checkpoint import initial_value
from g2vlm_ros.training.losses import LossWeights, batch_losses
from g2vlm_ros.training.scenes import MOTIONS, render_scenes

# the demo model: 4 text layers of width 128 per expert, a 6-layer DINO of width 192; about 12 M parameters
DEMO_CONFIG = {"num_layers": 4, "num_heads": 1, "num_kv_heads": 1, "dino_width": 192, "dino_layers": 6,
               "dino_heads": 3, "vocab_size": 1000}
# token ids of the geometry prompt for a checkpoint without a tokenizer (see TorchBackend / token_ids.json)
SPECIAL = {"bos_token_id": 644, "eos_token_id": 645, "start_of_image": 652, "end_of_image": 653}
PROMPT_IDS = [693, 596, 279, 220, 18, 35, 109, 13]


def build_model(device: torch.device, seed: int) -> G2VLM:
    """The demo configuration with the official initialisation (what load_checkpoint gives missing keys)."""
    config = tiny_config(**DEMO_CONFIG)
    torch.manual_seed(seed)
    model = G2VLM(config)
    shapes = {name: parameter.shape for name, parameter in model.named_parameters()}
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(initial_value(name, shapes, config))
    return model.to(device)


def geometry_forward(model: G2VLM, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The differentiable part of G2VLM.reconstruct: images [V,3,H,W] of one scene or [B,V,3,H,W] of
    B scenes -> raw head outputs (with the leading B axis when given)."""
    cache = model.prefix_cache(PROMPT_IDS, SPECIAL)
    tokens, _, _ = model.encode_geometry_tokens(images, cache, SPECIAL)
    return model.decode_geometry_raw(tokens, images.shape[-2], images.shape[-1])


def save_weights(model: G2VLM, folder: Path) -> None:
    """The checkpoint folder alone (config JSONs, bf16 model.safetensors, token_ids.json): what ships."""
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, folder, dtype="bf16")
    (folder / "token_ids.json").write_text(json.dumps({"prompt_token_ids": PROMPT_IDS, "special_token_ids": SPECIAL}))


def save(model: G2VLM, optimizer, step: int, trained_minutes: float, folder: Path) -> None:
    save_weights(model, folder)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "trained_minutes": trained_minutes},
               folder / "train_state.pt")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=9.0, help="wall-clock budget of this run")
    parser.add_argument("--total-steps", type=int, default=6000, help="steps of the whole schedule (LR decay)")
    parser.add_argument("--schedule-minutes", type=float, default=0.0,
                        help="if > 0: the schedule spans this much training time (over all resumed runs) instead "
                             "of --total-steps, so a run fills a time budget whatever the GPU")
    parser.add_argument("--batch", type=int, default=16, help="scenes per step")
    parser.add_argument("--views", type=int, nargs="+", default=[2, 3, 4], help="views per scene, drawn per step")
    parser.add_argument("--height", type=int, default=392)
    parser.add_argument("--width", type=int, default=518)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--init", type=Path, help="start from this checkpoint folder's weights (a fine-tune; "
                        "fresh optimizer and schedule); --resume takes precedence")
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--motion", choices=MOTIONS, default="mixed",
                        help="camera walks of the training scenes (scenes.WALKS, ROBOT_WALKS); "
                             "'forward' as in runs 1 and 2")
    parser.add_argument("--direction-weight", type=float, default=0.0,
                        help="weight of the loss on the direction of each pair's translation (losses.py); 0: off")
    parser.add_argument("--snapshot-minutes", type=float, nargs="*", default=[],
                        help="also keep the weights after this many minutes of this run, in OUT/snapshot_<minutes>: "
                             "one call then gives more than one candidate to evaluate")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    model = build_model(device, args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05, betas=(0.9, 0.95))
    step, previous_minutes = 0, 0.0
    if args.resume:
        state = torch.load(args.out / "train_state.pt", map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        previous_minutes = state.get("trained_minutes", 0.0)
    elif args.init is not None:
        model.load_state_dict(load_checkpoint(args.init, device=device, dtype=torch.float32).state_dict())
    model.train()
    weights = LossWeights(direction=args.direction_weight)
    parameters = sum(p.numel() for p in model.parameters())
    start = f"from step {step}" if args.resume else (f"from {args.init}" if args.init else "from initialisation")
    print(f"demo G2VLM: {parameters / 1e6:.2f} M parameters on {device}, {start}, {args.motion} walks", flush=True)
    log = (args.out / "training_log.jsonl")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sums: dict[str, torch.Tensor] = {}
    counted = 0
    snapshots = sorted(args.snapshot_minutes)

    def trained_minutes() -> float:
        return previous_minutes + (time.perf_counter() - started) / 60

    def progress() -> float:
        if args.schedule_minutes > 0:
            return trained_minutes() / args.schedule_minutes
        return step / args.total_steps

    while progress() < 1.0 and time.perf_counter() - started < args.minutes * 60:
        warmup = min(1.0, (step + 1) / max(1, args.warmup_steps))
        lr = args.lr * warmup * 0.5 * (1 + math.cos(math.pi * min(progress(), 1.0)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        views = args.views[step % len(args.views)]
        batch = render_scenes(args.batch, views, args.height, args.width, seed=args.seed * 1_000_003 + step,
                              device=device, motion=args.motion)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            raw = geometry_forward(model, batch.images)
        parts = batch_losses(raw, batch.camera_to_world, batch.depth, batch.intrinsics, weights)
        loss = parts["total"]
        if not torch.isfinite(loss):
            print(f"step {step}: non-finite loss, batch skipped", flush=True)
            step += 1
            continue
        loss.backward()
        parts["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        for key, value in parts.items():  # summed on the device: no extra host sync per step
            sums[key] = sums.get(key, 0.0) + value.detach()
        counted += 1
        step += 1
        if step % args.log_every == 0:
            entry = {"step": step, "lr": lr, "minutes": trained_minutes(),
                     **{key: float(value) / counted for key, value in sums.items()}}
            print(json.dumps(entry), flush=True)
            with log.open("a") as handle:
                handle.write(json.dumps(entry) + "\n")
            sums, counted = {}, 0
        if snapshots and time.perf_counter() - started >= snapshots[0] * 60:
            save_weights(model, args.out / f"snapshot_{snapshots.pop(0):g}")
            print(f"snapshot at step {step}", flush=True)
    save(model, optimizer, step, trained_minutes(), args.out)
    print(f"saved step {step} to {args.out} after {trained_minutes():.1f} min of training", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
