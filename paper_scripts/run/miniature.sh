#!/usr/bin/env bash
# The miniature comparison (README "The miniature"): random weights, SimCLR (clip), DualVar (clip-sr-tc) and IIC
# (repeat, residual) at one fixed budget, each over SEEDS (default "0 1 2"), beside the no-learning references
# (colour statistics, random weights) and supervised training from scratch; ends with
# $OUTPUT_ROOT/miniature/{results.md,summary.json}. MINI_DATA=DIR runs the same recipe on any data set in the
# UCF101 layout (DIR/videos/<Class>/*.avi, DIR/splits/{classInd,trainlist01,testlist01}.txt), from extraction on.
# Steps already done are skipped; environment variables as in paper_scripts/common.sh.
source "$(dirname "$0")/../common.sh"
EXTRA_ARGS=("$@")
run_miniature miniature
