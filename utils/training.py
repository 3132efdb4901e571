"""Optimiser, learning-rate schedule and seeding, shared by train_ssl.py and finetune.py."""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(epoch: int, args: argparse.Namespace) -> float:
    """Multi-step decay at --schedule epochs, after a linear warm-up over --warmup-epochs."""
    warmup = (epoch + 1) / args.warmup_epochs if epoch < args.warmup_epochs else 1.0
    return warmup * args.lr_gamma ** sum(epoch >= milestone for milestone in args.schedule)


def build_optimizer(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """--optimizer over the trainable parameters, with --lr, --momentum (SGD) and --weight-decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, args: argparse.Namespace):
    """Per-epoch LambdaLR implementing `lr_factor`; its state is part of every checkpoint."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, args))
