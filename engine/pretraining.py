"""The command line of a pretraining run: train_ssl.py's flags, and paper_scripts/colour_reference.py's, which reads
the pretraining data exactly as train_ssl.py does with the same flags."""

from __future__ import annotations

import argparse

from dataset.flags import add_data_args
from engine.training import add_sync_bn_arg, add_training_args
from model import METHODS, add_method_args
from utils.distributed import add_distributed_args


def get_args_parser(model: str | None = None) -> argparse.ArgumentParser:
    """The flags; under a ``model`` that has a published recipe of its own (IIC's), its values are the defaults."""
    parser = argparse.ArgumentParser(description="Self-supervised video pretraining (DualVar on SimCLR / MoCo, IIC)",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    group = add_training_args(
        parser, title="training", epochs=200, batch_size=8, lr=0.003, weight_decay=1e-4, schedule=[120, 160],
        output_dir="runs/pretrain",
        published={"epochs": "200", "batch_size": "8 × 8 GPUs", "lr": "0.003 for a global batch of 64",
                   "weight_decay": "1e-4", "schedule": "120 160"})
    add_sync_bn_arg(group)
    group.add_argument("--save-freq", type=int, default=10,
                       help="also keep OUTPUT_DIR/epochNNN.pth every this many epochs (NNN = 0-based epoch "
                            "just finished); 0 disables")
    add_data_args(parser)
    add_method_args(parser)
    add_distributed_args(parser)
    parser.set_defaults(**getattr(METHODS.get(model), "PUBLISHED_RECIPE", {}))
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the method's published recipe as the defaults (IIC's under --model iic)."""
    known, _ = get_args_parser().parse_known_args(argv)
    return get_args_parser(known.model).parse_args(argv)
