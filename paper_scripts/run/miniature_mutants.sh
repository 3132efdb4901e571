#!/usr/bin/env bash
# Learning bugs the miniature must catch (docs/miniature.md#planted-bugs): the miniature's recipe with a known bug
# planted (train_ssl.py --plant-bug; MINI_MUTANTS in paper_scripts/common.sh), over SEEDS (default "0 1 2"), beside
# the correct runs of run/miniature.sh in the same $OUTPUT_ROOT/miniature (reused when they exist), ending with
# $OUTPUT_ROOT/miniature/mutants.md: each bug against its correct code, and whether it was detected.
source "$(dirname "$0")/../common.sh"
EXTRA_ARGS=("$@")
bugs=("${MINI_MUTANTS[@]%%=*}")
MINI_METHODS="${MINI_METHODS:-random simclr dualvar ${bugs[*]}}" MINI_SUPERVISED=0 MINI_TABLE=mutants \
  MINI_COMPARE="${MINI_COMPARE:-${MINI_MUTANTS[*]}}" run_miniature miniature
