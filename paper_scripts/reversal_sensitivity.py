"""How much a backbone's features see the arrow of time: the change of a clip's pooled feature when the clip
is played backwards, relative to the spread of features across clips.

    python paper_scripts/reversal_sensitivity.py --ckpt output/miniature/dualvar/seed0/pretrain/checkpoint.pth \
        --dataset data/demo/csv --frame-root data/demo/frames --stride 4 --num-videos 100

sensitivity = mean_i ||f(x_i) - f(reverse(x_i))|| / mean_{i != j} ||f(x_i) - f(x_j)|| over --num-videos test
videos evenly spaced through the split (the middle one of each video's 10 evaluation clips). 0: the features ignore
the direction of motion, as a network must not when classes differ only in it (MoveRight / MoveLeft); about 1: a
reversed clip is as far from itself as another clip is. A clip of frame differences (--clip-input diff) is reversed
by playing its frames backwards before they are differenced. Prints one JSON object, and writes it to --out.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if not __package__:  # run as a file: the repository root is not on the path yet
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dataset.build import build_dataset  # noqa: E402
from dataset.flags import CLIP_FALLBACKS, add_data_args, defaults_from_checkpoint  # noqa: E402
from dataset.recipes import EVAL  # noqa: E402
from engine.launch import run_cli  # noqa: E402
from model.backbones import build_backbone  # noqa: E402
from model.weights import add_backbone_args, checkpoint_config, load_weights, read_source  # noqa: E402
from utils.atomic import write_text  # noqa: E402
from utils.config import inherit_flags  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="checkpoint whose backbone is measured")
    parser.add_argument("--num-videos", type=int, default=100,
                        help="test videos measured, evenly spaced through the test split (0: all of them)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON object to this file")
    add_backbone_args(parser)
    add_data_args(parser)
    defaults_from_checkpoint(parser, CLIP_FALLBACKS)
    return parser


def reversal_sensitivity(features: torch.Tensor, reversed_features: torch.Tensor) -> float:
    """(N, D) features of clips and of the same clips reversed -> the ratio of the module docstring."""
    change = (features - reversed_features).norm(dim=1).mean()
    distances = torch.cdist(features, features)  # (N, N), zero diagonal
    spread = distances.sum() / (len(features) * (len(features) - 1))
    return float(change / spread)


@torch.no_grad()
def main(args: argparse.Namespace) -> dict:
    ckpt = read_source(args)
    inherit_flags(args, checkpoint_config(ckpt), CLIP_FALLBACKS)
    backbone, _ = build_backbone(args.net, args.base_width)
    load_weights(backbone, args, ckpt)
    backbone.eval()
    dataset = build_dataset(args, "test", EVAL, modality="rgb")
    count = min(args.num_videos, len(dataset)) if args.num_videos > 0 else len(dataset)
    rows = np.unique(np.linspace(0, len(dataset) - 1, count).round().astype(int))  # every class, not the first
    middle = [dataset[int(i)]["clips"] for i in rows]  # each (10, 3, T, H, W), T + 1 frames for differences
    clips = torch.stack([torch.as_tensor(c[len(c) // 2]) for c in middle])  # (N, 3, T, H, W)

    def pooled(frames: torch.Tensor) -> torch.Tensor:  # the frames played backwards give the reversed differences
        return backbone(dataset.to_device({"clips": frames}, torch.device("cpu"))["clips"]).mean(dim=(2, 3, 4))

    forward, backward = pooled(clips), pooled(clips.flip(2))
    result = {"reversal_sensitivity": reversal_sensitivity(forward, backward), "num_videos": len(rows),
              "checkpoint": str(args.ckpt), "clip_input": args.clip_input, "stride": args.stride}
    print(json.dumps(result))
    if args.out is not None:
        write_text(args.out, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
