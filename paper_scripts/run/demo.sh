#!/usr/bin/env bash
# The project's main job on the built-in synthetic data set, on a 2-core CPU in under 10 minutes:
# demo videos -> frames -> CSVs -> DualVar pretraining (SimCLR, clip-sr-tc, narrow R(2+1)D-10) -> finetuning
# -> 10-clip test -> retrieval, beside the same network from random weights, then a results table
# ($OUTPUT_ROOT/demo/results.md). run/demo_baseline.sh does the same for the plain SimCLR baseline (mode clip).
# Data steps already done are skipped; environment variables as in paper_scripts/common.sh.
source "$(dirname "$0")/../common.sh"
EXTRA_ARGS=("$@")
run_demo "$(basename "$0" .sh)"
