#!/usr/bin/env bash
# run: iic shuffle-u r3d pretrained on ucf101 (recipe and environment: paper_scripts/common.sh)
source "$(dirname "$0")/../common.sh"
launch "$@"
