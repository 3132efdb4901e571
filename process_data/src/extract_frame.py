"""Decode videos into JPEG frame folders: ``F/<ClassName>/<video_stem>/image_00001.jpg, ...``.

    python process_data/src/extract_frame.py --video-root V --frame-root F [--short-side 128]

Every frame is decoded at the native rate (PyAV first, OpenCV as the fallback), resized so the
short side is ``--short-side`` (or to a fixed ``--size H W``) and written with ``cv2.imencode``.
Videos run in parallel over a process pool. Re-running is cheap and safe: a video whose final
frame folder exists is skipped, and a folder is only ever written under a temporary name and
renamed when complete, so a killed run leaves no half folder that looks finished. Videos that
cannot be decoded, and truncated videos (fewer frames decoded than their container declares, beyond
a tolerance of max(2, 2 %)), are listed in ``F/extract_failures.txt`` (``path<TAB>reason``) while
every other video is still extracted; the exit status is 1 when any video failed.

    python process_data/src/extract_frame.py --video-root V --frame-root F --redo Class/video [...]

``--redo`` extracts the named frame folders again although they exist (a frame that a training run
found corrupt, a video replaced since): each is given as the CSV writes it (``<Class>/<video>``) or as
its path, and its new frames replace the old ones only once complete.

Optical flow from the extracted frames is process_data/src/extract_flow.py, which shares this script's
resumable job runner (process_data/src/jobs.py); ``extract_frame.py --flow ...`` still runs it, with a note.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

if not __package__:  # run as a file: the repository root is not on the path yet
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import cv2  # noqa: E402

from dataset.layout import VIDEO_EXTENSIONS, count_frames, frame_name  # noqa: E402
from dataset.video_reader import shortfall, to_rgb  # noqa: E402
from process_data.src.jobs import (OLD_SUFFIX, TMP_SUFFIX, ExtractError, Result, check_job_args,  # noqa: E402
                                   class_entries, dry_run, run_jobs)
from utils.atomic import cannot_write  # noqa: E402

FAILURES_FILE = "extract_failures.txt"
DEFAULT_SHORT_SIDE = 128


@dataclass(frozen=True)
class Job:
    video: Path
    out_dir: Path


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Extract every frame of every video into F/<Class>/<video_stem>/image_NNNNN.jpg "
                    "(parallel, resumable; failures listed in F/extract_failures.txt). Optical flow from those frames: "
                    "process_data/src/extract_flow.py.")
    p.add_argument("--video-root", type=Path,
                   help="folder of class sub-folders of videos (V/<Class>/<video>.<ext>); with --list, "
                        "the base for relative paths in the list")
    p.add_argument("--frame-root", type=Path, required=True,
                   help="output folder; frames go to F/<Class>/<video_stem>/")
    p.add_argument("--list", type=Path, dest="list_file",
                   help="text file with one video path per line (relative to --video-root or absolute), "
                        "for Kinetics-style layouts; output F/<parent folder name>/<stem>/")
    p.add_argument("--short-side", type=int, default=None,
                   help=f"resize so the shorter side has this many pixels, aspect kept (default "
                        f"{DEFAULT_SHORT_SIDE}; DualVar used 240 for UCF101/HMDB51, 150 for Kinetics; "
                        "0 keeps the native size)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="resize every frame to exactly H x W instead (aspect not kept)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality 1-100 (default 90)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="parallel processes, one video each (default min(8, CPU count)); 1 runs inline")
    p.add_argument("--extensions", default=",".join(VIDEO_EXTENSIONS),
                   help="comma-separated video file extensions to pick up when walking --video-root")
    p.add_argument("--redo", nargs="+", default=[], metavar="FOLDER",
                   help="extract these frame folders again although they exist: <Class>/<video> as in the CSVs, "
                        "or their path (the error of a training run that met a bad frame names the folder)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved configuration and the number of videos found as JSON, then exit")
    p.add_argument("--flow", action="store_true",
                   help="optical flow is process_data/src/extract_flow.py; --flow runs it with the other flags "
                        "(--frame-root, --flow-root, --flow-algorithm, --flow-bound, --workers, --quality, --dry-run)")
    return p


def check_args(args: argparse.Namespace) -> None:
    check_job_args(args)
    if args.size is not None and args.short_side is not None:
        raise ExtractError("give either --short-side or --size H W, not both")
    if args.size is None and args.short_side is None:
        args.short_side = DEFAULT_SHORT_SIDE
    if args.size is not None and min(args.size) <= 0:
        raise ExtractError(f"--size H W must be positive, got {args.size}")
    if args.short_side is not None and args.short_side < 0:
        raise ExtractError(f"--short-side must be >= 0 (0 keeps the native size), got {args.short_side}")
    if args.list_file is None:
        if args.video_root is None:
            raise ExtractError("give --video-root (a folder of class sub-folders of videos) or --list FILE")
        if not args.video_root.is_dir():
            raise ExtractError(f"--video-root {args.video_root} is not a folder")
    elif not args.list_file.is_file():
        raise ExtractError(f"--list {args.list_file} does not exist")


def find_videos(video_root: Path, extensions: set[str]) -> list[Path]:
    """Videos at ``video_root/<Class>/<video>.<ext>``, sorted."""
    return class_entries(video_root, lambda f: f.is_file() and f.name.rpartition(".")[2].lower() in extensions)


def read_video_list(list_file: Path, video_root: Path | None) -> list[Path]:
    videos = []
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        path = Path(line)
        if not path.is_absolute():
            if video_root is None:
                raise ExtractError(f"--list {list_file} has relative path {line!r}: give --video-root as its base")
            path = video_root / path
        videos.append(path)
    return videos


def output_size(height: int, width: int, short_side: int | None, size: tuple[int, int] | None) -> tuple[int, int]:
    """(H, W) of the written frames."""
    if size is not None:
        return size[0], size[1]
    if not short_side:
        return height, width
    if height <= width:
        return short_side, max(1, round(width * short_side / height))
    return max(1, round(height * short_side / width)), short_side


def declared_frames(video: Path) -> int:
    """The frame count the container declares (0 when it declares none)."""
    try:
        import av

        with av.open(str(video)) as container:
            return int(container.streams.video[0].frames) if container.streams.video else 0
    except Exception:  # a file PyAV cannot open: ask OpenCV
        capture = cv2.VideoCapture(str(video))
        try:
            return max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))) if capture.isOpened() else 0
        finally:
            capture.release()


def _frames_pyav(video: Path):
    import av

    with av.open(str(video)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            yield to_rgb(frame, "bgr24")  # (H, W, 3) uint8


def _frames_opencv(video: Path):
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise ValueError("OpenCV cannot open the file")
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield frame
    finally:
        capture.release()


# Tried in order; the next one starts from scratch when one raises or yields no frame.
DECODERS = (("pyav", _frames_pyav), ("opencv", _frames_opencv))


def _write_frames(frames, tmp_dir: Path, short_side, size, quality: int) -> int:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    count = 0
    target = None
    for frame in frames:
        if target is None:
            target = output_size(frame.shape[0], frame.shape[1], short_side, size)
        if frame.shape[:2] != target:
            shrinking = target[0] * target[1] < frame.shape[0] * frame.shape[1]
            frame = cv2.resize(frame, (target[1], target[0]),
                               interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        ok, encoded = cv2.imencode(".jpg", frame, params)
        if not ok:
            raise ValueError(f"JPEG encoding failed for frame {count}")
        # imencode + Python write instead of cv2.imwrite, which fails on some non-ASCII paths.
        (tmp_dir / frame_name(count)).write_bytes(encoded.tobytes())
        count += 1
    return count


def extract_video(job: Job, short_side: int | None, size: tuple[int, int] | None, quality: int) -> Result:
    """Extract one video into ``job.out_dir``; never raises for a bad video, returns a failed Result."""
    tmp_dir = job.out_dir.with_name(job.out_dir.name + TMP_SUFFIX)
    if not job.video.is_file():
        return Result(job.video, "failed", reason="video file not found")
    if job.video.stat().st_size == 0:
        return Result(job.video, "failed", reason="empty file (0 bytes)")
    errors = []
    declared = declared_frames(job.video)
    for decoder_name, decode in DECODERS:
        shutil.rmtree(tmp_dir, ignore_errors=True)  # a stale folder from a killed run, or a failed decoder
        tmp_dir.mkdir(parents=True)
        try:
            count = _write_frames(decode(job.video), tmp_dir, short_side, size, quality)
        except Exception as e:  # any decoder error: try the next decoder, report all if none works
            errors.append(f"{decoder_name}: {type(e).__name__}: {e}")
            continue
        if count == 0:
            errors.append(f"{decoder_name}: no frames decoded")
            continue
        short = shortfall(count, declared)
        if short:
            errors.append(f"{decoder_name}: {short}")
            continue
        try:
            _replace_folder(tmp_dir, job.out_dir)
        except OSError as e:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            return Result(job.video, "failed", reason=f"cannot create {job.out_dir}: {e} "
                                                      "(remove the folder and re-run)")
        return Result(job.video, "done", frames=count)
    shutil.rmtree(tmp_dir, ignore_errors=True)
    reason = "; ".join(errors).replace("\t", " ").replace("\n", " ")
    if all("truncated video" in e for e in errors):
        return Result(job.video, "failed", reason=f"{errors[-1].partition(': ')[2]} (download it again)")
    return Result(job.video, "failed", reason=f"unreadable or corrupt video ({reason})")


def _replace_folder(tmp_dir: Path, out_dir: Path) -> None:
    """Rename the finished ``tmp_dir`` to ``out_dir``. An existing ``out_dir`` (--redo) is first moved aside and
    deleted only afterwards; a kill in between leaves no ``out_dir``, so the next run extracts it again."""
    old = out_dir.with_name(out_dir.name + OLD_SUFFIX)
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.is_dir():
        os.replace(out_dir, old)
    os.replace(tmp_dir, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _extract_in_worker(payload) -> Result:
    return extract_video(*payload)


def make_jobs(videos: list[Path], frame_root: Path) -> list[Job]:
    # Absolute video paths: they are the keys of the failures file, whatever the working directory.
    videos = [Path(os.path.abspath(v)) for v in videos]
    jobs = [Job(v, frame_root / v.parent.name / v.stem) for v in videos]
    by_out: dict[Path, list[Path]] = {}
    for job in jobs:
        by_out.setdefault(job.out_dir, []).append(job.video)
    clashes = {out: vs for out, vs in by_out.items() if len(vs) > 1}
    if clashes:
        out, vs = next(iter(clashes.items()))
        raise ExtractError(f"{len(clashes)} frame folder(s) would be written by several videos, e.g. {out} "
                           f"by {', '.join(map(str, vs))}: keep one video per <Class>/<stem>")
    return jobs


def redo_folders(names: list[str], frame_root: Path, jobs: list[Job]) -> set[Path]:
    """The output folders of ``--redo`` (``<Class>/<video>`` relative to ``frame_root``, or a path); each must be
    the folder of one of the videos found."""
    by_folder = {Path(os.path.abspath(job.out_dir)): job.out_dir for job in jobs}
    chosen = set()
    for name in names:
        path = Path(name)
        candidates = [path, frame_root / path] if not path.is_absolute() else [path]
        match = next((by_folder[Path(os.path.abspath(c))] for c in candidates if Path(os.path.abspath(c)) in by_folder),
                     None)
        if match is None:
            raise ExtractError(f"--redo {name}: no video found for this frame folder (expected <Class>/<video> under "
                               f"--frame-root {frame_root}, with the video under --video-root or in --list)")
        chosen.add(match)
    return chosen


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--flow" in argv:  # the flow's old place: hand over to its own script
        from process_data.src import extract_flow

        print("extract_frame.py --flow: optical flow is now process_data/src/extract_flow.py (the same flags, "
              "without --flow); running it", file=sys.stderr, flush=True)
        return extract_flow.main([a for a in argv if a != "--flow"])
    args = get_args_parser().parse_args(argv)
    try:
        check_args(args)
        extensions = {e.strip().lstrip(".").lower() for e in args.extensions.split(",") if e.strip()}
        if args.list_file is not None:
            videos = read_video_list(args.list_file, args.video_root)
        else:
            videos = find_videos(args.video_root, extensions)
        if not videos:
            source = f"--list {args.list_file}" if args.list_file else \
                f"{args.video_root}/<Class>/*.{{{','.join(sorted(extensions))}}}"
            raise ExtractError(f"no videos found in {source}")
        jobs = make_jobs(videos, args.frame_root)
        redo = redo_folders(args.redo, args.frame_root, jobs)
    except ExtractError as e:
        print(f"extract_frame.py: error: {e}", file=sys.stderr)
        return 2

    if args.dry_run:
        return dry_run(args, len(jobs))
    size = tuple(args.size) if args.size else None
    reason = cannot_write(args.frame_root)
    if reason:
        print(f"extract_frame.py: error: --frame-root {args.frame_root} is not writable ({reason}): choose a folder "
              "you can write to, or fix its permissions", file=sys.stderr)
        return 2
    failures_path = args.frame_root / FAILURES_FILE
    # A final folder with frames in it is complete: it is only ever created by renaming a finished one.
    extracted = [count_frames(job.out_dir) > 0 and job.out_dir not in redo for job in jobs]
    todo = [job for job, is_extracted in zip(jobs, extracted) if not is_extracted]
    skipped = [job.video for job, is_extracted in zip(jobs, extracted) if is_extracted]
    payloads = [(job, args.short_side, size, args.quality) for job in todo]
    done, failed, frames = run_jobs(_extract_in_worker, payloads, skipped, failures_path, args.workers, "extract")
    print(f"extract_frame.py: {done} videos done, {len(skipped)} skipped (already extracted), {failed} failed; "
          f"{frames} frames written to {args.frame_root}")
    if failed:
        print(f"extract_frame.py: the failed videos and reasons are listed in {failures_path}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
