"""Write a checkpoint of a randomly initialised backbone, the "no pretraining" reference for retrieve.py.

    python paper_scripts/random_init.py --net r21d --base-width 16 --num-frames 8 --size 64 --resize 72 96 \
        --out output/demo_random/random_init.pth

The file has the layout of a train_ssl.py checkpoint (backbone under ``encoder.backbone.``, the data flags
in ``config``), so retrieve.py loads it strictly and samples clips exactly as for a pretrained one.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

if not __package__:  # run as a file: the repository root is not on the path yet
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset.clip_input import CLIP_INPUTS  # noqa: E402
from model.backbones import build_backbone  # noqa: E402

BACKBONE_PREFIX = "encoder.backbone."


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--net", default="r21d", help="backbone (--net of train_ssl.py)")
    parser.add_argument("--base-width", type=int, default=64, help="width of the first backbone stage")
    parser.add_argument("--num-frames", type=int, default=16, help="frames per clip, recorded for retrieve.py")
    parser.add_argument("--stride", type=int, default=4, help="temporal stride, recorded for retrieve.py")
    parser.add_argument("--size", type=int, default=112, help="crop side, recorded for retrieve.py")
    parser.add_argument("--resize", type=int, nargs=2, default=[128, 171], metavar=("H", "W"),
                        help="frame resize before cropping, recorded for retrieve.py")
    parser.add_argument("--clip-input", default="rgb", choices=CLIP_INPUTS,
                        help="the network's input (frames or their differences), recorded for retrieve.py and "
                             "finetune.py")
    parser.add_argument("--seed", type=int, default=0, help="seeds the initial weights")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    return parser


def main(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    backbone, _ = build_backbone(args.net, args.base_width)
    config = {"net": args.net, "base_width": args.base_width, "num_frames": args.num_frames, "stride": args.stride,
              "size": args.size, "resize": list(args.resize), "clip_input": args.clip_input, "seed": args.seed,
              "model": "random init"}
    state = {BACKBONE_PREFIX + k: v for k, v in backbone.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "config": config}, args.out)
    print(f"random {args.net} (base width {args.base_width}, seed {args.seed}) -> {args.out}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
