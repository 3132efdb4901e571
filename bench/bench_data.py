"""Data-pipeline throughput of the DualVar pretraining sample; prints one JSON line.

The sample: 3 views (A, B, A'), 16 frames at stride 4, full augmentation, 112x112, one process,
no DataLoader workers, uint8 clips as the training scripts' DataLoader workers ship them (``--float``: the float32
normalised clips instead). Three figures on the same frames and the same sampled indices:
- ``samples_per_s``: VideoFrameDataset(..., DUALVAR_SAMPLING, uint8=True)[i];
- ``decode_only_samples_per_s``: only reading and decoding the distinct frames of A and B with the
  fastest available decoder, the physical limit of the pipeline;
- ``pil_samples_per_s``: a straightforward per-frame PIL pipeline (PIL open, PIL resize and crop,
  per-frame jitter and blur, to tensor, normalise; A's images reused for A').
Targets: samples_per_s >= 0.5 x decode-only and >= 5 x PIL. The variants are timed in turns (sample,
decode-only per decoder, PIL, sample, ...; ``--rounds`` rounds of ``--per-round`` samples each, bench/timing.py)
and each figure is the median over rounds with its spread, in samples per CPU-second of this process ("per
core"; the wall-clock figures are in the JSON too); the ratio to decode-only is the median of the per-round
ratios, so that a shared machine's load changes hit both sides alike.

Frames: JPEG frame folders (quality 90, as extract_frame.py) of K400-like content made here at ``--frame-size``
(default 240x320, i.e. 320x240), unless ``--frames-dir`` points at existing frame folders.

``--video`` measures the video source instead (issue 13 §2), on K400-like clips made here: 10 s at 30 fps,
H.264 with the encoder's default keyframe interval, textured content panning under moving shapes, at short
side 150 and 256 (``--video-sizes``). For each size the same sample is timed from
- ``video``: the files as written;
- ``video_reencoded``: the copies of process_data/src/reencode_videos.py (its defaults: a keyframe every 16
  frames, no reference B-frames);
- ``video_intra``: copies with every frame a keyframe (``reencode_videos.py --keyint 1``, about 6x the size);
- ``frames``: the same content extracted to JPEG frame folders at native size;
and ``<source>_decode_only``: only reading the union of A's and B's frames, timed in turns as above. One
process, one thread: the figures are per core.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision.transforms.functional as TVF
from PIL import Image, ImageFilter

if not __package__:  # run as a file: the repository root is not on the path yet
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.timing import alternate_clocks, ratio, spread  # noqa: E402
from dataset import frame_reader, sampling, video_dataset as vd  # noqa: E402
from dataset.layout import VideoRecord, count_frames, frame_name  # noqa: E402
from dataset.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from model.dualvar import DUALVAR_SAMPLING  # noqa: E402

CLIP_LEN, STRIDE, SIZE, RESIZE = 16, 4, 112, (128, 171)


def scan_records(frame_root: Path) -> list[VideoRecord]:
    videos = sorted(p for p in frame_root.glob("*/*") if p.is_dir())
    records = [VideoRecord(str(p.relative_to(frame_root)), count_frames(p)) for p in videos]
    records = [r for r in records if r.num_frames > 0]
    if not records:
        raise SystemExit(f"no frame folders under {frame_root} (expected <Class>/<video>/image_00001.jpg)")
    return records


def sample_indices(record: VideoRecord, epoch: int, index: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The same A and B indices VideoFrameDataset draws for this item."""
    rng = np.random.default_rng([seed, epoch, index])
    return sampling.dualvar_clip_pair(record.num_frames, rng, CLIP_LEN, STRIDE)


# ---------------------------------------------------------------- the PIL reference pipeline

def pil_view(images: list[Image.Image], rng: np.random.Generator, full: bool) -> torch.Tensor:
    """Per-frame PIL: resize to 171x128, crop 112 (one box), jitter and blur frame by frame."""
    top, left = int(rng.integers(0, RESIZE[0] - SIZE + 1)), int(rng.integers(0, RESIZE[1] - SIZE + 1))
    jitter = full and rng.random() < 0.64
    factors = (rng.uniform(0.2, 1.8), rng.uniform(0.2, 1.8), rng.uniform(0.2, 1.8), rng.uniform(-0.2, 0.2))
    order = rng.permutation(4)
    sigma = rng.uniform(0.1, 2.0) if full and rng.random() < 0.5 else None
    ops = (TVF.adjust_brightness, TVF.adjust_contrast, TVF.adjust_saturation, TVF.adjust_hue)
    frames = []
    for image in images:
        image = image.resize((RESIZE[1], RESIZE[0]), Image.BILINEAR).crop((left, top, left + SIZE, top + SIZE))
        if jitter:
            for i in order:
                image = ops[i](image, factors[i])
        if sigma is not None:
            image = image.filter(ImageFilter.GaussianBlur(sigma))
        frames.append(TVF.normalize(TVF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD))
    return torch.stack(frames, dim=1)  # (3, T, H, W)


def pil_sample(frame_root: Path, record: VideoRecord, idx_a: np.ndarray, idx_b: np.ndarray, seed: int):
    video = record.path(frame_root)
    rng = np.random.default_rng(seed)

    def open_frames(indices):
        return [Image.open(video / frame_name(int(i))).convert("RGB") for i in indices]
    images_a = open_frames(idx_a)
    views = [pil_view(images_a, rng, full=rng.random() >= 0.2), pil_view(open_frames(idx_b), rng, True),
             pil_view(images_a, rng, True)]
    return torch.stack(views)


# ---------------------------------------------------------------- the video source (--video)

CLOCKS = {"per_core": time.process_time, "wall": time.perf_counter}


def alternate_rates(variants: dict, rounds: int, per_round: dict[str, int] | int) -> tuple[dict, dict]:
    """Time ``variants[name](k)`` (k = the sample number) in turns: each round runs ``per_round`` samples of every
    variant, one variant after another (bench/timing.alternate_clocks, one warm-up round). Returns (the seconds per
    round by clock and variant, the samples per second of each variant: median, min, max, IQR over rounds per
    clock: "per_core" is samples per CPU-second of this process, what one busy core does, which the other jobs of
    a shared machine disturb far less than the wall clock)."""
    counts = dict.fromkeys(variants, per_round) if isinstance(per_round, int) else per_round

    def rounds_of(name, run_one):
        numbers = itertools.count()
        return lambda: [run_one(next(numbers)) for _ in range(counts[name])]
    times = alternate_clocks({name: rounds_of(name, run) for name, run in variants.items()}, CLOCKS,
                             repeats=rounds, warmup=1)
    rates = {name: {clock: spread([counts[name] / t for t in times[clock][name]], 2) for clock in CLOCKS}
             for name in variants}
    return times, rates


def k400_like_frames(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """(count, H, W, 3) uint8: a smoothed-noise texture panning by a few pixels per frame with two moving
    shapes, neither as cheap to encode as flat colour nor as costly as pure noise."""
    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (2 * height, 2 * width, 3), dtype=np.uint8), (0, 0), 2.5)
    texture = cv2.normalize(texture, None, 30, 225, cv2.NORM_MINMAX)
    frames = np.empty((count, height, width, 3), np.uint8)
    for t in range(count):
        y, x = int(height / 2 * (1 + np.sin(t / 40))), int(width / 2 * (1 + np.cos(t / 55)))
        frame = frames[t]
        frame[...] = texture[y // 2:y // 2 + height, x // 2:x // 2 + width]
        cv2.circle(frame, ((3 * t) % width, height // 3), height // 6, (230, 60, 40), -1)
        cv2.rectangle(frame, (width - (2 * t) % width, height // 2), (width - (2 * t) % width + height // 5,
                      height // 2 + height // 5), (40, 200, 90), -1)
    return frames


def make_video_content(work: Path, short_side: int, videos: int) -> tuple[Path, Path, Path]:
    """(as-written video root, re-encoded root, all-intra root, frame root) of ``videos`` K400-like clips at
    ``short_side`` (16:9, 300 frames at 30 fps, libx264 defaults)."""
    import av
    scripts = Path(__file__).resolve().parents[1] / "process_data" / "src"
    written = work / f"videos_{short_side}"
    height, width = short_side, int(round(short_side * 16 / 9)) // 2 * 2
    for v in range(videos):
        path = written / "Class" / f"clip{v}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=30)
            stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
            for frame in k400_like_frames(300, height, width, seed=v):
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
    reencoded = work / f"reencoded_{short_side}"
    intra = work / f"intra_{short_side}"
    frames = work / f"frames_{short_side}"
    commands = [["reencode_videos.py", "--video-root", str(written), "--out-root", str(root), "--short-side", "0",
                 "--keyint", keyint, "--workers", "1"] for root, keyint in ((reencoded, "16"), (intra, "1"))]
    commands.append(["extract_frame.py", "--video-root", str(written), "--frame-root", str(frames), "--short-side", "0",
                     "--workers", "1"])
    for script, *flags in commands:
        subprocess.run([sys.executable, str(scripts / script), *flags], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return written, reencoded, intra, frames


def bench_video(args) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for short_side in args.video_sizes:
            written, reencoded, intra, frame_root = make_video_content(Path(tmp), short_side, args.videos)
            names = sorted(p.stem for p in (written / "Class").iterdir())
            variants = {}
            for source, root in (("video", written), ("video_reencoded", reencoded), ("video_intra", intra),
                                 ("frames", frame_root)):
                records = [VideoRecord(f"Class/{n}" + ("" if source == "frames" else ".mp4"), 300) for n in names]
                dataset = vd.VideoFrameDataset(records, frame_root, DUALVAR_SAMPLING, seed=args.seed,
                                               num_frames=CLIP_LEN, stride=STRIDE, size=SIZE, resize=RESIZE,
                                               video_root=root)

                def sample(k, dataset=dataset):
                    dataset.set_epoch(k // len(dataset))
                    return dataset[k % len(dataset)]

                def decode_only(k, dataset=dataset):
                    record = dataset.records[k % len(dataset)]
                    idx_a, idx_b = sample_indices(record, k // len(dataset), k % len(dataset), args.seed)
                    return dataset.frames(record, np.concatenate([idx_a, idx_b]))
                variants[source] = sample
                variants[f"{source}_decode_only"] = decode_only
            results[str(short_side)] = alternate_rates(variants, args.rounds, args.per_round)[1]
    return results


def make_frame_folders(root: Path, videos: int, frames: int, height: int, width: int) -> Path:
    """``videos`` folders of ``frames`` K400-like JPEG frames (quality 90, as extract_frame.py) under root/Class."""
    for v in range(videos):
        folder = root / "Class" / f"clip{v}"
        folder.mkdir(parents=True)
        for i, frame in enumerate(k400_like_frames(frames, height, width, seed=v)):
            cv2.imwrite(str(folder / frame_name(i)), frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    return root


def bench_frames(args, frame_root: Path) -> dict:
    records = scan_records(frame_root)
    dataset = vd.VideoFrameDataset(records, frame_root, DUALVAR_SAMPLING, seed=args.seed, num_frames=CLIP_LEN,
                                   stride=STRIDE, size=SIZE, resize=RESIZE, uint8=not args.float)

    def key(k):  # sample k of the run: (epoch, index) walks through the videos, epoch after epoch
        return k // len(records), k % len(records)

    def sample(k):
        epoch, index = key(k)
        dataset.set_epoch(epoch)
        return dataset[index]

    def decode_only(k, decoder):
        epoch, index = key(k)
        idx_a, idx_b = sample_indices(records[index], epoch, index, args.seed)
        return frame_reader.read_frames(records[index].path(frame_root), np.concatenate([idx_a, idx_b]), decoder)

    def pil_run(k):
        epoch, index = key(k)
        return pil_sample(frame_root, records[index], *sample_indices(records[index], epoch, index, args.seed),
                          seed=index)

    variants = {"sample": sample}
    for decoder in frame_reader.DECODERS:
        try:
            decode_only(0, decoder)
        except ImportError:
            continue
        variants[f"decode_only_{decoder}"] = partial(decode_only, decoder=decoder)
    per_round = {name: args.per_round for name in variants}
    if args.pil_per_round:
        variants["pil"], per_round["pil"] = pil_run, args.pil_per_round
    times, rates = alternate_rates(variants, args.rounds, per_round)
    decoders = [name for name in rates if name.startswith("decode_only_")]
    fastest = max(decoders, key=lambda name: rates[name]["per_core"]["median"])

    def per_sample_ratio(numerator: str, denominator: str) -> dict:
        """Median and spread over rounds of rate(numerator) / rate(denominator), on the per-core clock."""
        seconds = {name: [t / per_round[name] for t in times["per_core"][name]] for name in (numerator, denominator)}
        return ratio(seconds, denominator, numerator)

    frame_hw = tuple(frame_reader.read_frames(records[0].path(frame_root), np.zeros(1, np.int64)).shape[-2:])
    result = {
        "frame_hw": list(frame_hw), "videos": len(records), "clips": "uint8" if not args.float else "float32",
        "samples_per_s": rates["sample"]["per_core"],
        "decode_only_samples_per_s": rates[fastest]["per_core"], "decode_only_decoder": fastest[12:],
        "ratio_to_decode_only": per_sample_ratio("sample", fastest),
        "decode_only_samples_per_s_by_decoder": {name[12:]: rates[name]["per_core"]["median"] for name in decoders},
        "wall_samples_per_s": {name: rates[name]["wall"] for name in rates}}
    if "pil" in rates:
        result["pil_samples_per_s"] = rates["pil"]["per_core"]
        result["speedup_over_pil"] = per_sample_ratio("sample", "pil")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames-dir", type=Path, default=None,
                        help="existing frame root (<Class>/<video>/image_*.jpg); default: make K400-like frames")
    parser.add_argument("--frame-size", type=int, nargs=2, default=[240, 320], metavar=("H", "W"),
                        help="size of the frames made here (default 240 320)")
    parser.add_argument("--frame-videos", type=int, default=4, help="frame folders made here (300 frames each)")
    parser.add_argument("--float", action="store_true",
                        help="time float32 normalised clips instead of the uint8 clips the training scripts ship")
    parser.add_argument("--pil-per-round", type=int, default=1,
                        help="samples per round of the slow PIL pipeline (0: skip it)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1 = what each DataLoader worker gets; OpenCV always uses 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--video", action="store_true",
                        help="measure the video source (as written, re-encoded) against frame folders instead")
    parser.add_argument("--video-sizes", type=int, nargs="+", default=[150, 256], help="--video: short sides")
    parser.add_argument("--videos", type=int, default=3, help="--video: clips made per size")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of alternating timings (default 10; --video: 5)")
    parser.add_argument("--per-round", type=int, default=None,
                        help="samples per variant and round (default 8; --video: 4)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="The image decoding", category=DeprecationWarning)
    if args.video:
        args.rounds, args.per_round = args.rounds or 5, args.per_round or 4
        print(json.dumps({"bench": "data_dualvar_sample_video_source", "views": 3, "clip_len": CLIP_LEN,
                          "stride": STRIDE, "size": SIZE, "resize": list(RESIZE), "clip": "300 frames at 30 fps",
                          "videos_per_size": args.videos, "torch_threads": args.threads,
                          "cv2_threads": cv2.getNumThreads(), "rounds": args.rounds, "per_round": args.per_round,
                          "samples_per_s_by_short_side": bench_video(args)}))
        return
    args.rounds, args.per_round = args.rounds or 10, args.per_round or 8
    with tempfile.TemporaryDirectory() as tmp:
        frame_root = args.frames_dir or make_frame_folders(Path(tmp) / "frames", args.frame_videos, 300,
                                                           *args.frame_size)
        result = bench_frames(args, frame_root)
    print(json.dumps({"bench": "data_dualvar_sample", "views": 3, "clip_len": CLIP_LEN, "stride": STRIDE,
                      "size": SIZE, "resize": list(RESIZE), "torch_threads": args.threads,
                      "cv2_threads": cv2.getNumThreads(), "decoder": frame_reader.DEFAULT_DECODER,
                      "rounds": args.rounds, "per_round": args.per_round, **result}))


if __name__ == "__main__":
    main()
