"""Supervised finetuning or linear probing of a pretrained backbone (METHOD.md §7).

    python finetune.py --dataset ucf101 --pretrain runs/dualvar_ucf101/epoch189.pth --output-dir runs/ft_ucf101
    python finetune.py ... --train-what last          # linear probe: frozen backbone
    python finetune.py ... --pretrain none            # random-initialisation baseline
    python finetune.py ... --init-from vcop_r21d.pth --net r21d   # a VCOP / IIC / DualVar release
    torchrun --nproc_per_node 4 finetune.py ...       # multi-process

Trains on the train split minus the hold-out (seed 666) and validates on the hold-out after every
--val-freq epochs with the test protocol (10 clips per video, centre crop, mean softmax). Writes
OUTPUT_DIR/checkpoint.pth (exact resume with --resume auto), OUTPUT_DIR/best.pth (best validation
top-1; pass it to test.py) and OUTPUT_DIR/finetune_results.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dataset.build import build_dataset, require_labels
from dataset.clip_input import MODALITIES
from dataset.flags import add_data_args
from dataset.layout import LayoutError
from dataset.recipes import EVAL, FINETUNE
from engine.launch import launch, run_cli
from engine.loop import epoch_lengths, iterations_per_epoch
from engine.training import add_sync_bn_arg, add_training_args, check_training_args, fit, seed_everything
from evaluation.inference import classify_videos, dataset_labels
from evaluation.metrics import classification_report
from model.backbones import set_grad_checkpointing
from model.classifier import (VideoClassifier, assert_unchanged, check_modality, classification_loss, prepare_input,
                              snapshot)
from model.weights import add_backbone_args, check_one_source, checkpoint_config, load_weights, read_source
from utils.atomic import write_text
from utils.config import config_to_dict, inherit_flags
from utils.distributed import add_distributed_args, get_world_size, is_main_process
from utils.precision import select_amp

LOSS_WEIGHTS = {"loss_ce": 1.0}
BEST_NAME = "best.pth"
RESULTS_NAME = "finetune_results.json"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Finetune or linear-probe a pretrained video backbone",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    group = add_training_args(
        parser, title="finetuning", epochs=100, batch_size=16, lr=0.05, weight_decay=1e-3, schedule=[30, 60, 80],
        output_dir="runs/finetune",
        published={"epochs": "100 from UCF101 pretraining, 150 from K400", "batch_size": "16", "lr": "0.05",
                   "weight_decay": "1e-3", "schedule": "30 60 80 from UCF101 pretraining, 50 100 from K400"})
    group.add_argument("--pretrain", default=None,
                       help="checkpoint whose backbone initialises the network (train_ssl.py's checkpoint.pth or "
                            "epochNNN.pth, or a finetune.py checkpoint), or 'none' for random initialisation; "
                            "required unless --init-from is given")
    group.add_argument("--init-from", default=None, metavar="PATH",
                       help="instead of --pretrain: a checkpoint of the VCOP family (VCOP, IIC, DualVar, PRP, Pace, "
                            "...) whose r3d / r21d / c3d backbone initialises the network; pass its --net")
    group.add_argument("--train-what", default="ft", choices=["ft", "last"],
                       help="ft: train every layer; last: linear probe (backbone frozen, in eval mode, checked "
                            "unchanged after training)")
    group.add_argument("--modality", default="rgb", choices=MODALITIES,
                       help="network input: rgb; res = raw residual x_t - x_{t-1} of the normalised clip "
                            "(IIC's finetuning input); u / v = that optical-flow component in [0, 1], read from "
                            "--flow-root (process_data/src/extract_flow.py writes it)")
    group.add_argument("--dropout", type=float, default=0.0, help="dropout before the linear layer (0: none)")
    group.add_argument("--val-freq", type=int, default=1,
                       help="validate on the hold-out every this many epochs (and after the last); 0: never, and "
                            "train on the whole train split (hold-out included)")
    add_sync_bn_arg(group)
    group.add_argument("--eval-batch-size", type=int, default=4,
                       help="videos per validation batch (each is 10 clips)")
    add_backbone_args(parser)
    add_data_args(parser)
    parser.set_defaults(stride=2, clip_input=None)  # METHOD.md §2: finetuning and testing sample at stride 2
    for action in parser._actions:
        if action.dest == "clip_input":
            action.help += "; default: the --pretrain checkpoint's, else rgb"
    add_distributed_args(parser)
    return parser


def check_args(args: argparse.Namespace) -> None:
    check_training_args(args, {"eval_batch_size": 1, "val_freq": 0})
    check_one_source(args, "--pretrain", "a checkpoint of this project, or 'none'")
    if not 0 <= args.dropout < 1:
        raise ValueError(f"--dropout must be in [0, 1), got {args.dropout}")
    check_modality(args.modality)


def load_pretrained(model: VideoClassifier, args: argparse.Namespace, ckpt: dict) -> dict:
    """Initialise the backbone from --pretrain or --init-from; returns what was loaded, for the configuration."""
    if args.init_from is None and not ckpt:
        print("--pretrain none: the backbone starts from random initialisation", flush=True)
        return {"pretrain_kind": "none", "loaded_tensors": 0}
    loaded, kind = load_weights(model.backbone, args, ckpt, "--pretrain")
    if args.init_from is not None:
        return {"pretrain_kind": kind, "loaded_tensors": loaded}
    print(f"loaded {loaded} backbone tensors from {args.pretrain} ({kind})", flush=True)
    return {"pretrain_kind": kind, "loaded_tensors": loaded, "pretrain_epoch": ckpt.get("epoch")}


def main(args: argparse.Namespace) -> dict | None:
    """Run the finetuning; returns the results written to finetune_results.json (None for --dry-run)."""
    check_args(args)
    ckpt = read_source(args, "--pretrain", no_checkpoint=("none",))
    inherit_flags(args, checkpoint_config(ckpt), {"clip_input": "rgb"})
    check_modality(args.modality, args.clip_input)
    return launch(args, get_args_parser(), lambda device: _finetune(args, device, ckpt),
                  saved_in=str(Path(args.output_dir) / "config.json"), claim_output=True)


def _finetune(args: argparse.Namespace, device: torch.device, ckpt: dict) -> dict:
    args.amp = select_amp(args.amp, device, training=True)
    # Without validation the hold-out would only be wasted, so it is trained on.
    train_set = build_dataset(args, "train" if args.val_freq else "trainval", FINETUNE, modality=args.modality,
                              uint8=True)
    val_set = build_dataset(args, "val", EVAL, modality=args.modality, uint8=True) if args.val_freq else []
    for dataset in (train_set, val_set) if args.val_freq else (train_set,):
        require_labels(dataset, "finetuning")
    if train_set.num_classes < 2:
        raise LayoutError(f"--dataset {args.dataset}: finetuning needs labelled videos of at least 2 classes "
                          f"(found {train_set.num_classes} classes); check ClassInd.txt and the CSV labels")
    lengths = epoch_lengths(iterations_per_epoch(train_set, args.batch_size, args.max_iters_per_epoch), args.epochs,
                            args.steps)  # for the configuration; fit trains them

    seed_everything(args.seed)  # same head initialisation on every rank
    linear_probe = args.train_what == "last"
    classifier = VideoClassifier.build(args.net, args.base_width, train_set.num_classes, args.dropout,
                                       frozen_backbone=linear_probe)
    loaded = load_pretrained(classifier, args, ckpt)
    frozen_reference = snapshot(classifier.backbone) if linear_probe else None
    set_grad_checkpointing(classifier, args.grad_checkpoint)
    classifier.to(device)

    config = config_to_dict(args)
    config["resolved"] = {
        **loaded, "num_classes": train_set.num_classes, "class_names": train_set.class_names,
        "train_videos": len(train_set), "val_videos": len(val_set), "epochs": len(lengths), "steps": sum(lengths),
        "world_size": get_world_size(),
        "global_batch_size": args.batch_size * get_world_size(),
        "trainable_parameters": sum(p.numel() for p in classifier.parameters() if p.requires_grad),
    }

    def forward(m: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        batch = train_set.to_device(batch, device)
        clips = prepare_input(batch["clip"], args.modality)  # (B, 3, T, H, W)
        return classification_loss(m(clips), batch["label"].to(device, non_blocking=True))

    # the best validation so far, in every checkpoint, so that a resumed run keeps choosing best.pth against it
    best = {"val_top1": float("-inf"), "epoch": -1}
    last_val = {}

    def validate_and_choose_best(epoch: int, stats: dict, last: bool) -> str | None:
        if args.val_freq and ((epoch + 1) % args.val_freq == 0 or last):
            last_val.clear()
            last_val.update(validate(classifier, val_set, args, device))
            stats.update(last_val)
        improved = "val_top1" in stats and stats["val_top1"] > best["val_top1"]
        if improved:
            best.update(val_top1=stats["val_top1"], epoch=epoch)
        return BEST_NAME if improved else None

    checkpointer = fit(classifier, train_set, args, device=device, forward=forward, loss_weights=LOSS_WEIGHTS,
                       config=config, videos=f"{len(train_set)} training / {len(val_set)} validation videos",
                       extra_state={"best": best}, end_of_epoch=validate_and_choose_best)

    if frozen_reference is not None:
        assert_unchanged(classifier.backbone, frozen_reference)
    results = {
        "best_epoch": best["epoch"],
        "best_val_top1": best["val_top1"] if best["epoch"] >= 0 else None,
        "last_validation": last_val,
        "epochs": len(lengths),
        "steps": sum(lengths),
        "train_what": args.train_what,
        "modality": args.modality,
        "pretrain": args.pretrain,
        "init_from": args.init_from,
        **loaded,
        # with no validation there is no "best": only the last checkpoint exists
        "best_checkpoint": str(Path(args.output_dir) / BEST_NAME) if best["epoch"] >= 0 else None,
        "last_checkpoint": str(checkpointer.latest_path),
    }
    if is_main_process():
        path = Path(args.output_dir) / RESULTS_NAME
        write_text(path, json.dumps(results, indent=2) + "\n")
        if results["best_checkpoint"] is None:
            print(f"results in {path}: no validation (--val-freq 0); the checkpoint to test is "
                  f"{results['last_checkpoint']}")
        else:
            print(f"results in {path}: best validation top-1 {results['best_val_top1']:.2f} at epoch "
                  f"{results['best_epoch']} ({results['best_checkpoint']})")
    return results


def validate(classifier: VideoClassifier, val_set, args: argparse.Namespace, device: torch.device) -> dict:
    """10-clip top-1 / top-5 / mean class accuracy (percent) on the hold-out, as test.py measures them."""
    scores = classify_videos(classifier, val_set, prepare=lambda x: prepare_input(x, args.modality),
                             batch_size=args.eval_batch_size, workers=args.workers, device=device, amp=args.amp,
                             desc="validation")
    report = classification_report(scores, dataset_labels(val_set), val_set.class_names)
    return {f"val_{k}": report[k] for k in ("top1", "top5", "mean_class_accuracy")}


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
