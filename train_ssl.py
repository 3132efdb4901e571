"""Self-supervised pretraining: DualVar on SimCLR and MoCo (METHOD.md §5), IIC (§6).

    python train_ssl.py --dataset ucf101 --model simclr --mode clip-sr-tc --net r21d \
        --epochs 200 --batch-size 8 --output-dir runs/dualvar_ucf101
    python train_ssl.py --dataset ucf101 --model iic --modality res --intra-neg repeat --net r3d \
        --epochs 240 --batch-size 16 --lr 0.01 --schedule 45 90 125 160 --lr-gamma 0.2 --output-dir runs/iic_ucf101
    torchrun --nproc_per_node 8 train_ssl.py ...   # multi-process (nccl on GPUs, gloo on CPUs)

A run writes OUTPUT_DIR/checkpoint.pth every epoch (and every --save-every-iters iterations) and,
with the default --resume auto, continues from it when restarted, reaching the same weights as an
uninterrupted run.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from dataset.build import build_dataset
from engine.checkpoint import unwrap
from engine.launch import launch, run_cli
from engine.memory import check_fits, pretraining_memory
from engine.pretraining import get_args_parser, parse_args
from engine.training import check_training_args, fit, seed_everything
from model import build_method, method_sampling
from model.backbones import set_grad_checkpointing
from utils.config import config_to_dict
from utils.distributed import get_world_size, is_dist
from utils.precision import select_amp


# methods whose only negatives are the other clips of the global batch (MoCo and IIC also draw them from a
# queue or memory bank): a batch of one clip has none, and its contrastive loss is 0
BATCH_CONTRASTIVE = ("simclr",)


def check_args(args: argparse.Namespace) -> None:
    check_training_args(args, {"save_freq": 0})
    world_size = get_world_size() if is_dist() else int(os.environ.get("WORLD_SIZE", 1))
    if args.model in BATCH_CONTRASTIVE and args.batch_size * world_size < 2:
        raise ValueError(f"--model {args.model} contrasts each clip with the other clips of the batch only, so a "
                         f"global batch of {args.batch_size * world_size} (--batch-size {args.batch_size} × {world_size} "
                         "process(es)) has no negatives: use a global batch of at least 2")
    with torch.device("meta"):  # the checks need the method's configuration, not its weights
        method = build_method(args, num_videos=1)
    method.check_config(args.batch_size, args.num_frames)


def resolved_config(args: argparse.Namespace, method: torch.nn.Module) -> dict:
    """The flags plus what they imply: views, sampler, loss weights, parameter count, global batch, banks."""
    world_size = get_world_size() if is_dist() else int(os.environ.get("WORLD_SIZE", 1))
    config = config_to_dict(args)
    config["resolved"] = {
        "num_views": method.num_views,
        "sampler": method_sampling(args).name,
        "loss_weights": dict(method.loss_weights),
        "backbone_parameters": sum(p.numel() for p in method.backbone.parameters()),
        "trainable_parameters": sum(p.numel() for p in method.parameters() if p.requires_grad),
        "world_size": world_size,
        "global_batch_size": args.batch_size * world_size,
        "memory_estimate": pretraining_memory(args, method, args.amp),
    }
    if hasattr(method, "banks"):
        # rows: one per training video, 0 under --dry-run (the dataset is not read)
        config["resolved"]["memory_banks"] = {name: list(method.banks.bank(name).shape)
                                              for name in method.banks.names}
    return config


def ssl_forward(model: torch.nn.Module, batch: dict, dataset, device: torch.device) -> dict[str, torch.Tensor]:
    """Call the (possibly DDP-wrapped) method on the batch entries it names; DualVar takes "clips"."""
    keys = getattr(unwrap(model), "batch_keys", ("clips",))
    batch = dataset.to_device({key: batch[key] for key in keys}, device)
    return model(*(batch[key] for key in keys))


def main(args: argparse.Namespace) -> None:
    check_args(args)
    launch(args, get_args_parser(args.model), lambda device: _train(args, device),
           saved_in=str(Path(args.output_dir) / "config.json"),
           dry_run_config=lambda: resolved_config(args, build_method(args)), claim_output=True)


def _train(args: argparse.Namespace, device: torch.device) -> None:
    args.amp = select_amp(args.amp, device, training=True)
    # The training-set size sizes IIC's memory banks, so the dataset comes first.
    dataset = build_dataset(args, "trainval", method_sampling(args), uint8=True)
    # Same seed on every rank for the initial weights and banks (DDP would broadcast rank 0's anyway) ...
    seed_everything(args.seed)
    method = build_method(args, num_videos=len(dataset)).to(device)
    set_grad_checkpointing(method, args.grad_checkpoint)
    config = resolved_config(args, method)
    config["resolved"]["train_videos"] = len(dataset)
    check_fits(config["resolved"]["memory_estimate"], device, get_world_size())
    # ... then fit gives every rank its own stream for the randomness inside forward (segment permutations). No
    # buffer broadcast before every forward (59 MB a step for IIC's banks, 17 MB for MoCo's queue): the banks and
    # queues are updated from gathered features on every rank, so they stay identical by construction; BatchNorm's
    # running statistics may then differ between ranks, but pretraining runs BatchNorm on batch statistics only, and
    # the checkpoint keeps rank 0's (DDP copies rank 0's buffers once, when it wraps the model).
    fit(method, dataset, args, device=device, forward=lambda m, b: ssl_forward(m, b, dataset, device),
        loss_weights=method.loss_weights, config=config, videos=f"{len(dataset)} videos", broadcast_buffers=False,
        end_of_epoch=lambda epoch, stats, last: f"epoch{epoch:03d}.pth" if keep_copy(args, epoch) else None)


def keep_copy(args: argparse.Namespace, epoch: int) -> bool:
    """Whether --save-freq keeps a copy of the checkpoint written after ``epoch`` (0-based)."""
    return bool(args.save_freq) and (epoch + 1) % args.save_freq == 0


if __name__ == "__main__":
    run_cli(main, parse_args())
