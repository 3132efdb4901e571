#!/usr/bin/env bash
# test_hmdb: iic repeat-res r3d pretrained on ucf101 (recipe and environment: paper_scripts/common.sh)
source "$(dirname "$0")/../common.sh"
launch "$@"
