"""How much a backbone's features see the arrow of time: the change of a clip's pooled feature when the clip
is played backwards, relative to the spread of features across clips.

    python paper_scripts/reversal_sensitivity.py --ckpt output/miniature/dualvar/seed0/pretrain/checkpoint.pth \
        --dataset data/demo/csv --frame-root data/demo/frames --stride 4 --num-videos 100

sensitivity = mean_i ||f(x_i) - f(reverse(x_i))|| / mean_{i != j} ||f(x_i) - f(x_j)|| over the 10 evaluation
clips of the first --num-videos test videos (one clip each, the middle one). 0: the features ignore the
direction of motion, as a network must not when classes differ only in it (MoveRight / MoveLeft); about 1: a
reversed clip is as far from itself as another clip is. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from dataset.video_dataset import add_data_args, build_dataset  # noqa: E402
from model.backbones import build_backbone  # noqa: E402
from model.classifier import (add_backbone_args, checkpoint_config, load_backbone, read_checkpoint,  # noqa: E402
                              resolve_backbone_args)
from utils.cli import run_cli  # noqa: E402
from utils.evaluation import inherit_flags  # noqa: E402

DATA_FALLBACKS = {"num_frames": 16, "size": 112, "resize": [128, 171]}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="checkpoint whose backbone is measured")
    parser.add_argument("--num-videos", type=int, default=100, help="test videos measured (the first ones)")
    add_backbone_args(parser)
    add_data_args(parser)
    parser.set_defaults(num_frames=None, size=None, resize=None)
    return parser


def reversal_sensitivity(features: torch.Tensor, reversed_features: torch.Tensor) -> float:
    """(N, D) features of clips and of the same clips reversed -> the ratio of the module docstring."""
    change = (features - reversed_features).norm(dim=1).mean()
    distances = torch.cdist(features, features)  # (N, N), zero diagonal
    spread = distances.sum() / (len(features) * (len(features) - 1))
    return float(change / spread)


@torch.no_grad()
def main(args: argparse.Namespace) -> dict:
    ckpt = read_checkpoint(args.ckpt)
    resolve_backbone_args(args, ckpt)
    inherit_flags(args, checkpoint_config(ckpt), DATA_FALLBACKS)
    backbone, _ = build_backbone(args.net, args.base_width)
    load_backbone(backbone, args.ckpt, ckpt, args.net, args.base_width)
    backbone.eval()
    dataset = build_dataset(args, "test", "eval", modality="rgb")
    count = min(args.num_videos, len(dataset))
    middle = [dataset[i]["clips"] for i in range(count)]  # each (10, 3, T, H, W)
    clips = torch.stack([torch.as_tensor(c[len(c) // 2]) for c in middle])  # (N, 3, T, H, W)
    pooled = backbone(clips).mean(dim=(2, 3, 4))
    pooled_reversed = backbone(clips.flip(2)).mean(dim=(2, 3, 4))
    result = {"reversal_sensitivity": reversal_sensitivity(pooled, pooled_reversed), "num_videos": count,
              "checkpoint": str(args.ckpt)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
