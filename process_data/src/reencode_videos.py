"""Write seek-friendly H.264 copies of videos, for training straight from video files.

    python process_data/src/reencode_videos.py --video-root V --out-root O [--short-side 150] [--keyint 16]

Every video ``V/<rel>`` becomes ``O/<rel with .mp4>``: H.264 (libx264 through PyAV, yuv420p, ``--crf``), the
short side scaled to ``--short-side`` (150 as DualVar's Kinetics frames, 240 as its UCF101/HMDB51 frames; 0
keeps the size; dimensions rounded to even, as 4:2:0 needs), a keyframe every ``--keyint`` frames, B-frames
that no frame references (so that a reader skips those it does not need), no audio.
Every decoded frame is written once, in order, at the source's average rate, so frame i of the copy is frame i
of the source: a CSV written from the sources (write_csv.py --source video) reads the copies with --video-root O
(a row names ``<rel>.avi``, say: the reader takes ``<rel>.mp4`` when no ``.avi`` is there, dataset/layout.py's
``video_file``). Two sources that would share a copy (``a.avi`` and ``a.mp4``) are refused before any work.

Why: a video read by frame index is decoded from the keyframe before the first needed frame, and encoders
place keyframes every 250 frames or so by default, which for a 10 s clip is the whole clip. A dense keyframe
interval bounds the frames decoded per sample; see docs/video_source.md for the measured trade-off.

Resumable: a finished copy is skipped; a copy is written under a temporary name and renamed when complete.
Videos that cannot be read are listed in ``O/reencode_failures.txt`` (``path<TAB>reason``) while the others are
still written; the exit status is 1 when any failed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from fractions import Fraction
from pathlib import Path

if not __package__:  # run as a file: the repository root is not on the path yet
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dataset.layout import VIDEO_EXTENSIONS, is_video_file  # noqa: E402

FAILURES_FILE = "reencode_failures.txt"
DEFAULT_RATE = Fraction(25)  # for a container that states no frame rate


def output_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(H, W) with the short side ``short_side`` (0: unchanged), aspect kept, both even."""
    if short_side:
        scale = short_side / min(height, width)
        height, width = round(height * scale), round(width * scale)
    return max(2, height // 2 * 2), max(2, width // 2 * 2)


def reencode(source: Path, target: Path, short_side: int, keyint: int, crf: int) -> int:
    """Write the copy of ``source`` to ``target`` (atomically); returns its number of frames."""
    import av
    av.logging.set_level(av.logging.PANIC)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}.mp4")
    frames = 0
    try:
        with av.open(str(source)) as container, av.open(str(tmp), "w") as output:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate or DEFAULT_RATE
            encoder = None
            for frame in container.decode(stream):
                if encoder is None:
                    height, width = output_size(frame.height, frame.width, short_side)
                    # a full-range source (Motion-JPEG, as the demo's AVIs) stays full range: converted to
                    # limited range, the demo's copies came out 6 to 9 levels of 255 off, brighter
                    pix_fmt = "yuvj420p" if frame.format.name.startswith("yuvj") or frame.color_range == 2 \
                        else "yuv420p"
                    encoder = output.add_stream("libx264", rate=Fraction(rate).limit_denominator(100000))
                    encoder.height, encoder.width, encoder.pix_fmt = height, width, pix_fmt
                    encoder.codec_context.gop_size = keyint
                    # keyframes exactly every keyint frames: no scene-cut keyframes in between, none fewer
                    # b-pyramid off: no B-frame is a reference, so a reader skips the B-frames it does not need
                    # (FFmpeg's skip_frame NONREF, dataset/video_reader.py): 56 % of the frames instead of 39 %
                    encoder.options = {"crf": str(crf), "keyint_min": str(keyint), "sc_threshold": "0",
                                       "x264-params": "b-pyramid=none"}
                scaled = frame.reformat(width=encoder.width, height=encoder.height, format=encoder.pix_fmt,
                                        interpolation="AREA")
                # frames numbered in order at the output rate: frame i of the copy is the i-th decoded frame
                scaled.pts, scaled.time_base = frames, Fraction(1) / encoder.codec_context.framerate
                output.mux(encoder.encode(scaled))
                frames += 1
            if encoder is None:
                raise ValueError("no decodable frame")
            output.mux(encoder.encode())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return frames


def _job(job: tuple[Path, Path, int, int, int]) -> tuple[str, str]:
    source, target, short_side, keyint, crf = job
    try:
        reencode(source, target, short_side, keyint, crf)
        return str(source), ""
    except Exception as error:  # noqa: BLE001 - one bad video must not stop the others
        text = " ".join(str(error).split()) or type(error).__name__
        return str(source), f"{type(error).__name__}: {text}"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Write seek-friendly H.264 copies (short side, dense keyframes) of the "
                                            "videos under --video-root to --out-root, same relative paths, .mp4.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--video-root", type=Path, required=True,
                   help="folder of videos, searched recursively for ." + ", .".join(VIDEO_EXTENSIONS))
    p.add_argument("--out-root", type=Path, required=True, help="where the copies go (same relative paths, .mp4)")
    p.add_argument("--short-side", type=int, default=150,
                   help="short side of the copies in pixels (150: DualVar's Kinetics size, 240: its UCF101 and "
                        "HMDB51 size; 0 keeps the size)")
    p.add_argument("--keyint", type=int, default=16,
                   help="frames between keyframes: a sample decodes at most this many frames before a needed one")
    p.add_argument("--crf", type=int, default=20, help="libx264 constant rate factor (lower: better, larger)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="videos encoded in parallel (at most 8 by default)")
    p.add_argument("--dry-run", action="store_true", help="print the configuration and the video count as JSON")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if not args.video_root.is_dir():
        print(f"reencode_videos.py: error: --video-root {args.video_root} is not a folder", file=sys.stderr)
        return 2
    for flag in ("keyint", "workers"):
        if getattr(args, flag) < 1:
            print(f"reencode_videos.py: error: --{flag} must be at least 1", file=sys.stderr)
            return 2
    if args.short_side < 0 or not 0 <= args.crf <= 51:
        print("reencode_videos.py: error: --short-side must be >= 0 and --crf in 0..51", file=sys.stderr)
        return 2
    sources = sorted(p for p in args.video_root.rglob("*") if is_video_file(p.name) and p.is_file())
    targets = [args.out_root / p.relative_to(args.video_root).with_suffix(".mp4") for p in sources]
    by_target: dict[Path, list[Path]] = {}
    for source, target in zip(sources, targets):
        by_target.setdefault(target, []).append(source)
    clashes = {target: vs for target, vs in by_target.items() if len(vs) > 1}
    if clashes:
        target, vs = next(iter(clashes.items()))
        print(f"reencode_videos.py: error: {len(clashes)} copies would be written from several videos, e.g. {target} "
              f"from {', '.join(map(str, vs))}: keep one video per <folder>/<name> (rename or move the others)",
              file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps({**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                          "videos": len(sources)}, indent=2))
        return 0
    jobs = [(s, t, args.short_side, args.keyint, args.crf) for s, t in zip(sources, targets) if not t.is_file()]
    from tqdm import tqdm
    if args.workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:  # fork can deadlock on codec threads
            results = list(tqdm(pool.imap_unordered(_job, jobs), total=len(jobs), desc="re-encode"))
    else:
        results = [_job(job) for job in tqdm(jobs, desc="re-encode")]
    failures = sorted((source, reason) for source, reason in results if reason)
    failures_file = args.out_root / FAILURES_FILE
    if failures:
        args.out_root.mkdir(parents=True, exist_ok=True)
        failures_file.write_text("".join(f"{s}\t{r}\n" for s, r in failures))
    else:
        failures_file.unlink(missing_ok=True)
    print(f"reencode_videos.py: {len(jobs) - len(failures)} videos written, {len(sources) - len(jobs)} skipped "
          f"(already done), {len(failures)} failed" + (f" (listed in {failures_file})" if failures else "") +
          f"; copies under {args.out_root}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
