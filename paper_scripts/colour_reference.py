"""Clip-contrast accuracy of a feature with no learning: each clip's per-channel mean and standard deviation.

    python paper_scripts/colour_reference.py --dataset demo --num-frames 8 --size 32 --resize 32 42 \
        --stride 4 --batch-size 16 --output-dir output/miniature/colour_reference

Reads the pretraining data exactly as `train_ssl.py` with the same flags would (sampler, clip
augmentation, seeds, batch size) and scores views A and B of every batch of one epoch with the
SimCLR contrast's top-1 accuracy (METHOD.md §5.3) on the 6-number colour feature. A pretraining
run whose `acc_clip` is no higher than this has learned no more than colour statistics (METHOD.md
§1.4). Writes OUTPUT_DIR/colour_contrast.json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

if not __package__:  # run as a file: the repository root is not on the path yet
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dataset.build import build_dataset  # noqa: E402
from engine.launch import run_cli  # noqa: E402
from engine.loop import epoch_loader, iterations_per_epoch  # noqa: E402
from engine.pretraining import parse_args  # noqa: E402
from model import method_sampling  # noqa: E402
from model.losses import nt_xent  # noqa: E402
from model.references import ColourStatistics  # noqa: E402
from utils.atomic import write_text  # noqa: E402
from utils.config import config_to_dict  # noqa: E402


@torch.no_grad()
def colour_contrast_accuracy(args) -> dict:
    dataset = build_dataset(args, "trainval", method_sampling(args))
    iters = iterations_per_epoch(dataset, args.batch_size, args.max_iters_per_epoch)
    loader = epoch_loader(dataset, batch_size=args.batch_size, workers=args.workers, seed=args.seed, epoch=0)
    feature = ColourStatistics()
    correct = total = 0.0
    for it, batch in enumerate(loader):
        if it >= iters:
            break
        clips = batch["clips"]  # (B, V, 3, T, H, W), views A and B first
        z_a = F.normalize(feature(clips[:, 0]).flatten(1), dim=1)  # (B, 6)
        z_b = F.normalize(feature(clips[:, 1]).flatten(1), dim=1)
        _, top1 = nt_xent(z_a, z_b, args.temperature, return_top1=True)
        correct += float(top1) * 2 * len(clips)
        total += 2 * len(clips)
    return {"acc_clip": correct / total, "anchors": int(total), "batch_size": args.batch_size,
            "feature": "per-channel mean and standard deviation of each clip (6 numbers), L2-normalised",
            "config": config_to_dict(args)}


def main(args) -> dict:
    if args.dry_run:
        print(json.dumps(config_to_dict(args), indent=2, sort_keys=True))
        return {}
    result = colour_contrast_accuracy(args)
    out = Path(args.output_dir)
    write_text(out / "colour_contrast.json", json.dumps(result, indent=2) + "\n")
    print(f"colour-statistics clip-contrast accuracy {result['acc_clip']:.4f} over {result['anchors']} anchors "
          f"(batch {args.batch_size}) -> {out / 'colour_contrast.json'}", flush=True)
    return result


if __name__ == "__main__":
    run_cli(main, parse_args())
