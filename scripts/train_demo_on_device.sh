#!/usr/bin/env bash
# One call of the demo model's training on the GPU machine (device tool: at most 10 minutes a call).
#   bash scripts/train_demo_on_device.sh RUN_DIR MINUTES [--resume] [--profile]
# Trains for MINUTES (resuming RUN_DIR when asked) on an 18-minute schedule, evaluates on the
# held-out scenes and copies the bf16 checkpoint (split in 12 MB pieces), the log and the
# evaluation to $OUT. Join the pieces with: cat model.safetensors.part* > model.safetensors
set -euo pipefail
run_dir=$1; minutes=$2; shift 2
resume=""; profile=0
for arg in "$@"; do
  case $arg in --resume) resume="--resume" ;; --profile) profile=1 ;; esac
done
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
if [ "$profile" = 1 ]; then python3 scripts/profile_training_step.py 2>&1 | head -40; fi
python3 -m g2vlm_ros.training.train --out "$run_dir" --minutes "$minutes" --schedule-minutes 18 \
  --batch 16 --lr 4e-4 --log-every 50 $resume
python3 -m g2vlm_ros.training.evaluate "$run_dir" --scenes 16 --views 2 4 --json "$run_dir/evaluation.json"
if [ -n "${OUT:-}" ]; then
  split -b 12M "$run_dir/model.safetensors" "$OUT/model.safetensors.part"
  cp "$run_dir"/training_log.jsonl "$run_dir"/evaluation.json "$run_dir"/*.json "$OUT/" 2>/dev/null || true
fi
