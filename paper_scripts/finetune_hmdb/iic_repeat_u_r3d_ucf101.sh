#!/usr/bin/env bash
# finetune_hmdb: iic repeat-u r3d pretrained on ucf101 (recipe and environment: paper_scripts/common.sh)
source "$(dirname "$0")/../common.sh"
launch "$@"
