"""The on-disk layout shared by frame extraction, CSV writing and the datasets.

Frame folders: ``<frame_root>/<ClassName>/<video_stem>/image_00001.jpg, ...`` (1-based, 5 digits,
consecutive), the DualVar/CoCLR layout. Split CSVs: one row per video, no header,
``frame_dir,num_frames[,label]``; ``frame_dir`` is relative to the frame root (absolute paths, as
DPC/CoCLR wrote them, load unchanged). Class lists: ``ClassInd.txt`` with lines
``<1-based index> <ClassName>`` (class names may contain spaces, as in Kinetics).

Optical flow, the two-stream release's layout: ``<flow_root>/{u,v}/<ClassName>/<video_stem>/frame000001.jpg,
...`` (1-based, 6 digits, single-channel JPEGs). Flow frame t (0-based) is the motion from RGB frame t to
t + 1, so a video of L frames has L - 1 flow frames (one neutral frame when L = 1).

Kept free of torch so that the process_data scripts start fast.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

FRAME_TEMPLATE = "image_{:05d}.jpg"
_FRAME_RE = re.compile(r"image_(\d{5})\.jpg")


def frame_name(index: int) -> str:
    """File name of the frame with 0-based ``index``."""
    return FRAME_TEMPLATE.format(index + 1)


def count_frames(frame_dir: str | os.PathLike) -> int:
    """Number of top-level ``image_NNNNN.jpg`` files; stray sub-folders and other files are ignored.

    Returns 0 for a missing folder.
    """
    try:
        with os.scandir(frame_dir) as entries:
            return sum(1 for e in entries if _FRAME_RE.fullmatch(e.name) and e.is_file())
    except FileNotFoundError:
        return 0


FLOW_TEMPLATE = "frame{:06d}.jpg"
FLOW_FOLDER = "tvl1_flow"  # a dataset's flow root, next to its frame root
FLOW_COMPONENTS = ("u", "v")  # horizontal, vertical displacement
_FLOW_RE = re.compile(r"frame(\d{6})\.jpg")


def flow_frame_name(index: int) -> str:
    """File name of the flow frame with 0-based ``index`` (the motion from RGB frame index to index + 1)."""
    return FLOW_TEMPLATE.format(index + 1)


def count_flow_frames(flow_dir: str | os.PathLike) -> int:
    """Number of top-level ``frameNNNNNN.jpg`` files of one component's folder; 0 for a missing folder."""
    try:
        with os.scandir(flow_dir) as entries:
            return sum(1 for e in entries if _FLOW_RE.fullmatch(e.name) and e.is_file())
    except FileNotFoundError:
        return 0


def expected_flow_frames(num_frames: int) -> int:
    """Flow frames of a video with ``num_frames`` RGB frames: one per consecutive pair, at least one."""
    return max(num_frames - 1, 1)


def flow_dir(flow_root: str | os.PathLike, component: str, frame_dir: str | os.PathLike) -> Path:
    """``<flow_root>/<component>/<Class>/<video>`` for a CSV ``frame_dir``; an absolute ``frame_dir`` (DPC-style
    CSV) contributes its last two parts, the class and the video; a video file (video CSV) its name without
    the extension, so that a video CSV finds the flow extracted from the same videos."""
    rel = Path(frame_dir)
    if rel.is_absolute():
        rel = Path(*rel.parts[-2:])
    if is_video_file(rel):
        rel = rel.with_suffix("")
    return Path(flow_root) / component / rel


# Split CSV rows whose first column ends in one of these name a video file (read by dataset/video_reader.py,
# relative to the video root) instead of a frame folder
VIDEO_EXTENSIONS = ("avi", "mp4", "mkv", "webm", "mov", "m4v", "mpg", "mpeg", "flv", "wmv", "3gp")


def is_video_file(name: str | os.PathLike) -> bool:
    return Path(name).suffix.lower().lstrip(".") in VIDEO_EXTENSIONS


class LayoutError(ValueError):
    """A file on disk does not follow the layout above; the message names the file and the fix."""


@dataclass(frozen=True)
class VideoRecord:
    frame_dir: str  # as written in the CSV: relative to the frame root, or absolute
    num_frames: int
    label: int = -1  # -1: unlabelled (e.g. a pretraining-only CSV with two columns)

    def path(self, frame_root: str | os.PathLike | None) -> Path:
        """The row's frame folder or video file under ``frame_root`` (the video root for a video row); a video
        that is missing there may be found under another video extension (`video_file`)."""
        p = Path(self.frame_dir)
        p = p if p.is_absolute() or frame_root is None else Path(frame_root) / p
        return video_file(p) if is_video_file(p) else p


def video_file(path: Path) -> Path:
    """``path`` when it exists; else the one file beside it with the same name and another video extension,
    such as the copy that process_data/src/reencode_videos.py writes of ``v.avi`` as ``v.mp4``, so that a CSV
    written from the originals reads the copies; else ``path``. LayoutError when several files could be it."""
    if path.is_file():
        return path
    found: dict[tuple[int, int], Path] = {}  # by inode: a case-insensitive file system finds v.mp4 as v.MP4 too
    for extension in VIDEO_EXTENSIONS:
        for candidate in (path.with_suffix(f".{extension}"), path.with_suffix(f".{extension.upper()}")):
            try:
                stat = candidate.stat()
            except OSError:
                continue
            if S_ISREG(stat.st_mode):
                found.setdefault((stat.st_dev, stat.st_ino), candidate)
    if len(found) > 1:
        names = ", ".join(sorted(p.name for p in found.values()))
        raise LayoutError(f"{path} does not exist, and {len(found)} files beside it could stand for it ({names}): "
                          "keep one, or name the file in the CSV")
    return next(iter(found.values()), path)


def read_split_csv(path: str | os.PathLike) -> list[VideoRecord]:
    """Read a split CSV; every row must have the same number of columns (2 or 3)."""
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"split CSV {path} does not exist: run process_data/src/write_csv.py first")
    records: list[VideoRecord] = []
    columns = None
    with open(path, newline="") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if columns is None:
                columns = len(row)
            if len(row) not in (2, 3) or len(row) != columns:
                raise LayoutError(
                    f"{path}:{line_no}: expected rows 'frame_dir,num_frames[,label]' with the same "
                    f"number of columns on every line, got {len(row)} columns ({row!r}); "
                    "re-create the file with process_data/src/write_csv.py")
            try:
                num_frames = int(row[1])
                label = int(row[2]) if len(row) == 3 else -1
            except ValueError:
                raise LayoutError(
                    f"{path}:{line_no}: num_frames and label must be integers, got {row!r}; "
                    "re-create the file with process_data/src/write_csv.py") from None
            records.append(VideoRecord(row[0], num_frames, label))
    if not records:
        raise LayoutError(f"split CSV {path} is empty: re-run process_data/src/write_csv.py")
    return records


def write_split_csv(path: str | os.PathLike, records: list[VideoRecord]) -> None:
    """Write a split CSV atomically (a crash never leaves a half-written file behind)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        for r in records:
            writer.writerow([r.frame_dir, r.num_frames] + ([r.label] if r.label >= 0 else []))
    os.replace(tmp, path)


def read_class_index(path: str | os.PathLike) -> list[str]:
    """Class names in label order from ``<1-based index> <ClassName>`` lines (CRLF tolerated)."""
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"class list {path} does not exist: run process_data/src/write_csv.py first")
    names: dict[int, str] = {}
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        index, _, name = line.partition(" ")
        if not index.isdigit() or not name.strip():
            raise LayoutError(f"{path}:{line_no}: expected '<1-based index> <ClassName>', got {line!r}")
        names[int(index)] = name.strip()
    if sorted(names) != list(range(1, len(names) + 1)):
        raise LayoutError(f"{path}: class indices must be 1..{len(names)} without gaps")
    return [names[i] for i in range(1, len(names) + 1)]


def write_class_index(path: str | os.PathLike, class_names: list[str]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{i} {name}\n" for i, name in enumerate(class_names, start=1)))
    os.replace(tmp, path)
