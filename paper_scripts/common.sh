# Shared launcher logic, sourced by every paper_scripts/<mode>/<exp>.sh: the experiment table, the
# published recipe (METHOD.md §5.6, §7) and the torchrun launch. A launcher's folder is its mode and its
# file name is the experiment, so `bash paper_scripts/finetune/simclr_clip-sr-tc_r21d_ucf101.sh` finetunes
# that experiment's pretrained checkpoint; later modes find what earlier ones wrote under the same
# $OUTPUT_ROOT/<exp>/.
#
# Environment:
#   NUM_GPUS        processes (one per GPU); default: every visible GPU, and one CPU process when none
#   OUTPUT_ROOT     runs are written to $OUTPUT_ROOT/<exp>/<mode> (default: <repo>/output)
#   VSSL_DATA_ROOT  holds <dataset>/frames and <dataset>/csv (default: <repo>/data)
#   DRY_RUN=1       append --dry-run to every python command: print the resolved configurations, train nothing
#   PRINT_ONLY=1    print the commands (one per line, shell-quoted) instead of running them
#   PYTHON          interpreter for single-process CPU runs (default: python)
# Arguments given to a launcher are appended to each of its python commands (e.g. --workers 8).

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Relative paths given by the user are relative to where the launcher is started; defaults to the repository.
OUTPUT_ROOT="$(realpath -m "${OUTPUT_ROOT:-$REPO_ROOT/output}")"
DATA_ROOT="$(realpath -m "${VSSL_DATA_ROOT:-$REPO_ROOT/data}")"
cd "$REPO_ROOT"
PYTHON="${PYTHON:-python}"
EXTRA_ARGS=()

# The modes of `run`, in order.
MODES=(pretrain finetune finetune_hmdb test test_hmdb test_retrieval)

# experiment -> "model mode net pretraining-dataset" (METHOD.md §8). An IIC row's mode is
# <intra-negative>-<view 2>: repeat|shuffle|none (none = plain CMC) and res|u|v.
declare -A EXPERIMENTS=(
  [simclr_clip-sr-tc_r21d_k400]="simclr clip-sr-tc r21d k400"
  [simclr_clip_r21d_ucf101]="simclr clip r21d ucf101"
  [simclr_clip-sr_r21d_ucf101]="simclr clip-sr r21d ucf101"
  [simclr_clip-sr-tc_r21d_ucf101]="simclr clip-sr-tc r21d ucf101"
  [moco_clip_r21d_ucf101]="moco clip r21d ucf101"
  [moco_clip-sr_r21d_ucf101]="moco clip-sr r21d ucf101"
  [moco_clip-sr-tc_r21d_ucf101]="moco clip-sr-tc r21d ucf101"
  [simclr_clip-sr-tc_r3d_ucf101]="simclr clip-sr-tc r3d ucf101"
  [simclr_clip-sr-tc_c3d_ucf101]="simclr clip-sr-tc c3d ucf101"
  [simclr_clip-sr-tc_s3d_ucf101]="simclr clip-sr-tc s3d ucf101"
  [iic_repeat_res_r3d_ucf101]="iic repeat-res r3d ucf101"
  [iic_shuffle_res_r3d_ucf101]="iic shuffle-res r3d ucf101"
  [iic_repeat_u_r3d_ucf101]="iic repeat-u r3d ucf101"
  [iic_shuffle_u_r3d_ucf101]="iic shuffle-u r3d ucf101"
  [iic_repeat_v_r3d_ucf101]="iic repeat-v r3d ucf101"
  [iic_shuffle_v_r3d_ucf101]="iic shuffle-v r3d ucf101"
  [iic_none_res_r3d_ucf101]="iic none-res r3d ucf101"
  [iic_repeat_res_c3d_ucf101]="iic repeat-res c3d ucf101"
  [iic_repeat_res_r21d_ucf101]="iic repeat-res r21d ucf101"
  [demo]="simclr clip-sr-tc r21d demo"
  [demo_baseline]="simclr clip r21d demo"
  [iic_demo]="iic repeat-res r21d demo"
)

# Published pretraining recipe: global batch 64 (8 GPUs x 8), 16x112² clips, temporal stride 4.
PRETRAIN_FLAGS=(--epochs 200 --schedule 120 160 --lr 0.003 --weight-decay 1e-4 --optimizer sgd --momentum 0.9
                --num-frames 16 --stride 4 --size 112 --save-freq 10 --amp auto)
PRETRAIN_GLOBAL_BATCH=64
# Downstream runs start from the checkpoint after epoch 190 (0-based 189), which --save-freq 10 keeps.
DOWNSTREAM_CHECKPOINT=epoch189.pth
# Published finetuning recipe (global batch 16, ds 2); the schedule depends on the pretraining data.
FINETUNE_FLAGS=(--lr 0.05 --weight-decay 1e-3 --optimizer sgd --num-frames 16 --stride 2 --size 112 --amp auto)
FINETUNE_GLOBAL_BATCH=16
FINETUNE_SCHEDULE_UCF101=(--epochs 100 --schedule 30 60 80)
FINETUNE_SCHEDULE_K400=(--epochs 150 --schedule 50 100)
# IIC (METHOD.md §6): batch 16, 16 consecutive frames, 240 epochs; downstream runs use the last checkpoint,
# finetune on view 2's input (raw residual, or the flow component) and retrieve with max-pooled conv5
# features of RGB and view 2 merged, clips at stride 1. u/v rows need the flow frames first (README).
IIC_PRETRAIN_FLAGS=(--epochs 240 --schedule 45 90 125 160 --lr-gamma 0.2 --lr 0.01 --weight-decay 1e-4
                    --optimizer sgd --momentum 0.9 --num-frames 16 --size 112 --save-freq 10 --amp auto)
IIC_PRETRAIN_GLOBAL_BATCH=16
IIC_RETRIEVAL_FLAGS=(--layer conv5 --merge --stride 1)
# --amp auto: bf16 on Ampere and newer GPUs, fp16 (with loss scaling in training) on older GPUs; on a CPU, training
# in fp32 and evaluation in bf16 only with AVX512-BF16/AMX (docs/gpu.md); the script prints its choice at start.
EVAL_FLAGS=(--amp auto)

# The demo and the miniature (README "The miniature", docs/miniature.md): R(2+1)D-10 at base width 8 on 8x32²
# clips, so that a comparison of methods over seeds fits in an hour on a 2-core CPU, and the same for every data set
# (MINI_DATA). The input, the stride and the budget were calibrated on supervised and no-learning runs only, before
# any self-supervised run of this recipe (paper_scripts/run/miniature_calibration.sh, docs/miniature.md#calibration):
# of RGB and frame differences at strides 4 and 8 and 1072 or 2144 supervised steps, no configuration passed the gate
# (supervised top-1 >= 2 x the colour probe, and >= 75 % direction accuracy on every arrow-of-time pair: rotation
# stayed at chance everywhere), and the rule fixed beforehand took the one with the best direction accuracy among
# those whose top-1 passed: differences at stride 8, 2144 supervised steps. So the network sees frame differences
# (--clip-input diff), every method pretrains MINI_PRETRAIN_STEPS optimizer steps at global batch 16 with AdamW (lr
# 1e-3, constant) on clips at stride 8 (IIC: its 8 consecutive frames and its own views, RGB and residual, with
# --iic-l2norm: unnormalised, its loss did not leave log(2K+1) in such budgets). Every network, pretrained or random,
# is then evaluated the same way, on the input its checkpoint records at stride 8: frozen pooled features (kNN,
# linear probe, R@k: retrieve.py), MINI_FINETUNE_STEPS steps of finetuning (AdamW lr 1e-3, no validation hold-out, no
# horizontal flips: a mirror image turns MoveLeft into MoveRight) with the 10-clip test, and reversal sensitivity.
DEMO_CLIP_FLAGS=(--base-width 8 --num-frames 8 --size 32 --resize 32 42)
MINI_INPUT_FLAGS=(--clip-input diff)  # the network's input (dataset/clip_input.py); checkpoints record it
DEMO_STRIDE=8  # pretraining (but IIC's consecutive frames), finetuning and evaluation
MINI_PRETRAIN_STEPS=1072
MINI_FINETUNE_STEPS=1072
# Supervised training of the same network from random weights, for as many steps as pretraining + finetuning.
MINI_SUPERVISED_STEPS=$(( MINI_PRETRAIN_STEPS + MINI_FINETUNE_STEPS ))
# The demo's figures were measured in fp32; --amp none keeps them comparable on machines where auto picks bf16.
DEMO_RUNTIME_FLAGS=(--amp none --workers 2)
DEMO_PRETRAIN_FLAGS=(--steps "$MINI_PRETRAIN_STEPS" --schedule --optimizer adamw --lr 1e-3 --weight-decay 1e-4
                     --stride "$DEMO_STRIDE" --save-freq 0 --log-every 20)
DEMO_IIC_PRETRAIN_FLAGS=(--steps "$MINI_PRETRAIN_STEPS" --schedule --optimizer adamw --lr 1e-3 --weight-decay 1e-4
                         --iic-l2norm --save-freq 0 --log-every 20)
DEMO_PRETRAIN_GLOBAL_BATCH=16
DEMO_FINETUNE_FLAGS=(--steps "$MINI_FINETUNE_STEPS" --schedule --optimizer adamw --lr 1e-3 --weight-decay 1e-3
                     --val-freq 0 --no-hflip --log-every 20)
DEMO_FINETUNE_GLOBAL_BATCH=16
DEMO_FINETUNE_STRIDE=$DEMO_STRIDE
DEMO_IIC_FINETUNE_STRIDE=2
# The miniature's methods: name -> train_ssl.py flags; "random" (no pretraining) is the no-learning reference.
# dualvar_negative: the shuffle-rank variant of this project (--sr-variant negative, run/miniature_sr_variants.sh);
# the *_bug runs plant a known learning bug (train_ssl.py --plant-bug), for run/miniature_mutants.sh.
declare -A MINI_METHOD_FLAGS=(
  [simclr]="--model simclr --mode clip"
  [dualvar]="--model simclr --mode clip-sr-tc"
  [iic]="--model iic --intra-neg repeat --modality res"
  [dualvar_negative]="--model simclr --mode clip-sr-tc --sr-variant negative"
  [simclr_positive_bug]="--model simclr --mode clip --plant-bug positive-other-video"
  [dualvar_sr_bug]="--model simclr --mode clip-sr-tc --plant-bug sr-wrong-permutation"
  [dualvar_tc_bug]="--model simclr --mode clip-sr-tc --plant-bug tc-other-video"
)
# bug run=the correct run it is compared with (collect_results.py --compare)
MINI_MUTANTS=(simclr_positive_bug=simclr dualvar_sr_bug=dualvar dualvar_tc_bug=dualvar)
MINI_EVAL_FLAGS=(--layer pool --stride "$DEMO_STRIDE")
# the no-learning references, retrieve.py --ckpt <name> (model/references.py): row name -> reference
declare -A MINI_REFERENCES=([colour_stats]=colour-stats [motion_stats]=motion-stats)

die() { echo "paper_scripts: $*" >&2; exit 2; }

visible_gpus() {
  if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
    local ids="${CUDA_VISIBLE_DEVICES//[[:space:]]/}"
    [ -z "$ids" ] && { echo 0; return; }
    echo "$ids" | tr ',' '\n' | grep -c .
  elif command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
  else
    echo 0
  fi
}

NUM_GPUS="${NUM_GPUS:-$(visible_gpus)}"
[[ "$NUM_GPUS" =~ ^[0-9]+$ ]] || die "NUM_GPUS=$NUM_GPUS: give a whole number of GPUs (0 for one CPU process)"
NUM_PROCS=$(( NUM_GPUS > 0 ? NUM_GPUS : 1 ))
# On several GPUs a process holds only a few clips (finetuning: 16 / 8 = 2; IIC: 16 / 8 = 2, in three passes):
# BatchNorm then needs the statistics of the global batch. DualVar's SimCLR keeps per-GPU BatchNorm as published.
SYNC_BN_FLAGS=()
(( NUM_GPUS > 1 )) && SYNC_BN_FLAGS=(--sync-bn)

# Per-process batch size for a global batch, so that the published global batch holds on any GPU count.
per_process_batch() {
  (( $1 % NUM_PROCS == 0 )) || die "the global batch $1 does not split over NUM_GPUS=$NUM_GPUS processes: pick a divisor of $1"
  echo $(( $1 / NUM_PROCS ))
}

# Run one entry script (torchrun on GPUs, plain python on the CPU) with the launcher's extra arguments.
run_python() {
  local script="$1"; shift
  local cmd
  if (( NUM_GPUS > 0 )); then
    cmd=(torchrun --standalone --nproc_per_node "$NUM_GPUS" "$script" "$@")
  else
    cmd=("$PYTHON" "$script" "$@")
  fi
  cmd+=("${EXTRA_ARGS[@]}")
  [ "${DRY_RUN:-0}" = 1 ] && cmd+=(--dry-run)
  if [ "${PRINT_ONLY:-0}" = 1 ]; then
    printf '%q ' "${cmd[@]}"; echo
    return
  fi
  printf '+ %s\n' "${cmd[*]}" >&2
  "${cmd[@]}"
}

# A single-process helper script (data preparation, tables): no torchrun, no launcher arguments, and
# skipped in dry runs since it has no --dry-run of its own.
run_single() {
  local cmd=("$PYTHON" "$@")
  if [ "${PRINT_ONLY:-0}" = 1 ]; then
    printf '%q ' "${cmd[@]}"; echo
  elif [ "${DRY_RUN:-0}" = 1 ]; then
    printf 'dry run, skipped: %s\n' "${cmd[*]}" >&2
  else
    printf '+ %s\n' "${cmd[*]}" >&2
    "${cmd[@]}"
  fi
}

# Sets MODEL, METHOD_MODE, NET and PRETRAIN_DATA for experiment $1.
read_experiment() {
  [ -n "${EXPERIMENTS[$1]+set}" ] || die "unknown experiment '$1'; known: ${!EXPERIMENTS[*]}"
  read -r MODEL METHOD_MODE NET PRETRAIN_DATA <<<"${EXPERIMENTS[$1]}"
}

# Finetuning frame stride of the demo whose experiment read_experiment last read.
demo_finetune_stride() {
  if [ "$MODEL" = iic ]; then echo "$DEMO_IIC_FINETUNE_STRIDE"; else echo "$DEMO_FINETUNE_STRIDE"; fi
}

# One mode of experiment $2: mode $1 in pretrain, finetune, finetune_hmdb, test, test_hmdb, test_retrieval.
run_mode() {
  local mode="$1" exp="$2" out="$OUTPUT_ROOT/$2"
  read_experiment "$exp"
  local demo=0 downstream=ucf101 eval_flags=("${EVAL_FLAGS[@]}")
  [ "$PRETRAIN_DATA" = demo ] && { demo=1; downstream=demo; eval_flags=("${DEMO_RUNTIME_FLAGS[@]}"); }
  case "$mode" in
    finetune_hmdb|test_hmdb)
      (( demo )) && die "$exp has no HMDB51 transfer: the demo data set is its only data"
      downstream=hmdb51 ;;
  esac
  local pretrained="$out/pretrain/$DOWNSTREAM_CHECKPOINT" finetuned=best.pth
  # The demo compares fixed budgets: the last checkpoints, no validation.
  (( demo )) && { pretrained="$out/pretrain/checkpoint.pth"; finetuned=checkpoint.pth; }
  local method_flags=(--mode "$METHOD_MODE") finetune_flags=() retrieval_flags=()
  if [ "$MODEL" = iic ]; then
    method_flags=(--intra-neg "${METHOD_MODE%-*}" --modality "${METHOD_MODE#*-}")
    finetune_flags=(--modality "${METHOD_MODE#*-}")
    retrieval_flags=("${IIC_RETRIEVAL_FLAGS[@]}")
    pretrained="$out/pretrain/checkpoint.pth"
  fi

  case "$mode" in
    pretrain)
      local flags=("${PRETRAIN_FLAGS[@]}") batch="$PRETRAIN_GLOBAL_BATCH"
      [ "$MODEL" = iic ] && flags=("${IIC_PRETRAIN_FLAGS[@]}" "${SYNC_BN_FLAGS[@]}") batch="$IIC_PRETRAIN_GLOBAL_BATCH"
      if (( demo )); then
        flags=("${DEMO_CLIP_FLAGS[@]}" "${DEMO_RUNTIME_FLAGS[@]}" "${DEMO_PRETRAIN_FLAGS[@]}" "${MINI_INPUT_FLAGS[@]}")
        batch="$DEMO_PRETRAIN_GLOBAL_BATCH"
        [ "$MODEL" = iic ] && flags=("${DEMO_CLIP_FLAGS[@]}" "${DEMO_RUNTIME_FLAGS[@]}" "${DEMO_IIC_PRETRAIN_FLAGS[@]}"
                                     "${SYNC_BN_FLAGS[@]}")
      fi
      batch="$(per_process_batch "$batch")"
      run_python train_ssl.py --dataset "$PRETRAIN_DATA" --data-root "$DATA_ROOT" --model "$MODEL" \
        "${method_flags[@]}" --net "$NET" "${flags[@]}" --batch-size "$batch" --output-dir "$out/pretrain" ;;
    finetune|finetune_hmdb)
      local flags=("${FINETUNE_FLAGS[@]}" "${FINETUNE_SCHEDULE_UCF101[@]}") batch="$FINETUNE_GLOBAL_BATCH"
      [ "$PRETRAIN_DATA" = k400 ] && flags=("${FINETUNE_FLAGS[@]}" "${FINETUNE_SCHEDULE_K400[@]}")
      (( demo )) && flags=("${DEMO_CLIP_FLAGS[@]}" "${DEMO_RUNTIME_FLAGS[@]}" "${DEMO_FINETUNE_FLAGS[@]}"
                           --stride "$(demo_finetune_stride)") batch="$DEMO_FINETUNE_GLOBAL_BATCH"
      batch="$(per_process_batch "$batch")"
      run_python finetune.py --dataset "$downstream" --data-root "$DATA_ROOT" --pretrain "$pretrained" \
        "${finetune_flags[@]}" "${flags[@]}" "${SYNC_BN_FLAGS[@]}" --batch-size "$batch" --output-dir "$out/$mode" ;;
    test|test_hmdb)
      local finetune_from="$out/finetune"
      [ "$mode" = test_hmdb ] && finetune_from="$out/finetune_hmdb"
      run_python test.py --dataset "$downstream" --data-root "$DATA_ROOT" --ckpt "$finetune_from/$finetuned" \
        "${eval_flags[@]}" --output-dir "$out/$mode" ;;
    test_retrieval)
      run_python retrieve.py --dataset "$downstream" --data-root "$DATA_ROOT" --ckpt "$pretrained" \
        "${retrieval_flags[@]}" "${eval_flags[@]}" --output-dir "$out/test_retrieval" ;;
    *) die "unknown mode '$mode'; modes: ${MODES[*]} run" ;;
  esac
}

# Entry point of a launcher: the mode is its folder, the experiment its file name; `run` runs every mode
# in order (the HMDB51 ones only for experiments that have them) and stops at the first failure.
launch() {
  local launcher="${BASH_SOURCE[1]}"
  local mode exp
  mode="$(basename "$(dirname "$launcher")")"
  exp="$(basename "$launcher" .sh)"
  EXTRA_ARGS=("$@")
  read_experiment "$exp"
  if [ "$mode" != run ]; then
    run_mode "$mode" "$exp"
    return
  fi
  local m
  for m in "${MODES[@]}"; do
    [[ "$PRETRAIN_DATA" = demo && "$m" == *_hmdb ]] && continue
    run_mode "$m" "$exp"
  done
}

# Sets MINI_DATA_DIR to the miniature's data set: MINI_DATA, or the demo data set (generated when missing); frames
# and CSVs are written beside the videos when missing.
prepare_miniature_data() {
  local data_dir
  if [ -n "${MINI_DATA:-}" ]; then
    data_dir="$(realpath -m "$MINI_DATA")"
    [ -d "$data_dir/videos" ] && [ -f "$data_dir/splits/classInd.txt" ] \
      || die "MINI_DATA=$MINI_DATA: expected videos/<Class>/*.avi and splits/{classInd,trainlist01,testlist01}.txt there"
  else
    data_dir="$DATA_ROOT/demo"
    [ -f "$data_dir/splits/testlist01.txt" ] || run_single process_data/src/make_demo_data.py --out "$data_dir"
  fi
  if [ ! -f "$data_dir/csv/test_split01.csv" ]; then
    # --short-side 0 keeps the native frames of the demo; other data are cut to the usual 128 short side.
    local short_side=128
    [ -z "${MINI_DATA:-}" ] && short_side=0
    run_single process_data/src/extract_frame.py --video-root "$data_dir/videos" --frame-root "$data_dir/frames" \
      --short-side "$short_side"
    run_single process_data/src/write_csv.py --dataset ucf101 --frame-root "$data_dir/frames" \
      --split-dir "$data_dir/splits" --out-dir "$data_dir/csv"
  fi
  MINI_DATA_DIR="$data_dir"
}

# Sets the array named $1 to collect_results.py's --direction-pairs for the data set in $2: its arrow-of-time pairs,
# which make_demo_data.py writes for the demo and a MINI_DATA set may list in splits/arrow_of_time_pairs.txt.
miniature_pairs() {
  local -n out="$1"
  local file="$2/splits/arrow_of_time_pairs.txt"
  if [ -z "${MINI_DATA:-}" ] || [ -f "$file" ]; then out=(--direction-pairs "$file"); else out=(); fi
}

# Finetuning into $1/finetune with the finetune.py arguments that follow, then the 10-clip test into $1/test; skipped
# when the test's results exist. $common (the caller's data and runtime flags) goes to the test.
finetune_and_test() {
  local dir="$1"; shift
  [ -f "$dir/test/test_results.json" ] && return
  run_python finetune.py "$@" --output-dir "$dir/finetune"
  run_python test.py --ckpt "$dir/finetune/checkpoint.pth" "${common[@]}" --output-dir "$dir/test"
}

# The no-learning references (colour and motion statistics of each clip) through retrieve.py into
# $1/<reference>/seed0/test_retrieval, with the retrieve.py arguments that follow; each skipped when it exists.
reference_retrievals() {
  local root="$1" reference; shift
  for reference in colour_stats motion_stats; do
    [ -f "$root/$reference/seed0/test_retrieval/retrieval.json" ] || run_python retrieve.py \
      --ckpt "${MINI_REFERENCES[$reference]}" "$@" --num-examples 0 --no-tsne \
      --output-dir "$root/$reference/seed0/test_retrieval"
  done
}

# The miniature: methods $MINI_METHODS (default: random simclr dualvar; iic and the runs with a planted bug on
# request) x seeds $SEEDS (default 0 1 2) on the demo data set, or on MINI_DATA (a folder in the UCF101 layout:
# videos/<Class>/*.avi and splits/{classInd,trainlist01,testlist01}.txt, optionally splits/arrow_of_time_pairs.txt;
# frames/ and csv/ are written beside them), into $OUTPUT_ROOT/$1/<method>/seed<N>/{pretrain,test_retrieval,finetune,
# test,reversal.json}, with the no-learning references (colour and motion statistics; random weights) and supervised
# training from scratch (MINI_SUPERVISED=0 skips it), ending with $OUTPUT_ROOT/$1/$MINI_TABLE.md (mean ± std; default
# results) and .json, and with MINI_COMPARE="bug=correct ..." the planted bugs against the correct runs. Steps whose
# results exist are skipped, and training resumes, so an interrupted run continues where it stopped.
run_miniature() {
  local root="$OUTPUT_ROOT/$1" data_dir
  local seeds methods compare
  read -r -a seeds <<<"${SEEDS:-0 1 2}"
  read -r -a methods <<<"${MINI_METHODS:-random simclr dualvar}"
  read -r -a compare <<<"${MINI_COMPARE:-}"
  local table="${MINI_TABLE:-results}" summary=summary
  [ "$table" = results ] || summary="$table"
  prepare_miniature_data
  data_dir="$MINI_DATA_DIR"
  local data_flags=(--dataset "$data_dir/csv" --frame-root "$data_dir/frames")
  local common=("${data_flags[@]}" "${DEMO_RUNTIME_FLAGS[@]}")
  local batch ft_batch
  batch="$(per_process_batch "$DEMO_PRETRAIN_GLOBAL_BATCH")"
  ft_batch="$(per_process_batch "$DEMO_FINETUNE_GLOBAL_BATCH")"
  local ft_flags=(--net r21d "${DEMO_CLIP_FLAGS[@]}" "${DEMO_FINETUNE_FLAGS[@]}" --stride "$DEMO_STRIDE" --batch-size "$ft_batch"
                  "${SYNC_BN_FLAGS[@]}")
  # the reversal sensitivity of a network's backbone, on every test video
  reversal() {
    [ -f "$2" ] || run_single paper_scripts/reversal_sensitivity.py --ckpt "$1" "${data_flags[@]}" --stride "$DEMO_STRIDE" \
      --num-videos 0 --out "$2"
  }

  # No-learning references: colour and motion statistics of each clip, in retrieval; colour in the clip contrast.
  reference_retrievals "$root" "${common[@]}" "${DEMO_CLIP_FLAGS[@]:2}" "${MINI_EVAL_FLAGS[@]}"
  if [ ! -f "$root/colour_stats/contrast/colour_contrast.json" ]; then
    run_single paper_scripts/colour_reference.py "${data_flags[@]}" "${DEMO_RUNTIME_FLAGS[@]}" "${DEMO_CLIP_FLAGS[@]}" \
      --stride "$DEMO_STRIDE" --batch-size "$DEMO_PRETRAIN_GLOBAL_BATCH" --output-dir "$root/colour_stats/contrast"
  fi

  local seed method dir ckpt pretrain
  for seed in "${seeds[@]}"; do
    for method in "${methods[@]}"; do
      dir="$root/$method/seed$seed"
      if [ "$method" = random ]; then
        ckpt="$dir/random_init.pth" pretrain=none
        [ -f "$ckpt" ] || run_single paper_scripts/random_init.py --net r21d "${DEMO_CLIP_FLAGS[@]}" "${MINI_INPUT_FLAGS[@]}" \
          --stride "$DEMO_STRIDE" --seed "$seed" --out "$ckpt"
      else
        [ -n "${MINI_METHOD_FLAGS[$method]+set}" ] || die "MINI_METHODS: unknown method '$method'; known: random ${!MINI_METHOD_FLAGS[*]}"
        ckpt="$dir/pretrain/checkpoint.pth" pretrain="$ckpt"
        local method_flags pretrain_flags=("${DEMO_PRETRAIN_FLAGS[@]}" "${MINI_INPUT_FLAGS[@]}")
        read -r -a method_flags <<<"${MINI_METHOD_FLAGS[$method]}"
        [ "$method" = iic ] && pretrain_flags=("${DEMO_IIC_PRETRAIN_FLAGS[@]}" "${SYNC_BN_FLAGS[@]}")
        # a finished run resumes at its last epoch and stops at once
        run_python train_ssl.py "${common[@]}" "${method_flags[@]}" --net r21d "${DEMO_CLIP_FLAGS[@]}" \
          "${pretrain_flags[@]}" --batch-size "$batch" --seed "$seed" --output-dir "$dir/pretrain"
      fi
      # retrieval, finetuning and the test take the input the checkpoint records; from scratch, the recipe's
      [ -f "$dir/test_retrieval/retrieval.json" ] || run_python retrieve.py --ckpt "$ckpt" "${common[@]}" \
        "${MINI_EVAL_FLAGS[@]}" --num-examples 0 --no-tsne --output-dir "$dir/test_retrieval"
      reversal "$ckpt" "$dir/reversal.json"
      local scratch_flags=()
      [ "$pretrain" = none ] && scratch_flags=("${MINI_INPUT_FLAGS[@]}")
      finetune_and_test "$dir" --pretrain "$pretrain" "${common[@]}" "${ft_flags[@]}" "${scratch_flags[@]}" \
        --seed "$seed"
    done
    dir="$root/supervised/seed$seed"
    if [ "${MINI_SUPERVISED:-1}" = 1 ]; then
      finetune_and_test "$dir" --pretrain none "${common[@]}" "${ft_flags[@]}" "${MINI_INPUT_FLAGS[@]}" \
        --steps "$MINI_SUPERVISED_STEPS" --seed "$seed"
      reversal "$dir/finetune/checkpoint.pth" "$dir/reversal.json"
    fi
  done
  local rows=(colour_stats motion_stats random) figure_runs=() pairs=()
  [ "${MINI_SUPERVISED:-1}" = 1 ] && rows+=(supervised)
  for method in "${methods[@]}"; do
    [ "$method" = random ] || rows+=("$method")
    figure_runs+=("$method=$1/$method/seed${seeds[0]}/test_retrieval")
  done
  miniature_pairs pairs "$data_dir"
  (( ${#compare[@]} )) && pairs+=(--compare "${compare[@]}")
  run_single paper_scripts/collect_results.py --seeds --output-root "$root" --experiments "${rows[@]}" "${pairs[@]}" \
    --out "$root/$table.md" --summary "$root/$summary.json"
  run_single paper_scripts/make_figures.py --output-root "$OUTPUT_ROOT" --data-root "$(dirname "$data_dir")" \
    --dataset "$(basename "$data_dir")" --out-dir "$root/figures" --figures distribution retrieval \
    --runs "${figure_runs[@]}"
}

# The miniature's calibration (docs/miniature.md#calibration): supervised training from scratch and the no-learning
# references only, never a self-supervised run, for each "input:stride:steps" of MINI_CALIBRATION and each seed of
# SEEDS, into $OUTPUT_ROOT/$1/<input>_s<stride>/{colour_stats,motion_stats,random,supervised_<steps>}/seed<N>, each
# input and stride ending with its results.md: mean ± std and the gate the recipe must pass.
run_miniature_calibration() {
  local root="$OUTPUT_ROOT/$1" seeds configs
  read -r -a seeds <<<"${SEEDS:-0 1 2}"
  read -r -a configs <<<"${MINI_CALIBRATION:-rgb:4:1072 diff:4:1072 diff:8:1072 diff:4:2144 diff:8:2144}"
  prepare_miniature_data
  local data_dir="$MINI_DATA_DIR"
  local common=(--dataset "$data_dir/csv" --frame-root "$data_dir/frames" "${DEMO_RUNTIME_FLAGS[@]}")
  local ft_batch
  ft_batch="$(per_process_batch "$DEMO_FINETUNE_GLOBAL_BATCH")"
  local pairs=()
  miniature_pairs pairs "$data_dir"
  local config input stride steps out seed dir
  local -A rows=()
  for config in "${configs[@]}"; do
    IFS=: read -r input stride steps <<<"$config"
    [ -n "$steps" ] || die "MINI_CALIBRATION: '$config' is not input:stride:steps"
    out="$root/${input}_s${stride}"
    rows[$out]+=" supervised_$steps"
    reference_retrievals "$out" "${common[@]}" "${DEMO_CLIP_FLAGS[@]:2}" --layer pool --stride "$stride"
    for seed in "${seeds[@]}"; do
      dir="$out/random/seed$seed"
      [ -f "$dir/random_init.pth" ] || run_single paper_scripts/random_init.py --net r21d "${DEMO_CLIP_FLAGS[@]}" \
        --clip-input "$input" --stride "$stride" --seed "$seed" --out "$dir/random_init.pth"
      [ -f "$dir/test_retrieval/retrieval.json" ] || run_python retrieve.py --ckpt "$dir/random_init.pth" \
        "${common[@]}" --layer pool --stride "$stride" --num-examples 0 --no-tsne --output-dir "$dir/test_retrieval"
      dir="$out/supervised_$steps/seed$seed"
      finetune_and_test "$dir" --pretrain none "${common[@]}" --net r21d "${DEMO_CLIP_FLAGS[@]}" \
        "${DEMO_FINETUNE_FLAGS[@]}" --clip-input "$input" --stride "$stride" --steps "$steps" \
        --batch-size "$ft_batch" "${SYNC_BN_FLAGS[@]}" --seed "$seed"
    done
  done
  for out in "${!rows[@]}"; do
    local supervised
    read -r -a supervised <<<"${rows[$out]}"
    run_single paper_scripts/collect_results.py --seeds --output-root "$out" --experiments colour_stats motion_stats \
      random "${supervised[@]}" "${pairs[@]}" --gate --out "$out/results.md" --summary "$out/summary.json"
  done
}
