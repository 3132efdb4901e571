"""Turn frame folders and a dataset's official split files into one CSV per split.

    python process_data/src/write_csv.py --dataset {ucf101,hmdb51,k400,folder} --frame-root F \\
        --split-dir S --out-dir O [--split 1]

writes ``O/train_split0k.csv`` and ``O/test_split0k.csv`` (rows ``frame_dir,num_frames,label``, frame_dir
relative to F) and ``O/ClassInd.txt``, through ``dataset.layout``. The official formats are parsed as
they ship (METHOD.md section 1.2):

- ucf101: ``classInd.txt``, ``trainlist0k.txt`` (``<Class>/<video>.avi <1-based label>``),
  ``testlist0k.txt`` (``<Class>/<video>.avi``), CRLF line endings;
- hmdb51: 51 x 3 files ``<class>_test_split<k>.txt``, lines ``<video>.avi <tag>``, tag 1 train, 2 test,
  0 unused; classes in sorted order;
- k400: annotation CSVs ``label,youtube_id,time_start,time_end,split`` (the train file and the
  validation file, which is the test split); videos named ``<youtube_id>_<start:06d>_<end:06d>`` or
  ``<youtube_id>``; classes in sorted order;
- folder: class sub-folders of frame folders under F, split per class with a seed, or user lists.

    python process_data/src/write_csv.py --source video --dataset ... --video-root V --split-dir S --out-dir O

``--source video`` writes rows for the video files under V instead (``<Class>/<video>.mp4,num_frames,label``,
relative to V; the datasets read them from ``--video-root``), with the same split parsing. ``num_frames`` is
the container's count when the demuxer confirms it (MP4, AVI), else every frame is decoded and counted
(``--count-frames`` counts always); ``O/video_frames.tsv`` says which, per file. Probing runs over
``--workers`` processes and is cached in ``$XDG_CACHE_HOME/vssl/video_probe/`` (by file size and
modification time), so a rerun opens no video again. A video that cannot be opened or decoded is listed with
the reason, like a missing one, and so is a truncated one: fewer decodable frames than its container declares,
beyond max(2, 2 %), extract_frame.py's rule (dataset/video_reader.py's ``shortfall``).

Frame folders (and video files) are matched case-insensitively and with spaces equal to underscores (UCF101's
``HandstandPushups`` folder holds ``v_HandStandPushups_*``; Kinetics folders spell "air drumming" either
way). A listed video whose folder is missing or holds no frames is reported by name and makes the
command fail, unless ``--allow-missing`` (then its row is left out).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import multiprocessing
import os
import random
import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if not __package__:  # run as a file: the repository root is not on the path yet
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dataset.layout import VideoRecord, count_frames, is_video_file, write_class_index, write_split_csv  # noqa: E402
from dataset.video_reader import VideoInfo, VideoReadError, probe, shortfall  # noqa: E402
from utils.atomic import cannot_write, write_text  # noqa: E402
from utils.cache import cache_file  # noqa: E402

REPORT_NAMES = 20  # names printed per problem kind; the rest are counted
PROBE_REPORT = "video_frames.tsv"
CACHE_SAVE_EVERY = 2000  # probed videos between cache writes: a killed run over 240k videos keeps most of its work


class SplitFileError(ValueError):
    """An official split file is missing or malformed; the message names the file."""


@dataclass
class SplitLists:
    """A parsed split: class names in label order, and (video, 0-based label) pairs per split, where
    video is ``<Class>/<video_stem>`` spelled as in the split files."""
    class_names: list[str]
    train: list[tuple[str, int]]
    test: list[tuple[str, int]]


# ---------------------------------------------------------------------------------------------------
# Parsers of the official formats: pure functions of the split files.


def _read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines; CRLF and trailing blanks tolerated."""
    if not path.is_file():
        raise SplitFileError(f"split file {path} does not exist: check --split-dir and --split")
    return [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
            if line.strip()]


_VIDEO_SUFFIX = re.compile(r"\.(avi|mp4|mkv|webm|mov|m4v|mpg|mpeg|flv|wmv|3gp)$", re.IGNORECASE)


def _stem(name: str) -> str:
    """Drop a video extension; other dots belong to the name."""
    return _VIDEO_SUFFIX.sub("", name)


def _check_split(split: int, dataset: str) -> None:
    if split not in (1, 2, 3):
        raise SplitFileError(f"--split must be 1, 2 or 3 for {dataset}, got {split}")


def parse_ucf101(split_dir: Path, split: int) -> SplitLists:
    _check_split(split, "ucf101")
    class_file = split_dir / "classInd.txt"
    class_names = []
    for line_no, line in enumerate(_read_lines(class_file), start=1):
        index, _, name = line.partition(" ")
        if not index.isdigit() or int(index) != line_no or not name.strip():
            raise SplitFileError(f"{class_file}:{line_no}: expected '{line_no} <ClassName>', got {line!r}")
        class_names.append(name.strip())
    label_of = {name.lower(): i for i, name in enumerate(class_names)}

    def label_from_folder(path: Path, line_no: int, video: str) -> int:
        class_name = video.split("/", 1)[0]
        if "/" not in video or class_name.lower() not in label_of:
            raise SplitFileError(f"{path}:{line_no}: {video!r} is not '<Class>/<video>' with a class of {class_file}")
        return label_of[class_name.lower()]

    train = []
    train_file = split_dir / f"trainlist0{split}.txt"
    for line_no, line in enumerate(_read_lines(train_file), start=1):
        video, _, label = line.partition(" ")
        folder_label = label_from_folder(train_file, line_no, video)
        if label.strip() and (not label.strip().isdigit() or int(label) - 1 != folder_label):
            raise SplitFileError(f"{train_file}:{line_no}: label {label.strip()!r} does not match the class "
                                 f"folder of {video!r} ({folder_label + 1} in {class_file})")
        train.append((_stem(video), folder_label))
    test = []
    test_file = split_dir / f"testlist0{split}.txt"
    for line_no, line in enumerate(_read_lines(test_file), start=1):
        video = line.split(" ", 1)[0]
        test.append((_stem(video), label_from_folder(test_file, line_no, video)))
    return SplitLists(class_names, train, test)


_HMDB_FILE = re.compile(r"(.+)_test_split(\d)\.txt")


def parse_hmdb51(split_dir: Path, split: int) -> SplitLists:
    _check_split(split, "hmdb51")
    if not split_dir.is_dir():
        raise SplitFileError(f"--split-dir {split_dir} is not a folder")
    # listdir + regex, never glob: the video names contain [ ] ! ( ) & '.
    files = {}
    for name in os.listdir(split_dir):
        match = _HMDB_FILE.fullmatch(name)
        if match and int(match.group(2)) == split:
            files[match.group(1)] = split_dir / name
    if not files:
        raise SplitFileError(f"no HMDB51 split files '<class>_test_split{split}.txt' in {split_dir}")
    class_names = sorted(files)
    train, test = [], []
    for label, class_name in enumerate(class_names):
        path = files[class_name]
        for line_no, line in enumerate(_read_lines(path), start=1):
            video, _, tag = line.rpartition(" ")
            if tag not in ("0", "1", "2") or not video:
                raise SplitFileError(f"{path}:{line_no}: expected '<video>.avi <0|1|2>', got {line!r}")
            if tag == "1":
                train.append((f"{class_name}/{_stem(video.strip())}", label))
            elif tag == "2":
                test.append((f"{class_name}/{_stem(video.strip())}", label))
    return SplitLists(class_names, train, test)


def _kinetics_file(split_dir: Path, role: str) -> Path:
    """The annotation CSV for role "train" or "val" (the test split) in split_dir."""
    if not split_dir.is_dir():
        raise SplitFileError(f"--split-dir {split_dir} is not a folder")
    keys = ("train",) if role == "train" else ("validate", "validation", "val")
    found = sorted(p for p in split_dir.iterdir() if p.suffix.lower() == ".csv"
                   and any(k in p.stem.lower() for k in keys))
    if len(found) != 1:
        what = "none" if not found else ", ".join(p.name for p in found)
        flag = "--train-list" if role == "train" else "--test-list"
        raise SplitFileError(f"expected one Kinetics {role} annotation CSV (name containing {' or '.join(keys)}) "
                             f"in {split_dir}, found {what}; give it with {flag}")
    return found[0]


def read_kinetics_csv(path: Path) -> list[tuple[str, str]]:
    """(class name, video stem) per row of an annotation CSV ``label,youtube_id,time_start,time_end,...``."""
    if not path.is_file():
        raise SplitFileError(f"Kinetics annotation CSV {path} does not exist")
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        needed = {"label", "youtube_id", "time_start", "time_end"}
        if not needed <= set(reader.fieldnames or ()):
            raise SplitFileError(f"{path}: expected a header with {', '.join(sorted(needed))}, "
                                 f"got {reader.fieldnames}")
        for line_no, row in enumerate(reader, start=2):
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except (TypeError, ValueError):
                raise SplitFileError(f"{path}:{line_no}: time_start/time_end are not numbers: {row}") from None
            rows.append((row["label"].strip(), f"{row['youtube_id'].strip()}_{start:06d}_{end:06d}"))
    return rows


def parse_kinetics(train_csv: Path, test_csv: Path) -> SplitLists:
    train_rows, test_rows = read_kinetics_csv(train_csv), read_kinetics_csv(test_csv)
    class_names = sorted({c for c, _ in train_rows})
    label_of = {c: i for i, c in enumerate(class_names)}
    unknown = sorted({c for c, _ in test_rows} - set(label_of))
    if unknown:
        raise SplitFileError(f"{test_csv}: classes not in {train_csv}: {', '.join(unknown[:5])}")
    return SplitLists(class_names, [(f"{c}/{v}", label_of[c]) for c, v in train_rows],
                      [(f"{c}/{v}", label_of[c]) for c, v in test_rows])


def _subfolders(path: Path) -> list[str]:
    with os.scandir(path) as entries:
        return sorted(e.name for e in entries if e.is_dir())


def read_user_list(path: Path) -> list[str]:
    """``<Class>/<video>`` per line (extension and a trailing label allowed, as in UCF101 lists)."""
    return [_stem(line.split(" ", 1)[0]) for line in _read_lines(path)]


def _video_files(path: Path) -> list[str]:
    with os.scandir(path) as entries:
        return sorted(e.name for e in entries if is_video_file(e.name) and e.is_file())


def _video_stems(path: Path) -> list[str]:
    return sorted({Path(name).stem for name in _video_files(path)})


def parse_folder(frame_root: Path, test_fraction: float, seed: int,
                 train_list: Path | None = None, test_list: Path | None = None,
                 list_videos: Callable[[Path], list[str]] = _subfolders) -> SplitLists:
    """Classes = sorted class sub-folders of frame_root. Split from user lists, else per class with
    ``random.Random(seed)``: round(test_fraction * n) videos of each class (at least one when n >= 2).
    ``list_videos`` names the videos of a class folder: frame folders, or video files (their stems)."""
    class_names = [c for c in _subfolders(frame_root) if list_videos(frame_root / c)]
    if not class_names:
        what = "frame folders" if list_videos is _subfolders else "video files"
        raise SplitFileError(f"no class sub-folders of {what} in {frame_root}")
    label_of = {c.lower(): i for i, c in enumerate(class_names)}

    def labelled(videos: list[str], path: Path) -> list[tuple[str, int]]:
        out = []
        for video in videos:
            class_name = video.split("/", 1)[0]
            if "/" not in video or class_name.lower() not in label_of:
                raise SplitFileError(f"{path}: {video!r} is not '<Class>/<video>' with a class folder in {frame_root}")
            out.append((video, label_of[class_name.lower()]))
        return out

    if train_list is not None or test_list is not None:
        if train_list is None or test_list is None:
            raise SplitFileError("give both --train-list and --test-list, or neither for a seeded split")
        return SplitLists(class_names, labelled(read_user_list(train_list), train_list),
                          labelled(read_user_list(test_list), test_list))
    rng = random.Random(seed)
    train, test = [], []
    for label, class_name in enumerate(class_names):
        videos = list_videos(frame_root / class_name)
        rng.shuffle(videos)
        n_test = round(test_fraction * len(videos))
        if test_fraction > 0 and len(videos) >= 2:
            n_test = min(max(n_test, 1), len(videos) - 1)
        test += [(f"{class_name}/{v}", label) for v in sorted(videos[:n_test])]
        train += [(f"{class_name}/{v}", label) for v in sorted(videos[n_test:])]
    return SplitLists(class_names, train, test)


# ---------------------------------------------------------------------------------------------------
# Matching listed videos to frame folders on disk.


def _key(name: str) -> str:
    return name.lower().replace(" ", "_")


class FrameIndex:
    """Folder lookup under a frame root that tolerates case and space/underscore differences and
    prefers an exact match. Each class folder is listed once. With ``videos`` it finds video files
    ``<Class>/<video_stem>.<ext>`` under a video root instead of frame folders."""

    def __init__(self, frame_root: Path, videos: bool = False):
        self.frame_root = frame_root
        self.videos = videos
        self._classes = self._index(_subfolders(frame_root))
        self._videos: dict[str, dict[str, list[str]]] = {}

    def _index(self, names: list[str], files: bool = False) -> dict[str, list[str]]:
        index: dict[str, list[str]] = {}
        for name in names:
            index.setdefault(_key(Path(name).stem if files else name), []).append(name)
        return index

    @staticmethod
    def _pick(index: dict[str, list[str]], name: str, files: bool = False) -> str | None:
        candidates = index.get(_key(name), [])
        exact = [c for c in candidates if (Path(c).stem if files else c) == name]
        return (exact or candidates or [None])[0]

    def find(self, video: str) -> str | None:
        """``<Class>/<video_stem>`` (``<Class>/<video_stem>.<ext>`` for videos) as on disk, or None. A Kinetics
        stem ``<id>_<start>_<end>`` also matches a folder named ``<id>``."""
        class_name, _, stem = video.partition("/")
        folder = self._pick(self._classes, class_name)
        if folder is None:
            return None
        if folder not in self._videos:
            listing = _video_files if self.videos else _subfolders
            self._videos[folder] = self._index(listing(self.frame_root / folder), files=self.videos)
        names = [stem]
        kinetics = re.fullmatch(r"(.+)_\d{6}_\d{6}", stem)
        if kinetics:
            names.append(kinetics.group(1))
        for name in names:
            found = self._pick(self._videos[folder], name, files=self.videos)
            if found is not None:
                return f"{folder}/{found}"
        return None


@dataclass
class SplitReport:
    name: str
    listed: int = 0
    records: list[VideoRecord] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # "<video> (<reason>)"
    sources: Counter = field(default_factory=Counter)  # where num_frames came from, for video files

    @property
    def problems(self) -> int:
        return len(self.missing) + len(self.empty) + len(self.unreadable)

    def lines(self, allow_missing: bool, videos: bool = False) -> list[str]:
        out = [f"{self.name}: listed {self.listed}, found {len(self.records)}, "
               f"missing {len(self.missing)}, empty {len(self.empty)}" +
               (f", unreadable {len(self.unreadable)}; num_frames from the container for "
                f"{self.sources['container']}, counted for {self.sources['counted']} (per file: {PROBE_REPORT})"
                if videos else "")]
        kinds = ((("missing (no video file)", self.missing), ("empty (no decodable frame)", self.empty),
                  ("unreadable", self.unreadable)) if videos else
                 (("missing (no frame folder)", self.missing), ("empty (no image_*.jpg)", self.empty)))
        for kind, names in kinds:
            if names:
                more = f" ... and {len(names) - REPORT_NAMES} more" if len(names) > REPORT_NAMES else ""
                out.append(f"  {kind}: {', '.join(names[:REPORT_NAMES])}{more}")
        if allow_missing and self.problems:
            out.append(f"  --allow-missing: {self.problems} rows left out of the CSV")
        return out


def match_split(name: str, videos: list[tuple[str, int]], index: FrameIndex,
                probes: dict[str, VideoInfo | str] | None = None) -> SplitReport:
    """Rows of the listed ``videos`` found under the index's root; ``probes`` (video files: path relative to
    the root -> VideoInfo, or the reason it cannot be read) replace counting frame folders."""
    report = SplitReport(name, listed=len(videos))
    for video, label in videos:
        frame_dir = index.find(video)
        if frame_dir is None:
            report.missing.append(video)
            continue
        if probes is None:
            num_frames = count_frames(index.frame_root / frame_dir)
        else:
            info = probes[frame_dir]
            problem = info if isinstance(info, str) else truncation(info)
            if problem:
                report.unreadable.append(f"{frame_dir} ({problem})")
                continue
            num_frames = info.num_frames
            if num_frames:
                report.sources[info.source] += 1
        if num_frames == 0:
            report.empty.append(frame_dir)
        else:
            report.records.append(VideoRecord(frame_dir, num_frames, label))
    return report


# ---------------------------------------------------------------------------------------------------
# Probing video files: frame counts, in parallel, cached.


def _probe_one(job: tuple[Path, str, bool]) -> tuple[str, VideoInfo | str]:
    root, rel, count = job
    try:
        return rel, probe(root / rel, count=count)
    except VideoReadError as error:
        return rel, str(error)
    except Exception as error:  # noqa: BLE001 - one damaged file must not stop a run over 240k videos
        return rel, f"{type(error).__name__}: {error}"


def _stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _save_cache(path: Path, cache: dict) -> None:
    try:  # a cache is an optimisation: a read-only home only costs the probing next time
        write_text(path, json.dumps(cache))
    except OSError:
        pass


def probe_videos(video_root: Path, videos: list[str], workers: int, count: bool = False,
                 cache_path: Path | None = None) -> tuple[dict[str, VideoInfo | str], int]:
    """(video -> VideoInfo or the reason it cannot be read, how many were probed now rather than cached) for
    ``videos`` relative to ``video_root``. A cached result is reused while the file keeps its size and
    modification time (and, with ``count``, was counted)."""
    cache_path = cache_path or cache_file("video_probe", video_root)
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    results: dict[str, VideoInfo | str] = {}
    todo = []
    for rel in videos:
        entry = cache.get(rel)
        if entry and entry["stamp"] == _stamp(video_root / rel) and (not count or entry.get("source") != "container"):
            results[rel] = entry["error"] if "error" in entry else VideoInfo(
                entry["num_frames"], entry["fps"], entry["source"], entry["declared"])
        else:
            todo.append(rel)
    jobs = [(video_root, rel, count) for rel in todo]
    from tqdm import tqdm
    parallel = workers > 1 and len(jobs) > 1
    # spawn: a fork of a process whose threads hold locks (OpenCV's, FFmpeg's, torch's) can deadlock
    with multiprocessing.get_context("spawn").Pool(workers) if parallel else contextlib.nullcontext() as pool:
        outcomes = pool.imap_unordered(_probe_one, jobs, chunksize=4) if pool else map(_probe_one, jobs)
        for done, (rel, info) in enumerate(tqdm(outcomes, total=len(jobs), desc="probe videos",
                                                 disable=not jobs), start=1):
            results[rel] = info
            entry = {"error": info} if isinstance(info, str) else dict(
                num_frames=info.num_frames, fps=info.fps, source=info.source, declared=info.declared)
            cache[rel] = {"stamp": _stamp(video_root / rel), **entry}
            if done % CACHE_SAVE_EVERY == 0:
                _save_cache(cache_path, cache)
    if jobs:
        _save_cache(cache_path, cache)
    return results, len(jobs)


def truncation(info: VideoInfo) -> str:
    """Why a probed video is truncated, by extract_frame.py's rule ('' when it is not)."""
    short = shortfall(info.num_frames, info.declared)
    return f"{short} (download it again)" if short else ""


def write_probe_report(path: Path, probes: dict[str, VideoInfo | str]) -> None:
    """``video, num_frames, source, declared, fps, problem`` per probed video, tab-separated, sorted."""
    lines = ["video\tnum_frames\tsource\tdeclared\tfps\tproblem"]
    for rel, info in sorted(probes.items()):
        if isinstance(info, str):
            lines.append(f"{rel}\t\t\t\t\t{' '.join(info.split())}")
        else:
            fps = "" if info.fps is None else f"{info.fps:g}"
            lines.append(f"{rel}\t{info.num_frames}\t{info.source}\t{info.declared}\t{fps}\t{truncation(info)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Write O/train_split0k.csv, O/test_split0k.csv and O/ClassInd.txt from frame folders and "
                    "a dataset's official split files; reports listed/found/missing/empty videos per split.")
    p.add_argument("--dataset", required=True, choices=("ucf101", "hmdb51", "k400", "folder"),
                   help="format of the split files: ucf101 (classInd/trainlist0k/testlist0k), hmdb51 "
                        "(<class>_test_split<k>.txt), k400 (annotation CSVs), folder (class sub-folders of "
                        "--frame-root, seeded split or --train-list/--test-list)")
    p.add_argument("--source", choices=("frames", "video"), default="frames",
                   help="frames: rows for the frame folders under --frame-root; video: rows for the video files "
                        "under --video-root (read by the datasets straight from the videos)")
    p.add_argument("--frame-root", type=Path,
                   help="frame folders F/<Class>/<video>/image_NNNNN.jpg (from extract_frame.py); --source frames")
    p.add_argument("--video-root", type=Path,
                   help="video files V/<Class>/<video>.<ext> (any container FFmpeg reads); --source video")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="--source video: processes that probe the videos (default min(8, CPUs))")
    p.add_argument("--count-frames", action="store_true",
                   help="--source video: decode and count every video's frames even where the container's count "
                        "is confirmed by its index")
    p.add_argument("--split-dir", type=Path,
                   help="folder with the official split files (required except for --dataset folder)")
    p.add_argument("--out-dir", type=Path, required=True, help="where the CSVs and ClassInd.txt are written")
    p.add_argument("--split", type=int, default=1, help="official split number 1-3 (default 1); names the CSVs")
    p.add_argument("--allow-missing", action="store_true",
                   help="leave out listed videos whose frame folder is missing or empty instead of failing")
    p.add_argument("--train-list", type=Path,
                   help="k400: the train annotation CSV (default: the *train*.csv in --split-dir); folder: a "
                        "list of <Class>/<video> lines for training")
    p.add_argument("--test-list", type=Path,
                   help="k400: the validation annotation CSV used as test split (default: the *val*.csv in "
                        "--split-dir); folder: a list of <Class>/<video> lines for testing")
    p.add_argument("--test-fraction", type=float, default=0.3,
                   help="folder: fraction of each class's videos put in the test split (default 0.3)")
    p.add_argument("--seed", type=int, default=0, help="folder: seed of the train/test split (default 0)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration as JSON and exit")
    return p


def parse_split_lists(args: argparse.Namespace) -> SplitLists:
    if args.dataset == "folder":
        if not 0 <= args.test_fraction < 1:
            raise SplitFileError(f"--test-fraction must be in [0, 1), got {args.test_fraction}")
        return parse_folder(args.root, args.test_fraction, args.seed, args.train_list, args.test_list,
                            list_videos=_video_stems if args.source == "video" else _subfolders)
    if args.split_dir is None and not (args.dataset == "k400" and args.train_list and args.test_list):
        raise SplitFileError(f"--dataset {args.dataset} needs --split-dir (the folder of its official split files)")
    if args.dataset == "ucf101":
        return parse_ucf101(args.split_dir, args.split)
    if args.dataset == "hmdb51":
        return parse_hmdb51(args.split_dir, args.split)
    return parse_kinetics(args.train_list or _kinetics_file(args.split_dir, "train"),
                          args.test_list or _kinetics_file(args.split_dir, "val"))


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.dry_run:
        print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, indent=2))
        return 0
    videos = args.source == "video"
    flag = "--video-root" if videos else "--frame-root"
    args.root = args.video_root if videos else args.frame_root
    try:
        if args.root is None:
            raise SplitFileError(f"--source {args.source} needs {flag}")
        if not args.root.is_dir():
            raise SplitFileError(f"{flag} {args.root} is not a folder" +
                                 ("" if videos else ": run extract_frame.py first"))
        if args.workers < 1:
            raise SplitFileError(f"--workers must be at least 1, got {args.workers}")
        lists = parse_split_lists(args)
        reason = cannot_write(args.out_dir, create=False)  # no folder is left behind when no CSV is written
        if reason:
            raise SplitFileError(f"--out-dir {args.out_dir} is not writable ({reason}): choose a folder you can "
                                 "write to, or fix its permissions")
    except SplitFileError as e:
        print(f"write_csv.py: error: {e}", file=sys.stderr)
        return 2

    index = FrameIndex(args.root, videos=videos)
    probes = None
    if videos:
        found = sorted({f for f in (index.find(v) for v, _ in lists.train + lists.test) if f is not None})
        probes, probed = probe_videos(args.root, found, args.workers, args.count_frames)
        print(f"probed {probed} videos, {len(found) - probed} from the cache ({cache_file('video_probe', args.root)})")
        write_probe_report(args.out_dir / PROBE_REPORT, probes)
    reports = [match_split("train", lists.train, index, probes), match_split("test", lists.test, index, probes)]
    incomplete = False
    for report in reports:
        print("\n".join(report.lines(args.allow_missing, videos)))
        incomplete |= bool(report.problems)
        if not report.records:
            what = "readable video" if videos else "frames"
            print(f"write_csv.py: error: no video of the {report.name} split has {what} under {args.root}; "
                  f"check {flag}" + ("" if videos else " and run extract_frame.py"), file=sys.stderr)
            return 1
    if incomplete and not args.allow_missing:
        fix = ("re-download or re-encode them (process_data/src/reencode_videos.py)" if videos else
               "extract them with extract_frame.py (see extract_failures.txt in the frame root)")
        print(f"write_csv.py: error: listed videos are missing, empty or unreadable (names above); {fix}, or pass "
              "--allow-missing to leave them out. No CSV written.", file=sys.stderr)
        return 1

    suffix = f"split{args.split:02d}"
    write_class_index(args.out_dir / "ClassInd.txt", lists.class_names)
    for report in reports:
        write_split_csv(args.out_dir / f"{report.name}_{suffix}.csv", report.records)
    print(f"write_csv.py: wrote {args.out_dir}/{{train,test}}_{suffix}.csv "
          f"({len(reports[0].records)} + {len(reports[1].records)} rows) and ClassInd.txt "
          f"({len(lists.class_names)} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
