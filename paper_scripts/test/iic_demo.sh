#!/usr/bin/env bash
# test: iic repeat-res r21d pretrained on demo (recipe and environment: paper_scripts/common.sh)
source "$(dirname "$0")/../common.sh"
launch "$@"
