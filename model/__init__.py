"""Self-supervised methods: `add_method_args(parser)` and `build_method(args)`.

A method is an nn.Module built from Python with a backbone and keywords (``SimCLRDualVar(backbone,
mode="clip-sr-tc")``), or from train_ssl.py's flags with ``from_args(args, num_videos)``. It has `.backbone`,
`.num_views`, `.loss_weights`, a forward returning a dict of named fp32 loss terms (`loss_*`) and logged
metrics, and states what the run machinery needs to know of it: the backbone passes a step keeps for backward
(`.clips_with_gradient`, `.clips_in_largest_pass`: engine/memory.py) and how a reproduction card names its
mode and negatives (`card_fields`: engine/card.py). Adding one is one registry entry (plus its flags in
`ARG_ADDERS`). DualVar's forward takes `batch["clips"]`; a method that needs other batch entries names them in
`.batch_keys` (IIC: `forward(clip, index)`); `sampling_for(args)` names the dataset items it trains on (a
sampling recipe, dataset/recipes.py, declared next to the method).
"""

import argparse
from collections.abc import Callable

import torch.nn as nn

from dataset.recipes import SamplingRecipe
from model.backbones import BACKBONES
from model.dualvar import MoCoDualVar, SimCLRDualVar, add_dualvar_args
from model.iic import IIC, add_iic_args

METHODS: dict[str, Callable[..., nn.Module]] = {
    "simclr": SimCLRDualVar,
    "moco": MoCoDualVar,
    "iic": IIC,
}

# each adds the flags of one method family
ARG_ADDERS: list[Callable[[argparse.ArgumentParser], None]] = [add_dualvar_args, add_iic_args]


def add_method_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("method and backbone")
    group.add_argument("--model", default="simclr", choices=sorted(METHODS),
                       help="self-supervised method; --mode picks the DualVar loss terms of simclr / moco, "
                            "the IIC flags configure iic")
    group.add_argument("--net", default="r21d", choices=sorted(BACKBONES),
                       help="backbone: r21d / r3d = the paper's R(2+1)D-10 / R3D-10; r3d_18, r21d_18, s3d, c3d")
    group.add_argument("--base-width", type=int, default=64,
                       help="width of the first backbone stage, later stages scale with it "
                            "(64 = published networks; 8-16 for a quick CPU demo; s3d supports only 64)")
    for add_args in ARG_ADDERS:
        add_args(parser)


def build_method(args: argparse.Namespace, num_videos: int | None = None) -> nn.Module:
    """The method of ``args.model``; ``num_videos`` (training-set size) sizes memory banks, others ignore it."""
    if args.model not in METHODS:
        raise ValueError(f"unknown --model {args.model!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[args.model].from_args(args, num_videos=num_videos)


def method_sampling(args: argparse.Namespace) -> SamplingRecipe:
    """The sampling recipe ``args.model`` trains on, known before the method is built (METHOD.md §2)."""
    return METHODS[args.model].sampling_for(args)
