#!/usr/bin/env bash
# IIC on the built-in synthetic data set, on a 2-core CPU: demo videos -> frames -> CSVs -> IIC pretraining
# (repeat intra-negatives, residual view 2, R(2+1)D-10 at base width 8) -> finetuning on residual frames ->
# 10-clip test -> retrieval (max-pooled conv5, RGB + residual merged), beside the same network from random
# weights, then a results table ($OUTPUT_ROOT/iic_demo/results.md).
# Data steps already done are skipped; environment variables as in paper_scripts/common.sh.
source "$(dirname "$0")/../common.sh"
EXTRA_ARGS=("$@")
run_demo "$(basename "$0" .sh)"
