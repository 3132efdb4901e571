#!/usr/bin/env bash
# The miniature's calibration (docs/miniature.md#calibration): supervised training from scratch and the no-learning
# references (colour and motion statistics, random weights) for each input, stride and budget of MINI_CALIBRATION
# (default "rgb:4:1072 diff:4:1072 diff:8:1072 diff:4:2144 diff:8:2144") over SEEDS (default "0 1 2"), each input and
# stride ending with $OUTPUT_ROOT/miniature_calibration/<input>_s<stride>/results.md and the gate of the recipe.
# No self-supervised method runs here: the miniature's recipe (paper_scripts/common.sh) is chosen from these runs only.
source "$(dirname "$0")/../common.sh"
EXTRA_ARGS=("$@")
run_miniature_calibration miniature_calibration
