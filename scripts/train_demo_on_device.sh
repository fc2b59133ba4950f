#!/usr/bin/env bash
# One call of the demo model's training on the GPU machine (device tool: at most 10 minutes a call).
#   bash scripts/train_demo_on_device.sh RUN_DIR MINUTES [--resume] [--profile] [-- TRAIN_ARGS...]
# Trains for MINUTES (resuming RUN_DIR when asked) on an 18-minute schedule, evaluates on the
# held-out scenes (forward walks, and the mixed walks of training) and copies the bf16 checkpoint
# (split in 12 MB pieces), the log and the evaluations to $OUT. TRAIN_ARGS go to train.py last, so
# they override the defaults here; a fine-tune of the shipped model for 8 minutes:
#   bash scripts/train_demo_on_device.sh RUN_DIR 8 -- --init g2vlm_ros/demo_model --schedule-minutes 8 \
#     --lr 1.5e-4 --warmup-steps 50
# Join the pieces with: cat model.safetensors.part* > model.safetensors (a snapshot's: snapshot_M.model.safetensors.part*;
# its config files are the final checkpoint's)
# For --resume, keep RUN_DIR outside the repository (e.g. /tmp/run), on a machine that stays up between the two
# calls: a runner that refreshes the repository's copy before each call removes a run folder inside it (run 6).
set -euo pipefail
run_dir=$1; minutes=$2; shift 2
resume=""; profile=0; extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --resume) resume="--resume" ;;
    --profile) profile=1 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
if [ "$profile" = 1 ]; then python3 scripts/profile_training_step.py 2>&1 | head -40; fi
python3 -m g2vlm_ros.training.train --out "$run_dir" --minutes "$minutes" --schedule-minutes 18 \
  --batch 16 --lr 4e-4 --log-every 50 $resume ${extra[@]+"${extra[@]}"}
python3 -m g2vlm_ros.training.evaluate "$run_dir" --scenes 16 --views 2 4 --json "$run_dir/evaluation.json"
python3 -m g2vlm_ros.training.evaluate "$run_dir" --scenes 16 --views 2 4 --motion mixed \
  --json "$run_dir/evaluation_mixed.json"
for snapshot in "$run_dir"/snapshot_*; do  # --snapshot-minutes: forward walks, printed only
  [ -d "$snapshot" ] || continue
  echo "$(basename "$snapshot"):"
  python3 -m g2vlm_ros.training.evaluate "$snapshot" --scenes 16 --views 2 4
done
if [ -n "${OUT:-}" ]; then  # at most 8 files come back: 2 weight pieces per checkpoint, the log, the evaluations
  split -b 12M "$run_dir/model.safetensors" "$OUT/model.safetensors.part"
  cp "$run_dir"/training_log.jsonl "$run_dir"/evaluation.json "$run_dir"/evaluation_mixed.json "$OUT/"
  for snapshot in "$run_dir"/snapshot_*; do  # one snapshot fits (7 files)
    [ -d "$snapshot" ] || continue
    split -b 12M "$snapshot/model.safetensors" "$OUT/$(basename "$snapshot").model.safetensors.part"
  done
fi
