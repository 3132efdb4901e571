#!/usr/bin/env bash
# One seed of the miniature's recipe (run/miniature.sh) for DualVar (SimCLR, clip-sr-tc) beside random weights and the colour and
# motion references: demo videos -> frames -> CSVs -> pretraining -> kNN, linear probe and retrieval on frozen features ->
# finetuning -> 10-clip test, then $OUTPUT_ROOT/demo/{results.md,summary.json}. Under 10 minutes on a 2-core CPU
# (README). The demos share $OUTPUT_ROOT/demo and the data; steps already done are skipped.
source "$(dirname "$0")/../common.sh"
EXTRA_ARGS=("$@")
SEEDS="${SEEDS:-0}" MINI_METHODS="${MINI_METHODS:-random dualvar}" MINI_SUPERVISED="${MINI_SUPERVISED:-0}" run_miniature demo
