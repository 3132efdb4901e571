#!/usr/bin/env bash
# test_retrieval: simclr clip-sr-tc r21d pretrained on demo (recipe and environment: paper_scripts/common.sh)
source "$(dirname "$0")/../common.sh"
launch "$@"
