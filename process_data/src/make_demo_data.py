"""Generate the built-in synthetic demo data set: real video files in the UCF101 layout.

    python process_data/src/make_demo_data.py --out DIR [--classes ...] [--videos-per-class N] [--seed S]

writes ``DIR/videos/<Class>/v_<Class>_gGG_cCC.avi`` and UCF101-format split files (CRLF line endings)
``DIR/splits/{classInd.txt,trainlist01.txt,testlist01.txt}``, and the arrow-of-time pairs of classes in
``DIR/splits/arrow_of_time_pairs.txt``. As in UCF101, videos come in 25 groups
and the first 7 groups are the test split (28 %).

The statistics follow METHOD.md section 1.4 (version 2), because a self-supervised method learns what
the data rewards:
- appearance is a class-correlated distribution: each class has a preferred scene family (sky, grass,
  tiles, stripes, blobs) and object shape, drawn with probability 0.5, otherwise any of them; every
  video then varies its own lighting, colour cast, texture scale and orientation, camera shake and
  sensor noise. Scenes and shapes are shared between classes, so appearance helps but never decides;
- motion is continuous per video: direction angle, speed, spin, scale rate, swing period, hop height;
- three pairs (MoveRight/MoveLeft, Grow/Shrink, RotateClockwise/RotateAnticlockwise) differ only in
  the arrow of time: the second class of a pair is rendered exactly like the first, then played
  backwards, so both have identical appearance distributions;
- videos are 128 frames long, so that DualVar's two clips (8 frames at stride 4 in the miniature)
  are usually disjoint in time (tests/test_demo_data.py measures it: their spans meet in 39 % of pairs, and they share a
  frame in 12 %).
Every video is a pure function of (seed, class name, group, clip).
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

import cv2
import numpy as np

SCENES = ("sky", "grass", "tiles", "stripes", "blobs")
SHAPES = ("circle", "square", "triangle", "star", "bar")
# Probability that a video takes its class's preferred scene (resp. shape); otherwise one of all five.
PREFERRED_PROBABILITY = 0.5


@dataclass(frozen=True)
class DemoClass:
    motion: str  # "move" | "scale" | "rotate" | "bounce" | "orbit" | "swing" | "jump"
    scene: str  # preferred scene family
    shape: str  # preferred object shape
    reverse: bool = False  # play the rendered frames backwards


CLASSES = {
    "MoveRight": DemoClass("move", "grass", "triangle"),
    "MoveLeft": DemoClass("move", "grass", "triangle", reverse=True),
    "Grow": DemoClass("scale", "sky", "circle"),
    "Shrink": DemoClass("scale", "sky", "circle", reverse=True),
    "RotateClockwise": DemoClass("rotate", "tiles", "square"),
    "RotateAnticlockwise": DemoClass("rotate", "tiles", "square", reverse=True),
    "Bounce": DemoClass("bounce", "stripes", "star"),
    "Orbit": DemoClass("orbit", "blobs", "bar"),
    "Swing": DemoClass("swing", "sky", "triangle"),
    "Jump": DemoClass("jump", "grass", "square"),
}
# UCF101: 25 groups of 4-7 clips, groups 1-7 are the test split of split 1.
NUM_GROUPS = 25
TEST_GROUPS = range(1, 8)
FOURCC = {"avi": "MJPG", "mp4": "mp4v"}
# the arrow-of-time pairs, one "Forward Backward" line each, beside the split files
PAIRS_FILE = "arrow_of_time_pairs.txt"
# OpenCV hue (0..180) around which each scene family's colours lie; blobs take any hue.
SCENE_HUES = {"sky": 105, "grass": 55, "tiles": 15, "stripes": 150, "blobs": None}


def draw_appearance(class_name: str, rng: np.random.Generator) -> tuple[str, str]:
    """(scene family, object shape) of one video: the class's preference with probability 0.5, else uniform."""
    spec = CLASSES[class_name]
    scene = spec.scene if rng.random() < PREFERRED_PROBABILITY else SCENES[rng.integers(len(SCENES))]
    shape = spec.shape if rng.random() < PREFERRED_PROBABILITY else SHAPES[rng.integers(len(SHAPES))]
    return scene, shape


def _hsv_colour(hue: float, rng: np.random.Generator, saturation=(0.35, 0.9), value=(0.45, 0.95)) -> np.ndarray:
    """One BGR colour (3,) float32 in 0..255 near ``hue`` (OpenCV's 0..180 scale)."""
    hsv = np.array([[[hue % 180, 255 * rng.uniform(*saturation), 255 * rng.uniform(*value)]]], np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


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
    elif shape == "star":
        angles = np.deg2rad(np.arange(10) * 36 - 90)
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        pts = np.stack([c + radii * np.cos(angles), c + radii * np.sin(angles)], 1).round().astype(np.int32)
        cv2.fillPoly(mask, [pts], 255, cv2.LINE_AA)
    elif shape == "bar":
        cv2.ellipse(mask, (c, c), (r, max(1, int(r * 0.4))), 0, 0, 360, 255, -1, cv2.LINE_AA)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask.astype(np.float32) / 255.0


def _sprite(shape: str, side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A striped object: (side, side, 3) float32 colours and its (side, side, 1) mask. The stripes make
    rotation visible even for a circle."""
    hue = rng.uniform(0, 180)
    colours = np.stack([_hsv_colour(hue, rng), _hsv_colour(hue + rng.uniform(40, 140), rng)])
    period = rng.uniform(0.2, 0.45) * side
    theta = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    stripes = (np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period) > 0)[..., None]
    sprite = np.where(stripes, colours[0], colours[1])  # (side, side, 3)
    return sprite, _shape_mask(shape, side)[..., None]


def _smooth_field(height: int, width: int, cells: tuple[int, int], rng: np.random.Generator,
                  channels: int = 1) -> np.ndarray:
    """(H, W, channels) float32 smooth random field in about [-1, 1]: coarse uniform noise, cubic upsampling."""
    coarse = rng.uniform(-1, 1, (*cells, channels)).astype(np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return field.reshape(height, width, channels)


def _background(scene: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float32 BGR scene of family ``scene`` with per-video colours, scale and orientation."""
    hue = SCENE_HUES[scene]
    hue = rng.uniform(0, 180) if hue is None else hue + rng.uniform(-12, 12)
    base, other = _hsv_colour(hue, rng), _hsv_colour(hue + rng.uniform(-20, 20), rng)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if scene == "sky":  # a vertical gradient with soft clouds
        ramp = (yy / height)[..., None]
        image = base * (1 - ramp) + other * ramp
        clouds = np.clip(_smooth_field(height, width, (3, 5), rng), 0, None)
        image = image + clouds * rng.uniform(40, 90)
    elif scene == "grass":  # fine, strong texture
        cells = (max(2, height // rng.integers(2, 4)), max(2, width // rng.integers(2, 4)))
        image = base + _smooth_field(height, width, cells, rng) * rng.uniform(25, 45)
    elif scene == "tiles":  # a grid of two colours
        period = rng.uniform(6, 14)
        checker = ((np.floor(xx / period) + np.floor(yy / period)) % 2)[..., None]
        image = base * checker + other * (1 - checker)
    elif scene == "stripes":  # oriented stripes
        period, theta = rng.uniform(5, 12), rng.uniform(0, np.pi)
        wave = (0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period))[..., None]
        image = base * wave + other * (1 - wave)
    elif scene == "blobs":  # large smooth colour regions
        image = base + _smooth_field(height, width, (2, 3), rng, channels=3) * rng.uniform(50, 90)
    else:
        raise ValueError(f"unknown scene {scene!r}")
    return image.astype(np.float32)


def _trajectory(motion: str, frames: int, height: int, width: int, radius: float,
                rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Per-frame centre x, centre y, scale and angle (degrees, counter-clockwise on screen), each (F,).

    Every motion parameter is continuous and drawn per video; the object never leaves the frame."""
    t = np.arange(frames, dtype=np.float64)
    lo_x, hi_x, lo_y, hi_y = radius, width - radius, radius, height - radius
    spin = rng.uniform(-0.6, 0.6)  # degrees per frame of nuisance rotation, either way
    angle = rng.uniform(0, 360) + spin * t
    scale = np.full(frames, rng.uniform(0.75, 1.0))
    cx = np.full(frames, rng.uniform(lo_x, hi_x))
    cy = np.full(frames, rng.uniform(lo_y, hi_y))
    if motion in ("move", "bounce"):
        # move: one direction within 30 degrees of rightwards, stopping at the wall; bounce: any direction
        direction = rng.uniform(-np.pi / 6, np.pi / 6) if motion == "move" else rng.uniform(0, 2 * np.pi)
        speed = rng.uniform(0.15, 0.35) if motion == "move" else rng.uniform(0.3, 0.7)  # pixels per frame
        vx, vy = speed * np.cos(direction), speed * np.sin(direction)
        if motion == "move":  # start where the whole path fits
            travel_x = min(vx * (frames - 1), hi_x - lo_x)
            cx = np.clip(rng.uniform(lo_x, max(lo_x, hi_x - travel_x)) + vx * t, lo_x, hi_x)
            cy = np.clip(cy[0] + vy * t, lo_y, hi_y)
        else:
            x, y = cx[0], cy[0]
            for i in range(frames):
                cx[i], cy[i] = x, y
                x, y = x + vx, y + vy
                if not lo_x <= x <= hi_x:
                    vx, x = -vx, float(np.clip(x, lo_x, hi_x))
                if not lo_y <= y <= hi_y:
                    vy, y = -vy, float(np.clip(y, lo_y, hi_y))
    elif motion == "scale":  # approaching: exponential growth at a per-video rate
        start, end = rng.uniform(0.3, 0.45), rng.uniform(0.85, 1.05)
        scale = start * (end / start) ** (t / max(frames - 1, 1))
        drift = rng.uniform(-0.08, 0.08, 2)
        cx, cy = np.clip(cx[0] + drift[0] * t, lo_x, hi_x), np.clip(cy[0] + drift[1] * t, lo_y, hi_y)
    elif motion == "rotate":  # clockwise on screen at a per-video rate
        angle = rng.uniform(0, 360) - rng.uniform(1.5, 4.0) * t
    elif motion == "orbit":  # a circle around a point near the centre, either way round
        orbit = rng.uniform(0.15, 0.3) * min(height, width)
        phase = rng.uniform(0, 2 * np.pi) + rng.choice([-1, 1]) * np.deg2rad(rng.uniform(2.0, 5.0)) * t
        cx = np.clip(width / 2 + rng.uniform(-3, 3) + orbit * np.cos(phase), lo_x, hi_x)
        cy = np.clip(height / 2 + rng.uniform(-3, 3) + orbit * np.sin(phase), lo_y, hi_y)
    elif motion == "swing":  # a pendulum hanging from above the frame
        length = rng.uniform(0.5, 0.8) * height
        amplitude, period = np.deg2rad(rng.uniform(25, 55)), rng.uniform(30, 60)
        phi = amplitude * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
        pivot_x = rng.uniform(0.35, 0.65) * width
        cx = np.clip(pivot_x + length * np.sin(phi), lo_x, hi_x)
        cy = np.clip(length * np.cos(phi) - 0.1 * height, lo_y, hi_y)
        angle = angle[0] + np.rad2deg(phi)
    elif motion == "jump":  # hops along the ground, sideways either way
        hop, period = rng.uniform(0.3, 0.5) * height, rng.uniform(20, 40)
        vx = rng.choice([-1, 1]) * rng.uniform(0.1, 0.3)
        ground = hi_y - rng.uniform(0, 2)
        cy = np.clip(ground - hop * np.abs(np.sin(np.pi * t / period + rng.uniform(0, np.pi))), lo_y, hi_y)
        x = cx[0] + vx * t
        span = hi_x - lo_x
        folded = np.mod(x - lo_x, 2 * span)  # turn round at the walls
        cx = lo_x + np.where(folded > span, 2 * span - folded, folded)
    else:
        raise ValueError(f"unknown motion {motion!r}")
    return cx, cy, scale, angle


def _camera_shake(frames: int, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """(F, 2) integer (dy, dx) camera offsets: a smoothed random walk of about ``amplitude`` pixels."""
    walk = np.cumsum(rng.normal(0, 1, (frames, 2)), axis=0)
    walk -= walk.mean(axis=0)
    walk *= amplitude / max(walk.std(), 1e-6)
    return np.round(walk).astype(np.int64)


def render_video(class_name: str, rng: np.random.Generator, frames: int, height: int, width: int) -> np.ndarray:
    """(F, H, W, 3) uint8 BGR frames of one video of ``class_name``."""
    spec = CLASSES[class_name]
    scene, shape = draw_appearance(class_name, rng)
    margin = 3  # camera shake moves a window over a slightly larger scene
    canvas_h, canvas_w = height + 2 * margin, width + 2 * margin
    background = _background(scene, canvas_h, canvas_w, rng)
    radius = rng.uniform(0.15, 0.22) * min(height, width)
    side = int(np.ceil(2 * radius)) + 2
    sprite, mask = _sprite(shape, side, rng)
    cx, cy, scale, angle = _trajectory(spec.motion, frames, height, width, radius, rng)
    shake = np.clip(_camera_shake(frames, rng.uniform(0, 1.2), rng), -margin, margin)
    gain = rng.uniform(0.7, 1.25) * rng.uniform(0.85, 1.15, 3).astype(np.float32)  # lighting and colour cast
    noise_sigma = rng.uniform(2, 7)
    video = np.empty((frames, height, width, 3), np.float32)
    for i in range(frames):
        affine = cv2.getRotationMatrix2D((side / 2, side / 2), float(angle[i]), float(scale[i]))
        affine[:, 2] += (cx[i] + margin - side / 2, cy[i] + margin - side / 2)
        obj = cv2.warpAffine(sprite, affine, (canvas_w, canvas_h), flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(mask, affine, (canvas_w, canvas_h), flags=cv2.INTER_LINEAR)[..., None]
        frame = background + (obj - background) * alpha
        dy, dx = margin + shake[i]
        video[i] = frame[dy:dy + height, dx:dx + width]
    video *= gain
    noise = rng.random(video.shape, dtype=np.float32)  # uniform with std noise_sigma: 3x cheaper than normal
    noise -= 0.5
    noise *= noise_sigma * np.sqrt(12.0)
    video += noise
    np.clip(video, 0, 255, out=video)
    video += 0.5  # round to nearest on the cast
    video = video.astype(np.uint8)
    return video[::-1].copy() if spec.reverse else video


def video_names(class_name: str, videos_per_class: int) -> list[tuple[int, int, str]]:
    """(group, clip, stem) of each video of a class in UCF101 naming ``v_<Class>_gGG_cCC``: the videos
    fill 25 groups evenly (fewer groups when there are fewer than 25 videos)."""
    clips_per_group = max(1, -(-videos_per_class // NUM_GROUPS))
    names = []
    for i in range(videos_per_class):
        group, clip = i // clips_per_group + 1, i % clips_per_group + 1
        names.append((group, clip, f"v_{class_name}_g{group:02d}_c{clip:02d}"))
    return names


def num_test_groups(videos_per_class: int) -> int:
    """Groups 1-7 of 25 are the test split; with fewer groups, the first 28 % of them (at least one)."""
    groups = video_names("x", videos_per_class)[-1][0]
    return max(1, min(len(TEST_GROUPS), round(groups * len(TEST_GROUPS) / NUM_GROUPS)))


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
    test_groups = num_test_groups(videos_per_class)
    for label, class_name in enumerate(classes, start=1):
        for group, clip, stem in video_names(class_name, videos_per_class):
            rel = f"{class_name}/{stem}.{fmt}"
            jobs.append((out / "videos" / rel, class_name, group, clip, seed, frames, height, width, fps, fmt))
            if group <= test_groups:
                test.append(rel)
            else:
                train.append(f"{rel} {label}")
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:  # fork can deadlock on cv2 threads
            pool.map(_make_one, jobs, chunksize=4)
    else:
        for job in jobs:
            _make_one(job)
    _write_lines(out / "splits" / "classInd.txt", [f"{i} {c}" for i, c in enumerate(classes, start=1)])
    _write_lines(out / "splits" / "trainlist01.txt", train)
    _write_lines(out / "splits" / "testlist01.txt", test)
    pairs = arrow_of_time_pairs(classes)
    if pairs:  # for the miniature's direction accuracy (paper_scripts/collect_results.py --direction-pairs)
        _write_lines(out / "splits" / PAIRS_FILE, [" ".join(pair) for pair in pairs])
    return [job[0] for job in jobs]


def arrow_of_time_pairs(classes: list[str]) -> list[tuple[str, str]]:
    """The (forward, backward) pairs among ``classes``: a class and its rendering played backwards."""
    forward = {(spec.motion, spec.scene, spec.shape): name for name, spec in CLASSES.items() if not spec.reverse}
    pairs = []
    for name in classes:
        spec = CLASSES[name]
        partner = forward.get((spec.motion, spec.scene, spec.shape))
        if spec.reverse and partner in classes:
            pairs.append((partner, name))
    return pairs


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Write the synthetic demo data set (videos + UCF101-format split files) to --out.")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder; gets videos/<Class>/*.avi and splits/{classInd,trainlist01,testlist01}.txt")
    p.add_argument("--classes", nargs="+", default=list(CLASSES), metavar="CLASS",
                   help=f"classes to generate, in label order (default: all of {', '.join(CLASSES)})")
    p.add_argument("--videos-per-class", type=int, default=150,
                   help="videos per class (default 150: 6 per group, 42 test and 108 train videos per class; at "
                        "least 3 so that train and test are non-empty); groups 1-7 of 25 form the test split")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same videos")
    p.add_argument("--size", type=int, nargs=2, default=[48, 64], metavar=("H", "W"),
                   help="frame height and width in pixels (default 48 64)")
    p.add_argument("--frames", type=int, default=128,
                   help="frames per video (default 128: two 8-frame clips at stride 4 are usually disjoint)")
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
        return f"--videos-per-class must be >= 3 (the first groups are the test split), got {args.videos_per_class}"
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
