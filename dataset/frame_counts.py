"""The check that every frame folder holds the number of frames its CSV row says, cached by the folders' mtimes."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dataset.frame_reader import redo_hint
from dataset.layout import LayoutError, VideoRecord, count_frames
from utils.atomic import write_text
from utils.cache import cache_file


def check_frame_counts(records: list[VideoRecord], frame_root: Path, csv_path: Path | None = None) -> None:
    """Raise LayoutError unless every record's folder holds the CSV's number of frames, so that a run fails at
    its start instead of hours in, when it first samples a missing frame.

    A directory listing per folder, cached by the folder's mtime (adding, removing or renaming a frame changes
    it) in $XDG_CACHE_HOME/vssl/frame_counts/: a later start costs one stat per folder.
    """
    cache_path = cache_file("frame_counts", frame_root)
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    changed, wrong = False, []
    for record in records:
        folder = record.path(frame_root)
        try:
            mtime = os.stat(folder).st_mtime_ns
        except OSError:
            wrong.append((folder, 0, record.num_frames))
            continue
        cached = cache.get(str(folder))
        if cached is None or cached[0] != mtime:
            cached = cache[str(folder)] = [mtime, count_frames(folder)]
            changed = True
        if cached[1] != record.num_frames:
            wrong.append((folder, cached[1], record.num_frames))
    if changed:
        try:  # a cache is an optimisation: a read-only home only costs the listing next time
            write_text(cache_path, json.dumps(cache))
        except OSError:
            pass
    if wrong:
        folder, on_disk, in_csv = wrong[0]
        raise LayoutError(
            f"{len(wrong)} of {len(records)} frame folders do not hold the number of frames that "
            f"{csv_path or 'the CSV'} says, e.g. {folder}: {on_disk} on disk, {in_csv} in the CSV. If the frames on disk are right, re-run "
            f"process_data/src/write_csv.py; if a folder is incomplete, {redo_hint(folder)}")
