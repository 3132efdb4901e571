"""Optimiser, learning-rate schedule and seeding, shared by train_ssl.py and finetune.py."""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch

from engine.output_dir import check_output_dir, run_kind
from utils.distributed import is_dist
from utils.precision import AMP_CHOICES


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(epoch: int, args: argparse.Namespace) -> float:
    """Multi-step decay at --schedule epochs, after a linear warm-up over --warmup-epochs."""
    warmup = (epoch + 1) / args.warmup_epochs if epoch < args.warmup_epochs else 1.0
    return warmup * args.lr_gamma ** sum(epoch >= milestone for milestone in args.schedule)


def add_sync_bn_arg(group) -> None:
    group.add_argument("--sync-bn", action="store_true",
                       help="BatchNorm statistics over the global batch instead of each process's share (CUDA, "
                            "several processes); the launchers pass it on more than one GPU, where a process holds "
                            "only a few clips")


def convert_sync_bn(model: torch.nn.Module, enabled: bool, device: torch.device) -> torch.nn.Module:
    """``model`` with SyncBatchNorm when ``enabled`` under torchrun (call before the DDP wrap). A model that names
    ``sync_bn_submodules`` has only those converted: MoCo's key encoder keeps per-process statistics, which its
    batch shuffle relies on."""
    if not enabled or not is_dist():
        return model
    if device.type != "cuda":
        raise ValueError("--sync-bn needs CUDA devices (torch's SyncBatchNorm does not run on the CPU); "
                         "drop --sync-bn on CPU runs")
    names = getattr(model, "sync_bn_submodules", None)
    if names is None:
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name in names:
        setattr(model, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(getattr(model, name)))
    return model


def build_optimizer(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """--optimizer over the trainable parameters, with --lr, --momentum (SGD) and --weight-decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, args: argparse.Namespace):
    """Per-epoch LambdaLR implementing `lr_factor`; its state is part of every checkpoint."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, args))


def add_training_args(parser: argparse.ArgumentParser, *, title: str, epochs: int, batch_size: int, lr: float,
                      weight_decay: float, schedule: list[int], output_dir: str, published: dict[str, str]):
    """The optimisation, AMP, output and resume flags every training script shares; returns the group so
    that a script adds its own flags beside them. ``published`` maps a flag's dest to the published
    setting, shown in its help text."""
    def note(dest: str) -> str:
        return f" (published: {published[dest]})" if dest in published else ""

    group = parser.add_argument_group(title)
    group.add_argument("--epochs", type=int, default=epochs, help="number of epochs" + note("epochs"))
    group.add_argument("--steps", type=int, default=0,
                       help="train for this many optimizer steps instead of --epochs (0: --epochs): as many epochs as "
                            "they need, the last one cut short, so that data sets of any size train the same amount "
                            "(--schedule and --warmup-epochs stay in epochs)")
    group.add_argument("--batch-size", type=int, default=batch_size,
                       help="clips per process; the global batch is this × processes" + note("batch_size"))
    group.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"], help="sgd is the published one")
    group.add_argument("--lr", type=float, default=lr,
                       help="learning rate, not rescaled with the batch size" + note("lr"))
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    group.add_argument("--weight-decay", type=float, default=weight_decay,
                       help="weight decay on all trainable parameters" + note("weight_decay"))
    group.add_argument("--schedule", type=int, nargs="*", default=schedule,
                       help="epochs at which the learning rate is multiplied by --lr-gamma" + note("schedule"))
    group.add_argument("--lr-gamma", type=float, default=0.1, help="factor applied at each --schedule epoch")
    group.add_argument("--warmup-epochs", type=int, default=0,
                       help="linear warm-up of the learning rate over this many epochs")
    group.add_argument("--amp", default="auto", choices=AMP_CHOICES,
                       help="mixed precision: auto = bf16 on Ampere or newer GPUs, fp16 on older GPUs, fp32 on every "
                            "CPU (oneDNN's bf16 Conv3d gradients are wrong on AVX-512 CPUs: docs/gpu.md); bf16 "
                            "(refused on a CPU where they are wrong); fp16 (CUDA only, with loss scaling); none = "
                            "fp32. Losses are computed in fp32")
    group.add_argument("--grad-checkpoint", action="store_true",
                       help="keep only each backbone stage's input for backward and recompute the stage there: the "
                            "same loss and gradients (BatchNorm statistics included) in far less activation memory, "
                            "for about a third more compute (docs/gpu.md)")
    group.add_argument("--seed", type=int, default=0,
                       help="seeds the model, the data order and every augmentation (same seed = same run)")
    group.add_argument("--output-dir", default=output_dir,
                       help="checkpoints, config.json, log.jsonl, tensorboard events and results go here")
    group.add_argument("--resume", default="auto",
                       help="auto: continue from OUTPUT_DIR/checkpoint.pth when it exists; a checkpoint path; "
                            "or none to start afresh (overwriting OUTPUT_DIR/checkpoint.pth)")
    group.add_argument("--save-every-iters", type=int, default=0,
                       help="also write OUTPUT_DIR/checkpoint.pth every this many iterations (0: only at epoch "
                            "ends); useful on preemptible machines")
    group.add_argument("--max-iters-per-epoch", type=int, default=0,
                       help="cut every epoch after this many iterations (0: full epochs); for smoke runs")
    group.add_argument("--log-every", type=int, default=10,
                       help="write per-iteration values to log.jsonl and tensorboard every this many iterations")
    group.add_argument("--dry-run", action="store_true",
                       help="print the resolved configuration as JSON and exit without reading data")
    return group


def check_training_args(args: argparse.Namespace, minimums: dict[str, int] | None = None) -> None:
    """Range checks of the add_training_args flags (and of the script's own integer flags in ``minimums``), and
    whether this run may write into --output-dir (nothing is written yet, so that --dry-run checks it too)."""
    minimums = {"epochs": 1, "steps": 0, "batch_size": 1, "warmup_epochs": 0, "save_every_iters": 0, "max_iters_per_epoch": 0,
                "log_every": 1, **(minimums or {})}
    for flag, minimum in minimums.items():
        if getattr(args, flag) < minimum:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least {minimum}, got {getattr(args, flag)}")
    if args.lr <= 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")
    check_output_dir(args.output_dir, run_kind(args))
