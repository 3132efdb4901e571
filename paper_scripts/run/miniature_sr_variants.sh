#!/usr/bin/env bash
# DualVar's shuffle-rank as published against the variant of this project that an order-blind network cannot
# satisfy (train_ssl.py --sr-variant negative; docs/pretraining.md), in the miniature's recipe over SEEDS (default
# "0 1 2"), beside SimCLR and random weights; the runs of run/miniature.sh in the same $OUTPUT_ROOT/miniature are
# reused. Ends with $OUTPUT_ROOT/miniature/sr_variants.md.
source "$(dirname "$0")/../common.sh"
EXTRA_ARGS=("$@")
MINI_METHODS="${MINI_METHODS:-random simclr dualvar dualvar_negative}" MINI_SUPERVISED=0 MINI_TABLE=sr_variants \
  run_miniature miniature
