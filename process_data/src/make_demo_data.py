"""Generate the built-in synthetic demo data set: real video files in the UCF101 layout.

    python process_data/src/make_demo_data.py --out DIR [--classes ...] [--videos-per-class N] [--seed S]

writes ``DIR/videos/<Class>/v_<Class>_gGG_cCC.avi`` and UCF101-format split files (CRLF line endings)
``DIR/splits/{classInd.txt,trainlist01.txt,testlist01.txt}``; groups g01-g02 are the test split, as in
UCF101's group-wise split. Each video shows one textured object on a textured background.

Classes come in two kinds (METHOD.md section 1.4):
- temporal pairs (MoveRight/MoveLeft, MoveDown/MoveUp, Grow/Shrink, RotateClockwise/RotateAnticlockwise):
  the second class of a pair is rendered exactly like the first and then played backwards, so the two
  have the same appearance distribution and only the arrow of time separates them;
- appearance classes (BounceCircle/BounceTriangle): the same bouncing motion, different object shape.
Nuisance factors drawn per video: object shape (pairs), size, colours, stripe texture, position, speed,
background, sensor noise. Every video is a pure function of (seed, class name, group, clip).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402


@dataclass(frozen=True)
class DemoClass:
    motion: str  # "move_x" | "move_y" | "scale" | "rotate" | "bounce"
    reverse: bool = False  # play the rendered frames backwards
    shape: str | None = None  # fixed shape; None: drawn per video


CLASSES = {
    "MoveRight": DemoClass("move_x"),
    "MoveLeft": DemoClass("move_x", reverse=True),
    "MoveDown": DemoClass("move_y"),
    "MoveUp": DemoClass("move_y", reverse=True),
    "Grow": DemoClass("scale"),
    "Shrink": DemoClass("scale", reverse=True),
    "RotateClockwise": DemoClass("rotate"),
    "RotateAnticlockwise": DemoClass("rotate", reverse=True),
    "BounceCircle": DemoClass("bounce", shape="circle"),
    "BounceTriangle": DemoClass("bounce", shape="triangle"),
}
SHAPES = ("circle", "square", "triangle")
TEST_GROUPS = (1, 2)
FOURCC = {"avi": "MJPG", "mp4": "mp4v"}


def _shape_mask(shape: str, side: int) -> np.ndarray:
    """(side, side) float32 mask in [0, 1] of a shape filling the square."""
    mask = np.zeros((side, side), np.uint8)
    c, r = side // 2, side // 2 - 1
    if shape == "circle":
        cv2.circle(mask, (c, c), r, 255, -1, cv2.LINE_AA)
    elif shape == "square":
        s = int(r * 0.8)
        cv2.rectangle(mask, (c - s, c - s), (c + s, c + s), 255, -1)
    elif shape == "triangle":
        angles = np.deg2rad([-90, 30, 150])
        pts = np.stack([c + r * np.cos(angles), c + r * np.sin(angles)], 1).round().astype(np.int32)
        cv2.fillPoly(mask, [pts], 255, cv2.LINE_AA)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask.astype(np.float32) / 255.0


def _sprite(shape: str, side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A striped object: (side, side, 3) float32 colours and its (side, side, 1) mask. The stripes make
    rotation visible even for a circle."""
    colours = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    period = rng.uniform(0.15, 0.4) * side
    theta = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    stripes = (np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period) > 0)[..., None]
    sprite = np.where(stripes, colours[0], colours[1])  # (side, side, 3)
    return sprite, _shape_mask(shape, side)[..., None]


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float32: a random base colour with faint smooth colour variation and fine static texture."""
    coarse = rng.uniform(-127, 127, (rng.integers(2, 6), rng.integers(2, 6), 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    fine = rng.normal(0, rng.uniform(2, 6), (height, width, 3)).astype(np.float32)
    return np.clip(rng.uniform(60, 190, 3).astype(np.float32) + smooth * rng.uniform(0.0, 0.1) + fine, 0, 255)


def _trajectory(motion: str, frames: int, height: int, width: int, radius: float,
                rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Per-frame centre x, centre y, scale and angle (degrees, counter-clockwise on screen), each (F,)."""
    t = np.linspace(0.0, 1.0, frames)
    spin = rng.uniform(-1.0, 1.0) * rng.uniform(0, 3) * t * frames  # slow nuisance rotation, either way
    angle = rng.uniform(0, 360) + spin
    scale = np.full(frames, rng.uniform(0.8, 1.0))
    cx = np.full(frames, rng.uniform(radius, width - radius))
    cy = np.full(frames, rng.uniform(radius, height - radius))
    if motion == "move_x":
        travel = rng.uniform(0.4, 0.7) * width
        cx = rng.uniform(radius * 0.5, max(radius * 0.5, width - radius * 0.5 - travel)) + travel * t
    elif motion == "move_y":
        travel = rng.uniform(0.4, 0.7) * height
        cy = rng.uniform(radius * 0.5, max(radius * 0.5, height - radius * 0.5 - travel)) + travel * t
    elif motion == "scale":
        scale = rng.uniform(0.3, 0.5) + rng.uniform(0.5, 0.7) * t
    elif motion == "rotate":
        angle = rng.uniform(0, 360) - rng.uniform(3, 8) * t * frames  # negative: clockwise on screen
    elif motion == "bounce":
        speed = rng.uniform(0.01, 0.025) * max(height, width)  # pixels per frame
        direction = rng.uniform(0, 2 * np.pi)
        vx, vy = speed * np.cos(direction), speed * np.sin(direction)
        x, y = cx[0], cy[0]
        lo_x, hi_x, lo_y, hi_y = radius, width - radius, radius, height - radius
        for i in range(frames):
            cx[i], cy[i] = x, y
            x, y = x + vx, y + vy
            if not lo_x <= x <= hi_x:
                vx, x = -vx, float(np.clip(x, lo_x, hi_x))
            if not lo_y <= y <= hi_y:
                vy, y = -vy, float(np.clip(y, lo_y, hi_y))
    else:
        raise ValueError(f"unknown motion {motion!r}")
    return cx, cy, scale, angle


def render_video(class_name: str, rng: np.random.Generator, frames: int, height: int, width: int) -> np.ndarray:
    """(F, H, W, 3) uint8 BGR frames of one video of ``class_name``."""
    spec = CLASSES[class_name]
    background = _background(height, width, rng)
    shape = spec.shape or SHAPES[rng.integers(len(SHAPES))]
    radius = rng.uniform(0.2, 0.28) * min(height, width)
    side = int(np.ceil(2 * radius)) + 2
    sprite, mask = _sprite(shape, side, rng)
    cx, cy, scale, angle = _trajectory(spec.motion, frames, height, width, radius, rng)
    noise_sigma = rng.uniform(0, 6)
    obj = np.empty((frames, height, width, 3), np.float32)
    alpha = np.empty((frames, height, width, 1), np.float32)
    for i in range(frames):
        affine = cv2.getRotationMatrix2D((side / 2, side / 2), float(angle[i]), float(scale[i]))
        affine[:, 2] += (cx[i] - side / 2, cy[i] - side / 2)
        obj[i] = cv2.warpAffine(sprite, affine, (width, height), flags=cv2.INTER_LINEAR)
        alpha[i, ..., 0] = cv2.warpAffine(mask, affine, (width, height), flags=cv2.INTER_LINEAR)
    video = obj - background  # (F, H, W, 3); in-place ops from here: this is the generator's hot loop
    video *= alpha
    video += background
    noise = rng.random(video.shape, dtype=np.float32)  # uniform with std noise_sigma: 3x cheaper than normal
    noise -= 0.5
    noise *= noise_sigma * np.sqrt(12.0)
    video += noise
    np.clip(video, 0, 255, out=video)
    video += 0.5  # round to nearest on the cast
    video = video.astype(np.uint8)
    return video[::-1].copy() if spec.reverse else video


def video_names(class_name: str, videos_per_class: int) -> list[tuple[int, int, str]]:
    """(group, clip, stem) of each video of a class in UCF101 naming ``v_<Class>_gGG_cCC``."""
    clips_per_group = int(np.clip(videos_per_class // 6, 1, 4))
    names = []
    for i in range(videos_per_class):
        group, clip = i // clips_per_group + 1, i % clips_per_group + 1
        names.append((group, clip, f"v_{class_name}_g{group:02d}_c{clip:02d}"))
    return names


def _rng(seed: int, class_name: str, group: int, clip: int) -> np.random.Generator:
    # crc32, not hash(): str hashes change between processes.
    return np.random.default_rng([seed, zlib.crc32(class_name.encode()), group, clip])


def write_video(path: Path, video: np.ndarray, fps: float, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "mp4" and _write_h264(path, video, fps):
        return
    height, width = video.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC[fmt]), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} with codec {FOURCC[fmt]}: try --format avi")
    for frame in video:
        writer.write(frame)
    writer.release()


def _write_h264(path: Path, video: np.ndarray, fps: float) -> bool:
    """H.264 through PyAV; False when PyAV or its libx264 encoder is unavailable."""
    try:
        import av
        if "libx264" not in av.codecs_available:
            return False
    except ImportError:
        return False
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height = video.shape[2], video.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        container.mux(stream.encode())
    return True


def _write_lines(path: Path, lines: list[str]) -> None:
    # UCF101's split files use CRLF line endings; so do ours, so the parser meets the real format.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        f.write("".join(line + "\r\n" for line in lines))


def _make_one(job: tuple) -> None:
    path, class_name, group, clip, seed, frames, height, width, fps, fmt = job
    video = render_video(class_name, _rng(seed, class_name, group, clip), frames, height, width)
    write_video(path, video, fps, fmt)


def generate(out: Path, classes: list[str], videos_per_class: int, seed: int, size: tuple[int, int],
             frames: int, fmt: str = "avi", fps: float = 25.0, workers: int = 1) -> list[Path]:
    """Write the videos and split files; returns the video paths. Each video depends only on
    (seed, class, group, clip), so the worker count does not change the output."""
    height, width = size
    jobs, train, test = [], [], []
    for label, class_name in enumerate(classes, start=1):
        for group, clip, stem in video_names(class_name, videos_per_class):
            rel = f"{class_name}/{stem}.{fmt}"
            jobs.append((out / "videos" / rel, class_name, group, clip, seed, frames, height, width, fps, fmt))
            if group in TEST_GROUPS:
                test.append(rel)
            else:
                train.append(f"{rel} {label}")
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:  # fork can deadlock on cv2 threads
            pool.map(_make_one, jobs, chunksize=1)
    else:
        for job in jobs:
            _make_one(job)
    _write_lines(out / "splits" / "classInd.txt", [f"{i} {c}" for i, c in enumerate(classes, start=1)])
    _write_lines(out / "splits" / "trainlist01.txt", train)
    _write_lines(out / "splits" / "testlist01.txt", test)
    return [job[0] for job in jobs]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Write the synthetic demo data set (videos + UCF101-format split files) to --out.")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder; gets videos/<Class>/*.avi and splits/{classInd,trainlist01,testlist01}.txt")
    p.add_argument("--classes", nargs="+", default=list(CLASSES), metavar="CLASS",
                   help=f"classes to generate, in label order (default: all of {', '.join(CLASSES)})")
    p.add_argument("--videos-per-class", type=int, default=50,
                   help="videos per class (default 50; at least 3 so that train and test are non-empty); "
                        "groups g01-g02 form the test split")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same videos")
    p.add_argument("--size", type=int, nargs=2, default=[60, 80], metavar=("H", "W"),
                   help="frame height and width in pixels (default 60 80)")
    p.add_argument("--frames", type=int, default=32, help="frames per video (default 32)")
    p.add_argument("--fps", type=float, default=25.0, help="frame rate stored in the files (default 25)")
    p.add_argument("--format", choices=("avi", "mp4"), default="avi",
                   help="avi: Motion-JPEG via OpenCV (default); mp4: H.264 via PyAV (OpenCV mp4v otherwise)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="parallel processes (default min(8, CPU count)); the output does not depend on it")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration as JSON and exit")
    return p


def check_args(args: argparse.Namespace) -> str | None:
    """An error message for impossible flags, else None."""
    unknown = [c for c in args.classes if c not in CLASSES]
    if unknown:
        return f"--classes: unknown class(es) {', '.join(unknown)}; choose from {', '.join(CLASSES)}"
    if len(set(args.classes)) != len(args.classes):
        return "--classes: a class is listed twice"
    if args.videos_per_class < 3:
        return f"--videos-per-class must be >= 3 (groups g01-g02 are the test split), got {args.videos_per_class}"
    if min(args.size) < 16:
        return f"--size H W must be at least 16 16, got {args.size}"
    if args.format == "mp4" and any(s % 2 for s in args.size):
        return f"--format mp4 needs an even --size (H.264 with 4:2:0 colour), got {args.size}"
    if args.frames < 1 or args.fps <= 0 or args.workers < 1:
        return "--frames and --workers must be >= 1 and --fps > 0"
    return None


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    error = check_args(args)
    if error:
        print(f"make_demo_data.py: error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, indent=2))
        return 0
    paths = generate(args.out, args.classes, args.videos_per_class, args.seed, tuple(args.size),
                     args.frames, args.format, args.fps, args.workers)
    print(f"make_demo_data.py: wrote {len(paths)} videos ({len(args.classes)} classes) to {args.out / 'videos'} "
          f"and split files to {args.out / 'splits'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
