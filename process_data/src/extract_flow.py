"""Optical flow from extracted RGB frame folders, for IIC's u / v views (METHOD.md §6).

    python process_data/src/extract_flow.py --frame-root F [--flow-root O] [--flow-algorithm auto]

Reads the frame folders ``F/<Class>/<video>/image_00001.jpg, ...`` that extract_frame.py wrote (not the
videos): the flow then has exactly the RGB frames' size and one frame fewer, and needs no second
decode. It writes the two-stream release's layout ``O/{u,v}/<Class>/<video>/frame000001.jpg`` (O
defaults to the sibling ``tvl1_flow`` of F, where the datasets look for it): flow frame t (1-based file
t + 1) is the motion from RGB frame t to t + 1 on grayscale frames, a one-frame video gets one
zero-motion frame. Algorithm: TV-L1 (``cv2.optflow.DualTVL1OpticalFlow_create``, opencv-contrib) when
available, else Farnebäck; the choice is printed. Each component is clipped to [-B, B] pixels (B =
``--flow-bound``, 20) and mapped linearly to 0..255 (128 = no motion; u > 128 = moving right, v > 128 =
moving down). Resumable, through the job runner it shares with extract_frame.py (jobs.py): a video whose u
and v folders both hold the expected number of frames is skipped, anything else is redone, and both components
are written under temporary names and renamed when complete. Unreadable frames fail that video only, listed in
``O/flow_failures.txt``; the exit status is 1 when any video failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

if not __package__:  # run as a file: the repository root is not on the path yet
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from dataset.layout import (FLOW_COMPONENTS, FLOW_FOLDER, count_flow_frames, count_frames,  # noqa: E402
                            expected_flow_frames, flow_frame_name, frame_name)
from process_data.src.jobs import (OLD_SUFFIX, TMP_SUFFIX, ExtractError, Result, check_job_args,  # noqa: E402
                                   class_entries, dry_run, run_jobs)
from utils.malloc import keep_freed_memory_for_reuse  # noqa: E402

FLOW_FAILURES_FILE = "flow_failures.txt"
FLOW_ALGORITHMS = ("auto", "tvl1", "farneback")
# OpenCV's documented Farnebäck example settings: pyramid scale 0.5, 3 levels, window 15, 3 iterations,
# polynomial neighbourhood 5 with sigma 1.2
FARNEBACK_PARAMS = (0.5, 3, 15, 3, 5, 1.2, 0)


@dataclass(frozen=True)
class FlowJob:
    frame_dir: Path  # RGB frames in
    out_dirs: tuple[Path, ...]  # one folder per component (u, v) out


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Compute optical flow from the RGB frame folders F/<Class>/<video_stem>/ that extract_frame.py "
                    "wrote into O/{u,v}/<Class>/<video_stem>/frameNNNNNN.jpg (parallel, resumable; failures listed "
                    "in O/flow_failures.txt).")
    p.add_argument("--frame-root", type=Path, required=True,
                   help="the extracted RGB frames F/<Class>/<video_stem>/image_NNNNN.jpg")
    p.add_argument("--flow-root", type=Path, default=None,
                   help=f"flow output folder O, written as O/{{u,v}}/<Class>/<video_stem>/frame000001.jpg "
                        f"(default: {FLOW_FOLDER} next to --frame-root, where the datasets look for it)")
    p.add_argument("--flow-algorithm", default="auto", choices=FLOW_ALGORITHMS,
                   help="tvl1 = cv2.optflow.DualTVL1OpticalFlow (needs opencv-contrib, as the published flow); "
                        "farneback = cv2.calcOpticalFlowFarneback (plain OpenCV, much faster, coarser); "
                        "auto = tvl1 when available, else farneback")
    p.add_argument("--flow-bound", type=float, default=20.0,
                   help="each flow component is clipped to [-B, B] pixels and mapped linearly to 0..255 "
                        "(the two-stream release's quantisation, B = 20)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality 1-100 (default 90)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="parallel processes, one video each (default min(8, CPU count)); 1 runs inline")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved configuration and the number of frame folders found as JSON, then exit")
    return p


def check_args(args: argparse.Namespace) -> None:
    check_job_args(args)
    if not args.frame_root.is_dir():
        raise ExtractError(f"--frame-root {args.frame_root} is not a folder: optical flow needs the extracted RGB "
                           "frames (run process_data/src/extract_frame.py first)")
    if not args.flow_bound > 0:
        raise ExtractError(f"--flow-bound must be positive, got {args.flow_bound}")
    if args.flow_root is None:
        args.flow_root = args.frame_root.parent / FLOW_FOLDER
    args.flow_algorithm = resolve_flow_algorithm(args.flow_algorithm)


def tvl1_available() -> bool:
    return hasattr(cv2, "optflow") and hasattr(cv2.optflow, "DualTVL1OpticalFlow_create")


def resolve_flow_algorithm(name: str) -> str:
    if name == "auto":
        return "tvl1" if tvl1_available() else "farneback"
    if name == "tvl1" and not tvl1_available():
        raise ExtractError("--flow-algorithm tvl1 needs cv2.optflow, which only opencv-contrib provides: "
                           "pip install opencv-contrib-python-headless (in place of opencv-python-headless), "
                           "or use --flow-algorithm farneback")
    return name


def flow_function(algorithm: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """(previous, next) uint8 grayscale (H, W) -> float32 flow (H, W, 2): (u, v) displacement in pixels."""
    if algorithm == "tvl1":
        tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
        return lambda previous, following: tvl1.calc(previous, following, None)
    return lambda previous, following: cv2.calcOpticalFlowFarneback(previous, following, None, *FARNEBACK_PARAMS)


def quantise_flow(component: np.ndarray, bound: float) -> np.ndarray:
    """Displacements (H, W) clipped to [-bound, bound] and mapped linearly to uint8 0..255 (0 -> 128)."""
    scaled = (np.clip(component, -bound, bound) + bound) * (255.0 / (2 * bound))
    return np.rint(scaled).astype(np.uint8)


def _read_gray(path: Path, shape: tuple[int, int] | None) -> np.ndarray:
    try:
        blob = np.fromfile(path, np.uint8)
    except FileNotFoundError:
        raise ValueError(f"{path} is missing (the frames must be consecutive)") from None
    gray = cv2.imdecode(blob, cv2.IMREAD_GRAYSCALE) if blob.size else None
    if gray is None:
        raise ValueError(f"cannot decode {path}: empty, truncated or not a JPEG")
    if shape is not None and gray.shape != shape:
        raise ValueError(f"{path} is {gray.shape[1]}x{gray.shape[0]} but the earlier frames are {shape[1]}x{shape[0]}")
    return gray


def _write_flow(job: FlowJob, tmp_dirs: list[Path], num_frames: int, algorithm: str, bound: float,
                quality: int) -> int:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    compute = flow_function(algorithm)
    previous = _read_gray(job.frame_dir / frame_name(0), None)
    if num_frames == 1:  # no pair: one zero-motion frame, so that every video has flow to read
        flows = iter([np.zeros((*previous.shape, 2), np.float32)])
    else:
        def pairs() -> Iterator[np.ndarray]:
            nonlocal previous
            for t in range(1, num_frames):
                following = _read_gray(job.frame_dir / frame_name(t), previous.shape)
                yield compute(previous, following)  # (H, W, 2)
                previous = following
        flows = pairs()
    count = 0
    for flow in flows:
        for c, tmp_dir in enumerate(tmp_dirs):
            ok, encoded = cv2.imencode(".jpg", quantise_flow(flow[..., c], bound), params)
            if not ok:
                raise ValueError(f"JPEG encoding failed for flow frame {count}")
            (tmp_dir / flow_frame_name(count)).write_bytes(encoded.tobytes())
        count += 1
    return count


def _install(tmp_dir: Path, out_dir: Path) -> None:
    """Rename the finished ``tmp_dir`` to ``out_dir``, replacing an incomplete earlier result; a folder that
    holds anything but flow frames is left alone (OSError)."""
    if out_dir.is_dir():
        for entry in out_dir.iterdir():
            if entry.is_file() and entry.suffix == ".jpg" and entry.name.startswith("frame"):
                entry.unlink()
        out_dir.rmdir()
    os.replace(tmp_dir, out_dir)


def extract_flow_video(job: FlowJob, algorithm: str, bound: float, quality: int) -> Result:
    """Compute the flow of one frame folder into ``job.out_dirs``; never raises for a bad video."""
    num_frames = count_frames(job.frame_dir)
    if num_frames == 0:
        return Result(job.frame_dir, "failed", reason="no image_NNNNN.jpg frames in the folder")
    tmp_dirs = [d.with_name(d.name + TMP_SUFFIX) for d in job.out_dirs]
    try:
        for tmp_dir in tmp_dirs:
            shutil.rmtree(tmp_dir, ignore_errors=True)  # a stale folder from a killed run
            tmp_dir.mkdir(parents=True)
        count = _write_flow(job, tmp_dirs, num_frames, algorithm, bound, quality)
        for tmp_dir, out_dir in zip(tmp_dirs, job.out_dirs):
            try:
                _install(tmp_dir, out_dir)
            except OSError as e:
                raise OSError(f"cannot replace {out_dir}: {e} (remove the folder and re-run)") from None
    except Exception as e:  # any failure of this video: report it, keep going with the others
        for tmp_dir in tmp_dirs:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        reason = f"{type(e).__name__}: {e}".replace("\t", " ").replace("\n", " ")
        return Result(job.frame_dir, "failed", reason=reason)
    return Result(job.frame_dir, "done", frames=count)


def _flow_in_worker(payload) -> Result:
    return extract_flow_video(*payload)


def find_frame_dirs(frame_root: Path) -> list[Path]:
    """Video frame folders ``frame_root/<Class>/<video>``, sorted; temporary folders of a running or
    killed extraction are not videos."""
    return class_entries(frame_root, lambda v: v.is_dir() and not v.name.endswith((TMP_SUFFIX, OLD_SUFFIX)))


def flow_complete(job: FlowJob) -> bool:
    expected = expected_flow_frames(count_frames(job.frame_dir))
    return all(count_flow_frames(d) == expected for d in job.out_dirs)


def run(args: argparse.Namespace) -> int:
    """Every frame folder under --frame-root -> u and v flow folders under --flow-root; the exit status."""
    frame_dirs = [Path(os.path.abspath(d)) for d in find_frame_dirs(args.frame_root)]
    if not frame_dirs:
        raise ExtractError(f"no frame folders found in {args.frame_root}/<Class>/<video>/: extract the frames first")
    if args.dry_run:
        return dry_run(args, len(frame_dirs))
    jobs = [FlowJob(d, tuple(args.flow_root / c / d.parent.name / d.name for c in FLOW_COMPONENTS))
            for d in frame_dirs]
    print(f"extract_flow.py: optical flow with {args.flow_algorithm} "
          f"({'cv2.optflow.DualTVL1OpticalFlow' if args.flow_algorithm == 'tvl1' else 'cv2.calcOpticalFlowFarneback'})"
          f", bound {args.flow_bound:g} px, into {args.flow_root}", flush=True)
    args.flow_root.mkdir(parents=True, exist_ok=True)
    keep_freed_memory_for_reuse()  # for the inline run (--workers 1); pool workers do it themselves
    failures_path = args.flow_root / FLOW_FAILURES_FILE
    complete = [flow_complete(job) for job in jobs]
    payloads = [(job, args.flow_algorithm, args.flow_bound, args.quality)
                for job, is_complete in zip(jobs, complete) if not is_complete]
    skipped = [job.frame_dir for job, is_complete in zip(jobs, complete) if is_complete]
    done, failed, frames = run_jobs(_flow_in_worker, payloads, skipped, failures_path, args.workers, "flow")
    print(f"extract_flow.py: {done} videos done, {len(skipped)} skipped (flow complete), {failed} failed; "
          f"{frames} flow frames per component written to {args.flow_root}")
    if failed:
        print(f"extract_flow.py: the failed videos and reasons are listed in {failures_path}", file=sys.stderr)
    return 1 if failed else 0


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        check_args(args)
        return run(args)
    except ExtractError as e:
        print(f"extract_flow.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
