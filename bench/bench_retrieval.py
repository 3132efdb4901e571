"""Is retrieval feature extraction data-bound? Prints one JSON line.

Two passes over the same videos (10 clips each, 16 frames at stride 4, centre 112 crops), one process:
- ``extraction_s``: retrieve.py's path end to end — DataLoader with --workers decoding and cropping into
  uint8 clips, which ``dataset.to_device`` normalises, while the backbone runs (evaluation.inference.run_inference);
- ``inference_s``: the backbone alone on the same clips, decoded and normalised beforehand and held in memory.
``ratio``: the median over --repeats loops, each one inference pass then one extraction pass
(bench/timing.alternate), of extraction / inference within the loop, so that load from other processes
on a shared machine hits both alike; ``ratio_spread`` gives its min, max and interquartile range. Target
<= 1.2 on the CPU with the demo data. ``data_only_s`` is the time to produce every item in the main
process, without the model.

By default the model gets the cores the workers leave (``--threads``): with more threads than cores, how the
scheduler shares them moves from run to run and the ratio with it.

Frames come from the demo generator (make_demo_data.py + extract_frame.py + write_csv.py, run here
unless ``--data`` points at a folder holding ``frames/`` and ``csv/``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

if not __package__:  # run as a file: the repository root is not on the path yet
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dataset.layout import read_split_csv  # noqa: E402
from dataset.recipes import EVAL  # noqa: E402
from dataset.video_dataset import VideoFrameDataset  # noqa: E402
from evaluation.inference import run_inference  # noqa: E402
from model.backbones import build_backbone  # noqa: E402
from model.features import video_features  # noqa: E402
from utils.distributed import usable_cores  # noqa: E402

from bench.timing import alternate, ratio  # noqa: E402


def make_demo(work: Path, videos_per_class: int) -> Path:
    scripts = Path(__file__).resolve().parents[1] / "process_data" / "src"
    for cmd in (["make_demo_data.py", "--out", str(work), "--videos-per-class", str(videos_per_class)],
                ["extract_frame.py", "--video-root", str(work / "videos"), "--frame-root", str(work / "frames")],
                ["write_csv.py", "--dataset", "ucf101", "--frame-root", str(work / "frames"), "--split-dir",
                 str(work / "splits"), "--out-dir", str(work / "csv")]):
        subprocess.run([sys.executable, str(scripts / cmd[0]), *cmd[1:]], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None,
                        help="folder with frames/ and csv/ (default: generate the demo set in a temp folder)")
    parser.add_argument("--num-videos", type=int, default=8, help="videos of the train split to extract")
    parser.add_argument("--net", default="r21d", help="backbone")
    parser.add_argument("--base-width", type=int, default=32,
                        help="backbone width (64 = the published network; smaller makes the test harder)")
    parser.add_argument("--batch-size", type=int, default=2, help="videos per batch (each is 10 clips)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers of the end-to-end pass")
    parser.add_argument("--repeats", type=int, default=3,
                        help="loops of one pass of each kind; the ratio is the median of the per-loop ratios")
    parser.add_argument("--warmup", type=int, default=1, help="untimed loops first (first-touch memory, caches)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of the model (default 0: the cores left by --workers, at least 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or max(1, usable_cores() - args.workers))

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or make_demo(Path(tmp), videos_per_class=max(3, args.num_videos // 10 + 3))
        records = read_split_csv(data / "csv" / "train_split01.csv")[:args.num_videos]
        dataset = VideoFrameDataset(records, data / "frames", EVAL, stride=4, uint8=True)
        device = torch.device(args.device)
        torch.manual_seed(0)
        backbone = build_backbone(args.net, args.base_width)[0].to(device).eval()

        def features(clips):
            return video_features(backbone, clips, "pool", merge=False)

        def extract(batch):
            return features(dataset.to_device(batch, device)["clips"])

        batches = [dataset.to_device({"clips": torch.stack([dataset[i]["clips"] for i in range(
                   s, min(s + args.batch_size, len(dataset)))])}, device)["clips"]
                   for s in range(0, len(dataset), args.batch_size)]  # (B, 10, 3, T, H, W) float each, in memory
        tic = time.perf_counter()
        for i in range(len(dataset)):
            dataset[i]
        data_s = time.perf_counter() - tic

        @torch.no_grad()
        def inference_pass() -> None:
            for clips in batches:
                features(clips)

        def extraction_pass() -> None:
            run_inference(extract, dataset, batch_size=args.batch_size, workers=args.workers, device=device,
                          desc="extraction")

        with torch.no_grad():
            features(batches[0])  # warm-up: first-call kernel selection
        times = alternate({"inference": inference_pass, "extraction": extraction_pass}, repeats=args.repeats,
                          warmup=args.warmup, sync=torch.cuda.synchronize if device.type == "cuda" else None)
        extraction_over_inference = ratio(times, "extraction", "inference")
    print(json.dumps({
        "videos": len(dataset), "clips": 10 * len(dataset), "net": args.net, "base_width": args.base_width,
        "workers": args.workers, "batch_size": args.batch_size, "device": str(device),
        "torch_threads": torch.get_num_threads(), "data_only_s": round(data_s, 3),
        "extraction_s": [round(t, 3) for t in times["extraction"]],
        "inference_s": [round(t, 3) for t in times["inference"]],
        "ratio": extraction_over_inference["median"], "ratio_spread": extraction_over_inference,
        "target_ratio": 1.2}))


if __name__ == "__main__":
    main()
