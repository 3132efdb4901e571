#!/usr/bin/env bash
# test_retrieval: iic repeat-res r21d pretrained on demo (recipe and environment: paper_scripts/common.sh)
source "$(dirname "$0")/../common.sh"
launch "$@"
