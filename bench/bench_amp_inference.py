"""Is bf16 autocast worth it for evaluation on this CPU? Prints one JSON line.

The backbone's forward pass on random clips (no data loading, no gradient), in fp32 and under bf16 autocast
in turn (bench/timing.alternate); ``bf16_speedup`` is the median over --repeats loops of fp32 time / bf16 time
within the loop, with its spread. ``--amp auto`` evaluates in bf16 on a CPU with AVX512-BF16 or AMX for this
speed-up (docs/gpu.md); where bf16 is emulated (AVX2) the speed-up is below 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch

if not __package__:  # run as a file: the repository root is not on the path yet
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.backbones import build_backbone  # noqa: E402
from utils.precision import cpu_has_fast_bf16  # noqa: E402

from bench.timing import alternate, ratio  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", default="r21d", help="backbone")
    parser.add_argument("--base-width", type=int, default=64, help="64 = the published network")
    parser.add_argument("--batch-size", type=int, default=4, help="clips per forward pass")
    parser.add_argument("--num-frames", type=int, default=16, help="frames per clip (T)")
    parser.add_argument("--size", type=int, default=112, help="crop size (H = W)")
    parser.add_argument("--repeats", type=int, default=5, help="timed loops (one fp32 and one bf16 pass each)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed loops first (kernel selection, caches)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone = build_backbone(args.net, args.base_width)[0].eval()
    clips = torch.randn(args.batch_size, 3, args.num_frames, args.size, args.size)

    def forward(precision: contextlib.AbstractContextManager):
        def run() -> None:
            with torch.inference_mode(), precision:
                backbone(clips)
        return run

    times = alternate({"fp32": forward(contextlib.nullcontext()),
                       "bf16": forward(torch.autocast("cpu", dtype=torch.bfloat16))},
                      repeats=args.repeats, warmup=args.warmup)
    speedup = ratio(times, "fp32", "bf16")
    print(json.dumps({
        "net": args.net, "base_width": args.base_width, "clip": f"{args.num_frames}x{args.size}x{args.size}",
        "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(),
        "cpu_has_fast_bf16": cpu_has_fast_bf16(),
        "fp32_clips_per_s": [round(args.batch_size / t, 3) for t in times["fp32"]],
        "bf16_clips_per_s": [round(args.batch_size / t, 3) for t in times["bf16"]],
        "bf16_speedup": speedup["median"], "bf16_speedup_spread": speedup}))


if __name__ == "__main__":
    main()
