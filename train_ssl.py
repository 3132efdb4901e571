"""Self-supervised pretraining: DualVar on SimCLR and MoCo (METHOD.md §5).

    python train_ssl.py --dataset ucf101 --model simclr --mode clip-sr-tc --net r21d \
        --epochs 200 --batch-size 8 --output-dir runs/dualvar_ucf101
    torchrun --nproc_per_node 8 train_ssl.py ...   # multi-process (nccl on GPUs, gloo on CPUs)

A run writes OUTPUT_DIR/checkpoint.pth every epoch (and every --save-every-iters iterations) and,
with the default --resume auto, continues from it when restarted, reaching the same weights as an
uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from dataset.video_dataset import add_data_args, build_dataset
from model import add_method_args, build_method
from utils.checkpoint import CheckpointError, Checkpointer, unwrap
from utils.distributed import add_distributed_args, cleanup, get_rank, get_world_size, init_distributed, is_dist
from utils.engine import (NonFiniteLossError, check_amp, epoch_loader, iterations_per_epoch, make_grad_scaler,
                          train_one_epoch)
from utils.logging import RunLogger, config_to_dict
from utils.training import build_optimizer, build_scheduler, seed_everything

# the clip sampler of the dataset for each number of views a method asks for
SAMPLER_FOR_VIEWS = {3: "dualvar", 2: "two_view"}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Self-supervised video pretraining (DualVar on SimCLR / MoCo)",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=int, default=200, help="number of epochs (published: 200)")
    group.add_argument("--batch-size", type=int, default=8,
                       help="clips per process; the global batch is this × processes (published: 8 × 8 GPUs)")
    group.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"], help="sgd is the published one")
    group.add_argument("--lr", type=float, default=0.003,
                       help="base learning rate, not rescaled with the batch size (published: 0.003 for 64)")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    group.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay on all parameters")
    group.add_argument("--schedule", type=int, nargs="*", default=[120, 160],
                       help="epochs at which the learning rate is multiplied by --lr-gamma")
    group.add_argument("--lr-gamma", type=float, default=0.1, help="factor applied at each --schedule epoch")
    group.add_argument("--warmup-epochs", type=int, default=0,
                       help="linear warm-up of the learning rate over this many epochs")
    group.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"],
                       help="mixed precision: bf16 (CPU or recent GPUs; ~2x faster on CPU) or fp16 (CUDA only, "
                            "with loss scaling); losses are computed in fp32")
    group.add_argument("--seed", type=int, default=0,
                       help="seeds the model, the data order and every augmentation (same seed = same run)")
    group.add_argument("--sync-bn", action="store_true",
                       help="synchronise BatchNorm statistics across processes (CUDA only)")
    group.add_argument("--output-dir", default="runs/pretrain",
                       help="checkpoints, config.json, log.jsonl and tensorboard events go here")
    group.add_argument("--resume", default="auto",
                       help="auto: continue from OUTPUT_DIR/checkpoint.pth when it exists; a checkpoint path; "
                            "or none to start afresh (overwriting OUTPUT_DIR/checkpoint.pth)")
    group.add_argument("--save-freq", type=int, default=10,
                       help="also keep OUTPUT_DIR/epochNNN.pth every this many epochs (NNN = 0-based epoch "
                            "just finished); 0 disables")
    group.add_argument("--save-every-iters", type=int, default=0,
                       help="also write OUTPUT_DIR/checkpoint.pth every this many iterations (0: only at epoch "
                            "ends); useful on preemptible machines")
    group.add_argument("--max-iters-per-epoch", type=int, default=0,
                       help="cut every epoch after this many iterations (0: full epochs); for smoke runs")
    group.add_argument("--log-every", type=int, default=10,
                       help="write per-iteration values to log.jsonl and tensorboard every this many iterations")
    group.add_argument("--dry-run", action="store_true",
                       help="print the resolved configuration as JSON and exit without reading data")
    add_data_args(parser)
    add_method_args(parser)
    add_distributed_args(parser)
    return parser


def check_args(args: argparse.Namespace) -> None:
    for flag in ("epochs", "batch_size", "warmup_epochs", "save_freq", "save_every_iters", "max_iters_per_epoch"):
        minimum = 1 if flag in ("epochs", "batch_size") else 0
        if getattr(args, flag) < minimum:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least {minimum}, got {getattr(args, flag)}")
    if args.log_every < 1:
        raise ValueError(f"--log-every must be at least 1, got {args.log_every}")
    if args.lr <= 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")


def resolved_config(args: argparse.Namespace, method: torch.nn.Module) -> dict:
    """The flags plus what they imply: views, sampler, loss weights, parameter count, global batch."""
    world_size = get_world_size() if is_dist() else int(os.environ.get("WORLD_SIZE", 1))
    config = config_to_dict(args)
    config["resolved"] = {
        "num_views": method.num_views,
        "sampler": SAMPLER_FOR_VIEWS[method.num_views],
        "loss_weights": dict(method.loss_weights),
        "backbone_parameters": sum(p.numel() for p in method.backbone.parameters()),
        "trainable_parameters": sum(p.numel() for p in method.parameters() if p.requires_grad),
        "world_size": world_size,
        "global_batch_size": args.batch_size * world_size,
    }
    return config


def ssl_forward(model: torch.nn.Module, batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    return model(batch["clips"].to(device, non_blocking=True))


def main(args: argparse.Namespace) -> None:
    check_args(args)
    if args.dry_run:
        print(json.dumps(resolved_config(args, build_method(args)), indent=2, sort_keys=True))
        return

    device = init_distributed(args)
    try:
        _train(args, device)
    finally:
        cleanup()


def _train(args: argparse.Namespace, device: torch.device) -> None:
    check_amp(args.amp, device)
    if args.sync_bn and is_dist() and device.type != "cuda":
        raise ValueError("--sync-bn needs CUDA devices (torch's SyncBatchNorm does not run on the CPU); "
                         "drop --sync-bn on CPU runs")
    # Same seed on every rank for the initial weights (DDP would broadcast rank 0's anyway) ...
    seed_everything(args.seed)
    method = build_method(args).to(device)
    config = resolved_config(args, method)
    # ... then one stream per rank for the randomness inside forward (segment permutations).
    seed_everything(args.seed + 1_000 * get_rank())

    model = method
    if is_dist():
        if args.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(unwrap(model), args)
    scheduler = build_scheduler(optimizer, args)
    scaler = make_grad_scaler(args.amp, device)
    dataset = build_dataset(args, "trainval", config["resolved"]["sampler"])
    iters = iterations_per_epoch(dataset, args.batch_size, args.max_iters_per_epoch)
    checkpointer = Checkpointer(args.output_dir, model, optimizer, scheduler, scaler, config)
    start = checkpointer.resume(args.resume)  # last: it restores the RNG states
    logger = RunLogger(args.output_dir, purge_step=start.global_step + 1 if start.path else None)
    logger.start(config)
    if logger.enabled:
        where = f"resuming from {start.path} at epoch {start.epoch}, iteration {start.iteration}" \
            if start.path else "starting afresh"
        print(f"{where}; {len(dataset)} videos, {iters} iterations per epoch, {get_world_size()} process(es) "
              f"on {device}", flush=True)

    global_step = start.global_step
    start_iter = start.iteration
    try:
        for epoch in range(start.epoch, args.epochs):
            loader = epoch_loader(dataset, batch_size=args.batch_size, workers=args.workers, seed=args.seed,
                                  epoch=epoch, start_iter=start_iter, pin_memory=device.type == "cuda")
            stats, global_step = train_one_epoch(
                model, loader, optimizer, forward_fn=lambda m, b: ssl_forward(m, b, device),
                loss_weights=unwrap(model).loss_weights, epoch=epoch, num_iters=iters, start_iter=start_iter,
                global_step=global_step, device=device, amp=args.amp, scaler=scaler, logger=logger,
                log_every=args.log_every, save_every_iters=args.save_every_iters, save_fn=checkpointer.save)
            start_iter = 0
            scheduler.step()
            logger.log("epoch", global_step, stats, epoch=epoch)  # before the save: a resume purges it
            keep = args.save_freq and (epoch + 1) % args.save_freq == 0
            checkpointer.save(epoch + 1, 0, global_step, copy_name=f"epoch{epoch:03d}.pth" if keep else None)
            if logger.enabled:
                print(f"epoch {epoch}: " + "  ".join(f"{k} {v:.4g}" for k, v in stats.items()), flush=True)
    except NonFiniteLossError as e:
        kept = checkpointer.latest_path if checkpointer.latest_path.is_file() else "none written yet"
        raise NonFiniteLossError(f"{e}; last good checkpoint: {kept}") from None
    finally:
        logger.close()


if __name__ == "__main__":
    cli_args = get_args_parser().parse_args()
    try:
        main(cli_args)
    except (NonFiniteLossError, CheckpointError, ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
