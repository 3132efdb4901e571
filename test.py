"""Action-recognition test of a finetuned classifier: 10 clips per video (METHOD.md §7).

    python test.py --dataset ucf101 --ckpt runs/ft_ucf101/best.pth --output-dir runs/ft_ucf101/test
    torchrun --nproc_per_node 4 test.py ...   # every video still counted exactly once

Each video gives 10 evenly spaced centre-cropped clips; its score is the mean of the clips' softmax
(or of their logits with --aggregate logits). Writes OUTPUT_DIR/test_results.json (top1, top5,
mean_class_accuracy in percent, num_videos, per-class accuracy, per-video predictions) and
OUTPUT_DIR/confusion_matrix.png. The backbone, the input modality and the clip geometry default to
the values the checkpoint was finetuned with.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from dataset.build import build_dataset, require_labels
from dataset.clip_input import MODALITIES
from dataset.flags import CLIP_FALLBACKS, add_data_args, defaults_from_checkpoint
from dataset.layout import LayoutError
from dataset.recipes import EVAL
from engine.card import write_card
from engine.launch import launch, run_cli
from engine.output_dir import check_writable
from evaluation.inference import classify_videos, dataset_labels
from evaluation.metrics import classification_report, ranked_classes
from evaluation.plots import plot_confusion_matrix
from model.classifier import VideoClassifier, check_modality, prepare_input
from model.weights import add_backbone_args, check_state_matches, checkpoint_config, read_source, strip_ddp_prefix
from utils.atomic import write_text
from utils.checkpoint_io import CheckpointError
from utils.config import config_to_dict, git_revision, inherit_flags
from utils.distributed import add_distributed_args, is_main_process
from utils.precision import add_inference_amp_arg, select_amp

RESULTS_NAME = "test_results.json"
# clip geometry: taken from the checkpoint's configuration unless given; finetuning samples at stride 2
DATA_FALLBACKS = {**CLIP_FALLBACKS, "stride": 2}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="10-clip action-recognition test of a finetuned classifier",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    group = parser.add_argument_group("test")
    group.add_argument("--ckpt", required=True, help="finetune.py checkpoint (best.pth or checkpoint.pth)")
    group.add_argument("--test-split", default="test", choices=["test", "val"],
                       help="which videos to score: the official test split, or the finetuning hold-out")
    group.add_argument("--aggregate", default="softmax", choices=["softmax", "logits"],
                       help="video score = mean over its 10 clips of the softmax (published) or of the logits")
    group.add_argument("--modality", default=None, choices=MODALITIES,
                       help="network input (rgb, res, or the flow component u / v read from --flow-root); "
                            "default: the modality the checkpoint was finetuned with")
    group.add_argument("--batch-size", type=int, default=4, help="videos per batch (each is 10 clips)")
    add_inference_amp_arg(group)
    group.add_argument("--output-dir", default="runs/test", help="test_results.json and confusion_matrix.png go here")
    group.add_argument("--dry-run", action="store_true",
                       help="print the resolved configuration as JSON and exit without reading data")
    add_backbone_args(parser)
    add_data_args(parser, training=False)
    defaults_from_checkpoint(parser, DATA_FALLBACKS)
    add_distributed_args(parser)
    return parser


def build_classifier(args: argparse.Namespace, ckpt: dict) -> VideoClassifier:
    """The finetuned classifier of --ckpt, every tensor checked by name and shape."""
    state = strip_ddp_prefix(ckpt["model"])
    if "fc.weight" not in state:
        raise CheckpointError(f"{args.ckpt} has no classifier layer (fc.weight): it is not a finetune.py checkpoint; "
                              "finetune a pretraining checkpoint with finetune.py first, or use retrieve.py for "
                              "feature retrieval")
    num_classes = state["fc.weight"].shape[0]
    model = VideoClassifier.build(args.net, args.base_width, num_classes)
    check_state_matches(model.state_dict(), state, "classifier", args.ckpt, ckpt,
                        f"--net {args.net} --base-width {args.base_width} classifier")
    model.load_state_dict(state)
    return model


def main(args: argparse.Namespace) -> dict | None:
    """Run the test; returns the contents of test_results.json (None for --dry-run)."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    check_writable(args.output_dir, create=False)  # before any work; rank 0 creates it after the inference
    ckpt = read_source(args)
    config = checkpoint_config(ckpt)
    inherit_flags(args, config, {**DATA_FALLBACKS, "modality": "rgb"})
    check_modality(args.modality, args.clip_input)
    return launch(args, get_args_parser(), lambda device: _test(args, device, ckpt),
                  saved_in=f"{Path(args.output_dir) / RESULTS_NAME} under \"config\"")


def _test(args: argparse.Namespace, device: torch.device, ckpt: dict) -> dict:
    args.amp = select_amp(args.amp, device)
    model = build_classifier(args, ckpt).to(device)
    dataset = build_dataset(args, args.test_split, EVAL, modality=args.modality, uint8=True)
    require_labels(dataset, "testing")
    num_classes = model.fc.out_features
    if dataset.num_classes != num_classes:
        raise LayoutError(f"--dataset {args.dataset} has {dataset.num_classes} classes but {args.ckpt} was "
                          f"finetuned for {num_classes}: test on the dataset it was finetuned on")
    scores = classify_videos(model, dataset, prepare=lambda x: prepare_input(x, args.modality),
                             aggregate=args.aggregate, batch_size=args.batch_size, workers=args.workers,
                             device=device, amp=args.amp)  # (N, K) on every process
    labels = dataset_labels(dataset)
    report = classification_report(scores, labels, dataset.class_names)
    top5 = ranked_classes(scores, 5)
    report["per_video"] = [
        {"video": record.frame_dir, "label": int(label), "prediction": int(best[0]), "top5": best.tolist(),
         "score": float(row[best[0]])}
        for record, label, best, row in zip(dataset.records, labels, top5, scores)]
    report.update(checkpoint=str(args.ckpt), checkpoint_epoch=ckpt.get("epoch"),
                  checkpoint_config=checkpoint_config(ckpt), split=args.test_split,
                  aggregate=args.aggregate,
                  class_names=dataset.class_names, git=git_revision(), config=config_to_dict(args))
    if is_main_process():
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / RESULTS_NAME, json.dumps(report, indent=1) + "\n")
        write_card(out / RESULTS_NAME)
        names = dataset.class_names if len(dataset.class_names) == num_classes else [str(i) for i in range(num_classes)]
        plot_confusion_matrix(np.array(report["confusion_matrix"]), names, out / "confusion_matrix.png")
        print(f"{report['num_videos']} videos: top1 {report['top1']:.2f}%  top5 {report['top5']:.2f}%  "
              f"mean class accuracy {report['mean_class_accuracy']:.2f}%  -> {out / RESULTS_NAME}", flush=True)
    return report


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
