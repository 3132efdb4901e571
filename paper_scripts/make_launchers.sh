#!/usr/bin/env bash
# Writes paper_scripts/<mode>/<exp>.sh for every experiment of common.sh's table and every mode (run
# included). All launchers are the same three lines: the folder names the mode, the file the experiment.
# Run it after adding an experiment to the table; existing launchers are rewritten identically.
source "$(dirname "$0")/common.sh"
cd "$REPO_ROOT/paper_scripts"
for exp in "${!EXPERIMENTS[@]}"; do
  read_experiment "$exp"
  for mode in "${MODES[@]}" run; do
    [[ "$PRETRAIN_DATA" = demo && ( "$mode" == *_hmdb || "$mode" = run ) ]] && continue
    mkdir -p "$mode"
    printf '%s\n' '#!/usr/bin/env bash' \
      "# $mode: $MODEL $METHOD_MODE $NET pretrained on $PRETRAIN_DATA (recipe and environment: paper_scripts/common.sh)" \
      'source "$(dirname "$0")/../common.sh"' 'launch "$@"' >"$mode/$exp.sh"
  done
done
