#!/usr/bin/env bash
# finetune_hmdb: moco clip-sr r21d pretrained on ucf101 (recipe and environment: paper_scripts/common.sh)
source "$(dirname "$0")/../common.sh"
launch "$@"
