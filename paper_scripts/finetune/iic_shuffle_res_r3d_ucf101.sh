#!/usr/bin/env bash
# finetune: iic shuffle-res r3d pretrained on ucf101 (recipe and environment: paper_scripts/common.sh)
source "$(dirname "$0")/../common.sh"
launch "$@"
