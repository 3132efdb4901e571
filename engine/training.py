"""The training run that train_ssl.py and finetune.py share: their flags, the optimiser, the learning-rate schedule,
seeding, and ``fit``, which trains a built model to the end of its budget with checkpoints, exact resume and logs."""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable

import numpy as np
import torch

from engine.checkpoint import Checkpointer, unwrap
from engine.loop import epoch_lengths, epoch_loader, iterations_per_epoch, train_one_epoch
from engine.output_dir import check_output_dir, run_kind
from engine.run_log import RunLogger
from utils.distributed import get_rank, get_world_size, is_dist
from utils.precision import AMP_CHOICES, make_grad_scaler


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


def fit(model: torch.nn.Module, dataset, args: argparse.Namespace, *, device: torch.device,
        forward: Callable[[torch.nn.Module, dict], dict[str, torch.Tensor]], loss_weights: dict[str, float],
        config: dict, videos: str, broadcast_buffers: bool = True, extra_state: dict[str, dict] | None = None,
        end_of_epoch: Callable[[int, dict, bool], str | None] | None = None) -> Checkpointer:
    """Train ``model`` (built, seeded and on ``device``) on ``dataset`` for the budget of ``args`` (--epochs or
    --steps): one random stream per rank for the randomness inside forward, SyncBatchNorm and DistributedDataParallel
    under torchrun, --optimizer with its per-epoch schedule, a GradScaler for fp16, OUTPUT_DIR/checkpoint.pth every
    epoch (and every --save-every-iters iterations) with --resume, and the run log. ``config`` is written to
    config.json and into every checkpoint, its "resolved" entry completed with the epochs and steps.

    ``forward(model, batch)`` returns the loss terms and metrics of a batch, ``loss_weights`` weighs the ``loss_*``
    ones. ``extra_state`` maps names to dicts that every checkpoint keeps and a resume restores in place.
    ``end_of_epoch(epoch, stats, last)`` runs after each epoch's schedule step; it may add entries to the epoch's
    stats (validation) and returns the name of a copy of this epoch's checkpoint to keep, or None. ``videos`` says
    what the run trains on, in its first line. Returns the checkpointer (``latest_path``)."""
    seed_everything(args.seed + 1_000 * get_rank())  # one stream per rank for the randomness inside forward
    model = convert_sync_bn(model, args.sync_bn, device)
    if is_dist():
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=broadcast_buffers)
    optimizer = build_optimizer(unwrap(model), args)
    scheduler = build_scheduler(optimizer, args)
    scaler = make_grad_scaler(args.amp, device)
    iters = iterations_per_epoch(dataset, args.batch_size, args.max_iters_per_epoch)
    lengths = epoch_lengths(iters, args.epochs, args.steps)
    config["resolved"].update(epochs=len(lengths), steps=sum(lengths))
    checkpointer = Checkpointer(args.output_dir, model, optimizer, scheduler, scaler, config, extra_state)
    start = checkpointer.resume(args.resume)  # last: it restores the RNG states
    logger = RunLogger(args.output_dir, purge_step=start.global_step + 1 if start.path else None)
    logger.start(config)
    if logger.enabled:
        where = f"resuming from {start.path} at epoch {start.epoch}, iteration {start.iteration}" \
            if start.path else "starting afresh"
        print(f"{where}; {videos}, {iters} iterations per epoch, {get_world_size()} process(es) on {device}",
              flush=True)

    global_step, start_iter = start.global_step, start.iteration
    try:
        with checkpointer.naming_last_good():
            for epoch in range(start.epoch, len(lengths)):
                loader = epoch_loader(dataset, batch_size=args.batch_size, workers=args.workers, seed=args.seed,
                                      epoch=epoch, start_iter=start_iter, pin_memory=device.type == "cuda")
                stats, global_step = train_one_epoch(
                    model, loader, optimizer, forward_fn=forward, loss_weights=loss_weights, epoch=epoch,
                    num_iters=lengths[epoch], start_iter=start_iter, global_step=global_step, device=device,
                    amp=args.amp, scaler=scaler, logger=logger, log_every=args.log_every,
                    save_every_iters=args.save_every_iters, save_fn=checkpointer.save)
                start_iter = 0
                scheduler.step()
                copy_name = end_of_epoch(epoch, stats, epoch + 1 == len(lengths)) if end_of_epoch else None
                logger.log("epoch", global_step, stats, epoch=epoch)  # before the save: a resume purges it
                checkpointer.save(epoch + 1, 0, global_step, copy_name=copy_name)
                if logger.enabled:
                    print(f"epoch {epoch}: " + "  ".join(f"{k} {v:.4g}" for k, v in stats.items()), flush=True)
    finally:
        logger.close()
    return checkpointer
