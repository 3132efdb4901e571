#!/usr/bin/env bash
# test: simclr clip r21d pretrained on demo (recipe and environment: paper_scripts/common.sh)
source "$(dirname "$0")/../common.sh"
launch "$@"
