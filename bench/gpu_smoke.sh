#!/usr/bin/env bash
# The check for the day a GPU machine is lent (issue 15): under 10 minutes on one GPU (two when present).
#
#   bash bench/gpu_smoke.sh [OUT_DIR]        # default OUT_DIR: runs/gpu_smoke; prints one JSON object
#
# On a small synthetic demo data set (made here, 4 classes, 128x171 frames) at the published network size
# (R(2+1)D-10, width 64, 16x112² clips, 8 clips per GPU), with --amp auto:
#   - a few iterations of SimCLR clip-sr-tc, MoCo clip-sr-tc and IIC (repeat, res);
#   - SimCLR again with --deterministic, killed (SIGKILL) mid-run and resumed, against an uninterrupted run;
#   - finetune.py, test.py and retrieve.py once each;
#   - bench/bench_step.py --device cuda at the published configuration.
# The JSON (also in OUT_DIR/gpu_smoke.json) gives per run the median step time, samples/s and peak GPU memory,
# the resume check (largest weight difference; 0 is bit-exact), and the bench_step report.
#
# Environment: NUM_GPUS (default: the visible GPUs, at most 2; 0 runs on the CPU, for trying the script),
# BASE_WIDTH / NUM_FRAMES / SIZE (default 64 / 16 / 112), ITERS (iterations per epoch, default 3; two epochs),
# DRY_RUN=1 (print the commands instead of running them), PYTHON (default python).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(realpath -m "${1:-runs/gpu_smoke}")"
cd "$REPO"
PYTHON="${PYTHON:-python}"
if [ -z "${NUM_GPUS:-}" ]; then
  NUM_GPUS="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
  (( NUM_GPUS > 2 )) && NUM_GPUS=2
fi
BASE_WIDTH="${BASE_WIDTH:-64}" NUM_FRAMES="${NUM_FRAMES:-16}" SIZE="${SIZE:-112}" ITERS="${ITERS:-3}"
DRY_RUN="${DRY_RUN:-0}"
DATA="$OUT/data"
DEVICE=cuda
(( NUM_GPUS == 0 )) && DEVICE=cpu

# Print (DRY_RUN=1) or run a command.
run() {
  if [ "$DRY_RUN" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi
}

# An entry script: torchrun on two GPUs, plain python on one GPU or the CPU.
entry() {
  if (( NUM_GPUS > 1 )); then
    echo torchrun --standalone --nproc_per_node "$NUM_GPUS" "$@"
  else
    echo "$PYTHON" "$@"
  fi
}

DATA_FLAGS=(--dataset "$DATA/csv" --frame-root "$DATA/frames" --num-frames "$NUM_FRAMES" --size "$SIZE"
            --resize 128 171)
TRAIN_FLAGS=("${DATA_FLAGS[@]}" --net r21d --base-width "$BASE_WIDTH" --batch-size 8 --epochs 2
             --max-iters-per-epoch "$ITERS" --log-every 1 --save-freq 0 --amp auto --resume auto)

if [ ! -f "$DATA/csv/train_split01.csv" ]; then
  run "$PYTHON" process_data/src/make_demo_data.py --out "$DATA" --classes MoveRight MoveLeft Grow Shrink \
    --videos-per-class 16 --size 128 171 --frames 48
  run "$PYTHON" process_data/src/extract_frame.py --video-root "$DATA/videos" --frame-root "$DATA/frames" \
    --short-side 0
  run "$PYTHON" process_data/src/write_csv.py --dataset ucf101 --frame-root "$DATA/frames" \
    --split-dir "$DATA/splits" --out-dir "$DATA/csv"
fi

# Pretraining, each method a few iterations.
read -r -a cmd <<<"$(entry train_ssl.py)"
run "${cmd[@]}" "${TRAIN_FLAGS[@]}" --model simclr --mode clip-sr-tc --output-dir "$OUT/simclr"
run "${cmd[@]}" "${TRAIN_FLAGS[@]}" --model moco --mode clip-sr-tc --output-dir "$OUT/moco"
run "${cmd[@]}" "${TRAIN_FLAGS[@]}" --model iic --intra-neg repeat --modality res --output-dir "$OUT/iic"

# Kill and resume: an uninterrupted deterministic run, and the same run killed once it has saved, then resumed.
run "${cmd[@]}" "${TRAIN_FLAGS[@]}" --model simclr --mode clip-sr-tc --deterministic --output-dir "$OUT/whole"
if [ "$DRY_RUN" = 1 ]; then
  run "${cmd[@]}" "${TRAIN_FLAGS[@]}" --model simclr --mode clip-sr-tc --deterministic --save-every-iters 1 \
    --output-dir "$OUT/killed"
elif [ ! -f "$OUT/killed/checkpoint.pth" ]; then
  setsid "${cmd[@]}" "${TRAIN_FLAGS[@]}" --model simclr --mode clip-sr-tc --deterministic --save-every-iters 1 \
    --output-dir "$OUT/killed" &
  victim=$!
  # three logged iterations: the checkpoint after the second one is written (each log line precedes its save)
  until (( $(awk '/"kind": "iter"/ {n++} END {print n + 0}' "$OUT/killed/log.jsonl" 2>/dev/null || echo 0) >= 3 )) \
        || ! kill -0 "$victim" 2>/dev/null; do sleep 0.2; done
  kill -KILL -- "-$victim" 2>/dev/null || true
  wait "$victim" 2>/dev/null || true
  "$PYTHON" -c 'import json, sys, torch; c = torch.load(sys.argv[1], map_location="cpu", weights_only=True); '\
'print(json.dumps({"epoch": c["epoch"], "iteration": c["iteration"], "global_step": c["global_step"]}))' \
    "$OUT/killed/checkpoint.pth" >"$OUT/killed_at.json"
fi
run "${cmd[@]}" "${TRAIN_FLAGS[@]}" --model simclr --mode clip-sr-tc --deterministic --save-every-iters 1 \
  --output-dir "$OUT/killed"

# Downstream, once each.
read -r -a cmd <<<"$(entry finetune.py)"
sync_bn=()
(( NUM_GPUS > 1 )) && sync_bn=(--sync-bn)
run "${cmd[@]}" "${DATA_FLAGS[@]}" --pretrain "$OUT/simclr/checkpoint.pth" --batch-size 8 --epochs 1 \
  --max-iters-per-epoch "$ITERS" --val-freq 0 --log-every 1 --amp auto "${sync_bn[@]}" --output-dir "$OUT/finetune"
read -r -a cmd <<<"$(entry test.py)"
run "${cmd[@]}" "${DATA_FLAGS[@]}" --ckpt "$OUT/finetune/checkpoint.pth" --amp auto --output-dir "$OUT/test"
read -r -a cmd <<<"$(entry retrieve.py)"
run "${cmd[@]}" "${DATA_FLAGS[@]}" --ckpt "$OUT/simclr/checkpoint.pth" --amp auto --num-examples 0 --no-tsne \
  --output-dir "$OUT/retrieval"

# The step benchmark at the published configuration, in one process.
mkdir -p "$OUT"
bench=("$PYTHON" bench/bench_step.py --device "$DEVICE" --base-width "$BASE_WIDTH" --batch-size 8
       --num-frames "$NUM_FRAMES" --size "$SIZE" --amp auto --channels-last --grad-checkpoint)
if [ "$DRY_RUN" = 1 ]; then
  run "${bench[@]}"
  exit 0
fi
"${bench[@]}" | tail -n 1 >"$OUT/bench_step.json"

"$PYTHON" - "$OUT" "$NUM_GPUS" <<'PY'
import json
import statistics
import sys
from pathlib import Path

import torch

out, gpus = Path(sys.argv[1]), int(sys.argv[2])


def iterations(run):
    lines = [json.loads(line) for line in (out / run / "log.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in lines if r.get("kind") == "iter"]


def summary(run):
    rows = iterations(run)[1:] or iterations(run)  # the first iteration pays for cuDNN's autotuning
    def median(key):
        values = [r[key] for r in rows if key in r]
        return round(statistics.median(values), 4) if values else None
    peak = [r["gpu_peak_gib"] for r in iterations(run) if "gpu_peak_gib" in r]
    return {"iterations": len(iterations(run)), "step_s": median("step_time"), "samples_per_s": median("samples_per_s"),
            "data_s": median("data_time"), "peak_gib_per_gpu": round(max(peak), 2) if peak else None,
            "last_loss": round(iterations(run)[-1]["loss"], 4)}


def weights(run):
    return torch.load(out / run / "checkpoint.pth", map_location="cpu", weights_only=True)["model"]


whole, killed = weights("whole"), weights("killed")
difference = max((whole[k].double() - killed[k].double()).abs().max().item()
                 for k in whole if whole[k].is_floating_point())
report = {
    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "gpus": gpus,
    "torch": torch.__version__, "cuda": torch.version.cuda,
    "pretraining": {run: summary(run) for run in ("simclr", "moco", "iic")},
    "finetune": summary("finetune"),
    "resume": {"max_abs_weight_difference": difference, "bit_exact": difference == 0.0,
               "killed_at": json.loads((out / "killed_at.json").read_text()),
               "steps": [iterations(run)[-1]["step"] for run in ("whole", "killed")]},
    "test_top1": json.loads((out / "test" / "test_results.json").read_text())["top1"],
    "retrieval_R@1": json.loads((out / "retrieval" / "retrieval.json").read_text())["R@1"],
    "bench_step": json.loads((out / "bench_step.json").read_text()),
}
(out / "gpu_smoke.json").write_text(json.dumps(report, indent=2) + "\n")
print(json.dumps(report, indent=2))
PY
