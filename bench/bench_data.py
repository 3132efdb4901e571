"""Data-pipeline throughput of the DualVar pretraining sample; prints one JSON line.

The sample: 3 views (A, B, A'), 16 frames at stride 4, full augmentation, 112x112, one process,
no DataLoader workers. Three figures on the same frames and the same sampled indices:
- ``samples_per_s``: VideoFrameDataset(..., "dualvar")[i];
- ``decode_only_samples_per_s``: only reading and decoding the distinct frames of A and B with the
  fastest available decoder, the physical limit of the pipeline;
- ``pil_samples_per_s``: a straightforward per-frame PIL pipeline (PIL open, PIL resize and crop,
  per-frame jitter and blur, to tensor, normalise; A's images reused for A').
Targets: samples_per_s >= 0.5 x decode-only and >= 5 x PIL. The machine may be shared: run it a few
times (or pinned with ``taskset -c N``) and read the spread.

Frames come from the demo generator (make_demo_data.py + extract_frame.py, run here unless
``--frames-dir`` points at existing frame folders).

``--video`` measures the video source instead (issue 13 §2), on K400-like clips made here: 10 s at 30 fps,
H.264 with the encoder's default keyframe interval, textured content panning under moving shapes, at short
side 150 and 256 (``--video-sizes``). For each size the same sample is timed from
- ``video``: the files as written;
- ``video_reencoded``: the copies of process_data/src/reencode_videos.py (its defaults: a keyframe every 16
  frames, no reference B-frames);
- ``video_intra``: copies with every frame a keyframe (``reencode_videos.py --keyint 1``, about 6x the size);
- ``frames``: the same content extracted to JPEG frame folders at native size;
and ``<source>_decode_only``: only reading the union of A's and B's frames. The variants are timed in turns
(A, B, C, ..., A, B, C, ...; ``--rounds`` rounds of ``--per-round`` samples each), so that a shared machine's
load changes hit every variant alike; each figure is the median over rounds, with the min and max. One
process, one thread: the figures are per core.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import warnings
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision.transforms.functional as TVF
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dataset import sampling  # noqa: E402
from dataset import video_dataset as vd  # noqa: E402
from dataset.layout import VideoRecord, count_frames, frame_name  # noqa: E402
from dataset.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

CLIP_LEN, STRIDE, SIZE, RESIZE = 16, 4, 112, (128, 171)


def make_demo_frames(work: Path, videos_per_class: int) -> Path:
    scripts = Path(__file__).resolve().parents[1] / "process_data" / "src"
    subprocess.run([sys.executable, str(scripts / "make_demo_data.py"), "--out", str(work),
                    "--videos-per-class", str(videos_per_class)], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, str(scripts / "extract_frame.py"), "--video-root", str(work / "videos"),
                    "--frame-root", str(work / "frames")], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return work / "frames"


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


def timed(run_one, items) -> float:
    """Samples per second of ``run_one`` over ``items`` after a short warm-up."""
    for item in items[:3]:
        run_one(*item)
    start = time.perf_counter()
    for item in items:
        run_one(*item)
    return len(items) / (time.perf_counter() - start)


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

def alternate_timings(variants: dict, rounds: int, per_round: int) -> dict[str, dict]:
    """Samples per second of each ``variants[name](k)`` (k = sample number), timed in turns: each round runs
    ``per_round`` samples of every variant, one variant after another. Per variant, the median, min and max
    over rounds of samples per CPU-second of this process ("per_core": what one busy core does, which the other
    jobs of a shared machine disturb far less than the wall clock) and of samples per wall-clock second."""
    rates: dict[str, dict[str, list[float]]] = {name: {"per_core": [], "wall": []} for name in variants}
    for name, run_one in variants.items():  # warm-up: imports, first opens, allocator
        run_one(0)
    for r in range(rounds):
        for name, run_one in variants.items():
            cpu, wall = time.process_time(), time.perf_counter()
            for k in range(r * per_round, (r + 1) * per_round):
                run_one(k)
            rates[name]["per_core"].append(per_round / (time.process_time() - cpu))
            rates[name]["wall"].append(per_round / (time.perf_counter() - wall))
    return {name: {clock: {"median": round(float(np.median(v)), 2), "min": round(min(v), 2),
                           "max": round(max(v), 2)} for clock, v in by_clock.items()}
            for name, by_clock in rates.items()}


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
    sys.path.insert(0, str(scripts))
    import extract_frame
    import reencode_videos
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
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        for root, keyint in ((reencoded, "16"), (intra, "1")):
            reencode_videos.main(["--video-root", str(written), "--out-root", str(root), "--short-side", "0",
                                  "--keyint", keyint, "--workers", "1"])
        extract_frame.main(["--video-root", str(written), "--frame-root", str(frames), "--short-side", "0",
                            "--workers", "1"])
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
                dataset = vd.VideoFrameDataset(records, frame_root, "dualvar", seed=args.seed, num_frames=CLIP_LEN,
                                               stride=STRIDE, size=SIZE, resize=RESIZE, video_root=root)

                def sample(k, dataset=dataset):
                    dataset.set_epoch(k // len(dataset))
                    return dataset[k % len(dataset)]

                def decode_only(k, dataset=dataset):
                    record = dataset.records[k % len(dataset)]
                    idx_a, idx_b = sample_indices(record, k // len(dataset), k % len(dataset), args.seed)
                    return dataset.frames(record, np.concatenate([idx_a, idx_b]))
                variants[source] = sample
                variants[f"{source}_decode_only"] = decode_only
            results[str(short_side)] = alternate_timings(variants, args.rounds, args.per_round)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames-dir", type=Path, default=None,
                        help="existing frame root (<Class>/<video>/image_*.jpg); default: generate demo frames")
    parser.add_argument("--videos-per-class", type=int, default=4, help="demo videos per class to generate")
    parser.add_argument("--samples", type=int, default=150, help="samples timed per pipeline")
    parser.add_argument("--pil-samples", type=int, default=30, help="samples timed for the slow PIL pipeline")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1 = what each DataLoader worker gets; OpenCV always uses 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--video", action="store_true",
                        help="measure the video source (as written, re-encoded) against frame folders instead")
    parser.add_argument("--video-sizes", type=int, nargs="+", default=[150, 256], help="--video: short sides")
    parser.add_argument("--videos", type=int, default=3, help="--video: clips made per size")
    parser.add_argument("--rounds", type=int, default=5, help="--video: rounds of alternating timings")
    parser.add_argument("--per-round", type=int, default=4, help="--video: samples per variant and round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="The image decoding", category=DeprecationWarning)
    if args.video:
        print(json.dumps({"bench": "data_dualvar_sample_video_source", "views": 3, "clip_len": CLIP_LEN,
                          "stride": STRIDE, "size": SIZE, "resize": list(RESIZE), "clip": "300 frames at 30 fps",
                          "videos_per_size": args.videos, "torch_threads": args.threads,
                          "cv2_threads": cv2.getNumThreads(), "rounds": args.rounds, "per_round": args.per_round,
                          "samples_per_s_by_short_side": bench_video(args)}))
        return

    with tempfile.TemporaryDirectory() as tmp:
        frame_root = args.frames_dir or make_demo_frames(Path(tmp) / "demo", args.videos_per_class)
        records = scan_records(frame_root)
        dataset = vd.VideoFrameDataset(records, frame_root, "dualvar", seed=args.seed, num_frames=CLIP_LEN,
                                       stride=STRIDE, size=SIZE, resize=RESIZE)
        # item k of the run: (epoch, index) walks through the videos, epoch after epoch
        keys = [(k // len(records), k % len(records)) for k in range(args.samples)]

        def dataset_sample(epoch, index):
            dataset.set_epoch(epoch)
            return dataset[index]
        samples_per_s = timed(dataset_sample, keys)

        decode_rates = {}
        for decoder in vd.DECODERS:
            def decode_sample(epoch, index, decoder=decoder):
                record = records[index]
                idx_a, idx_b = sample_indices(record, epoch, index, args.seed)
                return vd.read_frames(record.path(frame_root), np.concatenate([idx_a, idx_b]), decoder)
            try:
                decode_rates[decoder] = timed(decode_sample, keys)
            except ImportError:
                continue
        fastest = max(decode_rates, key=decode_rates.get)

        def pil_run(epoch, index):
            record = records[index]
            return pil_sample(frame_root, record, *sample_indices(record, epoch, index, args.seed), seed=index)
        pil_samples_per_s = timed(pil_run, keys[:args.pil_samples])
        frame_hw = tuple(vd.read_frames(records[0].path(frame_root), np.zeros(1, np.int64)).shape[-2:])

    print(json.dumps({
        "bench": "data_dualvar_sample", "views": 3, "clip_len": CLIP_LEN, "stride": STRIDE, "size": SIZE,
        "frame_hw": list(frame_hw), "videos": len(records), "torch_threads": args.threads,
        "cv2_threads": cv2.getNumThreads(),
        "decoder": vd.DEFAULT_DECODER, "samples_per_s": round(samples_per_s, 2),
        "decode_only_samples_per_s": round(decode_rates[fastest], 2), "decode_only_decoder": fastest,
        "ratio_to_decode_only": round(samples_per_s / decode_rates[fastest], 3),
        "pil_samples_per_s": round(pil_samples_per_s, 2),
        "speedup_over_pil": round(samples_per_s / pil_samples_per_s, 2),
        "decode_only_samples_per_s_by_decoder": {k: round(v, 2) for k, v in decode_rates.items()},
    }))


if __name__ == "__main__":
    main()
