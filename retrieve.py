"""Nearest-neighbour video retrieval with pretrained features, no finetuning (METHOD.md §6-7).

    python retrieve.py --dataset ucf101 --ckpt runs/dualvar_ucf101/epoch189.pth --output-dir runs/retrieval
    python retrieve.py ... --layer conv5 --merge       # IIC's features: max-pooled conv5, RGB + view 2
    python retrieve.py ... --init-from iic_r3d.pth --net r3d   # a VCOP / IIC / DualVar release

Every video of the train split (gallery) and of the test split (queries) gives 10 evenly spaced centre
clips (stride --stride); its feature is the mean of the clips' backbone features. Each set is centred
on its own mean and L2-normalised; a query is a hit at k when one of its k most cosine-similar gallery
videos has its class. Writes OUTPUT_DIR/retrieval.json (R@1 ... R@50 in percent), the features
(features_train.npz, features_test.npz: features, labels, video_ids), retrieval_examples.png and
tsne_test.png.

With --merge the second half of each feature comes from IIC's view 2 through the same backbone:
--merge-modality res (residual frames of the RGB clips) or u / v (the clips of that optical-flow
component, read from --flow-root, same clip positions and crops), by default the --modality the
checkpoint was pretrained with (res for checkpoints without one).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from dataset.build import build_dataset, require_labels
from dataset.clip_input import FLOW_MODALITIES
from dataset.flags import CLIP_FALLBACKS, add_data_args, defaults_from_checkpoint
from dataset.recipes import EVAL
from engine.card import write_card
from engine.launch import launch, run_cli
from engine.output_dir import check_writable
from evaluation.inference import dataset_labels, run_inference
from evaluation.metrics import RECALL_KS, centre_and_normalise, linear_probe, recall_and_knn, topk_accuracy
from evaluation.plots import plot_embedding, plot_retrieval_examples
from model.backbones import build_backbone
from model.features import LAYERS, video_features
from model.references import REFERENCES
from model.weights import add_backbone_args, check_one_source, checkpoint_config, load_weights, read_source
from utils.atomic import write_text
from utils.config import config_to_dict, git_revision, inherit_flags
from utils.distributed import add_distributed_args, is_main_process
from utils.precision import add_inference_amp_arg, select_amp

MERGE_MODALITIES = ("res", "u", "v")
NUM_NEIGHBOURS_SHOWN = 5


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Video retrieval with the features of a pretrained backbone",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    group = parser.add_argument_group("retrieval")
    group.add_argument("--ckpt", default=None,
                       help="checkpoint whose backbone gives the features (train_ssl.py's, or a finetune.py one); "
                            "or a no-learning reference (model/references.py): 'colour-stats', each clip's "
                            "per-channel mean and standard deviation (6 numbers, METHOD.md §1.4), or 'motion-stats', "
                            "10 statistics of its optical flow; required unless --init-from is given")
    group.add_argument("--init-from", default=None, metavar="PATH",
                       help="instead of --ckpt: a checkpoint of the VCOP family (VCOP, IIC, DualVar, PRP, Pace, ...) "
                            "whose r3d / r21d / c3d backbone gives the features; pass its --net")
    group.add_argument("--layer", default="pool", choices=LAYERS,
                       help="pool: global average of the last feature map (DualVar); conv5: the last feature map "
                            "max-pooled by (1, 2, 2) and flattened (IIC)")
    group.add_argument("--merge", action="store_true",
                       help="concatenate the RGB features with those of IIC's view 2 (--merge-modality) through "
                            "the same backbone")
    group.add_argument("--merge-modality", default=None, choices=MERGE_MODALITIES,
                       help="view 2 of --merge: res = residual frames (x_t - x_{t-1} + 1) / 2, u / v = that "
                            "optical-flow component (from --flow-root); default: the checkpoint's --modality if it "
                            "is one of these, else res")
    group.add_argument("--batch-size", type=int, default=4, help="videos per batch (each is 10 clips)")
    add_inference_amp_arg(group)
    group.add_argument("--knn-k", type=int, default=20,
                       help="neighbours that vote in the kNN classification (train split votes for test videos)")
    group.add_argument("--knn-temperature", type=float, default=0.07,
                       help="kNN vote weight exp(cosine / temperature)")
    group.add_argument("--num-examples", type=int, default=6,
                       help="queries shown with their top-5 neighbours in retrieval_examples.png (0: no PNG)")
    group.add_argument("--no-tsne", action="store_true", help="skip the t-SNE plot of the test features")
    group.add_argument("--output-dir", default="runs/retrieval",
                       help="retrieval.json, features_{train,test}.npz and the PNGs go here")
    group.add_argument("--dry-run", action="store_true",
                       help="print the resolved configuration as JSON and exit without reading data")
    add_backbone_args(parser)
    add_data_args(parser, training=False)
    # stride 4 is DualVar's retrieval setting (METHOD.md §2); the clip size follows the checkpoint
    parser.set_defaults(stride=4)
    defaults_from_checkpoint(parser, CLIP_FALLBACKS)
    add_distributed_args(parser)
    return parser


def main(args: argparse.Namespace) -> dict | None:
    """Run the retrieval; returns the contents of retrieval.json on rank 0 (None for --dry-run and on other ranks)."""
    for flag in ("batch_size", "num_examples"):
        if getattr(args, flag) < (1 if flag == "batch_size" else 0):
            raise ValueError(f"--{flag.replace('_', '-')} is too small: {getattr(args, flag)}")
    if args.knn_k < 1 or args.knn_temperature <= 0:
        raise ValueError(f"--knn-k must be >= 1 and --knn-temperature > 0, got {args.knn_k} and {args.knn_temperature}")
    check_one_source(args)
    check_writable(args.output_dir, create=False)  # before any work; rank 0 creates it after the inference
    # a foreign checkpoint and the no-learning references record no configuration: the flags and their fallbacks decide
    ckpt = read_source(args, no_checkpoint=tuple(REFERENCES))
    inherit_flags(args, checkpoint_config(ckpt), CLIP_FALLBACKS)
    if args.clip_input != "rgb" and (args.merge or args.ckpt in REFERENCES):
        raise ValueError(f"--clip-input {args.clip_input} feeds a network frame differences; "
                         f"{'--merge' if args.merge else '--ckpt ' + args.ckpt} needs RGB clips: use --clip-input rgb")
    if args.merge_modality is None:
        pretrained_with = checkpoint_config(ckpt).get("modality")
        args.merge_modality = pretrained_with if pretrained_with in MERGE_MODALITIES else "res"
    return launch(args, get_args_parser(), lambda device: _retrieve(args, device, ckpt),
                  saved_in=f"{Path(args.output_dir) / 'retrieval.json'} under \"config\"")


def _retrieve(args: argparse.Namespace, device: torch.device, ckpt: dict) -> dict | None:
    args.amp = select_amp(args.amp, device)
    if args.ckpt in REFERENCES:
        backbone, loaded, kind = REFERENCES[args.ckpt](), 0, "no-learning reference"
    else:
        backbone, _ = build_backbone(args.net, args.base_width)
        loaded, kind = load_weights(backbone, args, ckpt)
    backbone.to(device).eval()
    gallery_set = build_dataset(args, "trainval", EVAL, modality="rgb", uint8=True)
    query_set = build_dataset(args, "test", EVAL, modality="rgb", uint8=True)
    for dataset in (gallery_set, query_set):
        require_labels(dataset, "retrieval")
    # a flow view 2 comes from datasets of flow clips (same rows, clip positions and crops)
    merge_flow = args.merge and args.merge_modality in FLOW_MODALITIES
    flow_sets = [build_dataset(args, split, EVAL, modality=args.merge_modality, uint8=True)
                 for split in ("trainval", "test")] if merge_flow else []
    if is_main_process():
        print(f"loaded {loaded} backbone tensors from {args.ckpt or args.init_from} ({kind}); "
              f"{len(gallery_set)} gallery and {len(query_set)} query videos", flush=True)

    def extract(dataset, batch: dict, merge_residual: bool) -> torch.Tensor:
        return video_features(backbone, dataset.to_device(batch, device)["clips"], args.layer, merge_residual)

    def features(dataset, desc: str, merge_residual: bool) -> np.ndarray:
        return run_inference(lambda batch: extract(dataset, batch, merge_residual), dataset, desc=desc,
                             batch_size=args.batch_size, workers=args.workers, device=device, amp=args.amp,
                             everywhere=False)  # rank 0 only: the other ranks have nothing left to do

    merge_residual = args.merge and args.merge_modality == "res"
    gallery = features(gallery_set, "gallery (train)", merge_residual)  # (G, D)
    queries = features(query_set, "queries (test)", merge_residual)  # (Q, D)
    if merge_flow:  # the mean over clips commutes with concatenation: RGB half, then flow half
        gallery = np.concatenate([gallery, features(flow_sets[0], "gallery flow", False)], axis=1)  # (G, 2D)
        queries = np.concatenate([queries, features(flow_sets[1], "queries flow", False)], axis=1)  # (Q, 2D)
    if not is_main_process():
        return None
    gallery_labels, query_labels = dataset_labels(gallery_set), dataset_labels(query_set)
    num_classes = max(query_set.num_classes, int(gallery_labels.max()) + 1, int(query_labels.max()) + 1)
    recall, neighbours, knn_scores = recall_and_knn(queries, query_labels, gallery, gallery_labels, num_classes,
                                                    RECALL_KS, args.knn_k, args.knn_temperature, device)
    probe_scores = linear_probe(gallery, gallery_labels, queries, num_classes, device)
    results = {**recall, "knn_top1": 100 * topk_accuracy(knn_scores, query_labels, (1,))[1],
               "linear_probe_top1": 100 * topk_accuracy(probe_scores, query_labels, (1,))[1],
               "knn": {"k": args.knn_k, "temperature": args.knn_temperature},
               "num_queries": len(queries), "num_gallery": len(gallery), "feature_dim": gallery.shape[1],
               "layer": args.layer, "merge": args.merge, "merge_modality": args.merge_modality if args.merge else None,
               "checkpoint": str(args.ckpt or args.init_from), "checkpoint_epoch": ckpt.get("epoch"),
               "checkpoint_config": checkpoint_config(ckpt),
               "checkpoint_kind": kind,
               "loaded_tensors": loaded, "git": git_revision(), "config": config_to_dict(args)}
    write_outputs(args, results, gallery_set, query_set, gallery, queries, neighbours)
    return results


def write_outputs(args, results, gallery_set, query_set, gallery, queries, neighbours) -> None:
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, dataset, features in (("train", gallery_set, gallery), ("test", query_set, queries)):
        np.savez(out / f"features_{name}.npz", features=features, labels=dataset_labels(dataset),
                 video_ids=np.array([r.frame_dir for r in dataset.records]))
    if args.num_examples:
        plot_examples(query_set, gallery_set, neighbours, args.num_examples, out / "retrieval_examples.png")
    if not args.no_tsne:
        results["embedding_plot"] = plot_embedding(centre_and_normalise(queries), dataset_labels(query_set),
                                                   query_set.class_names, out / "tsne_test.png",
                                                   title="test-split features (centred, normalised)")
    write_text(out / "retrieval.json", json.dumps(results, indent=2) + "\n")
    write_card(out / "retrieval.json")
    print("  ".join(f"R@{k} {results[f'R@{k}']:.2f}" for k in RECALL_KS) +
          f"  kNN top-1 {results['knn_top1']:.2f}  linear probe top-1 {results['linear_probe_top1']:.2f}" +
          f"  ({results['num_queries']} queries, {results['num_gallery']} gallery videos) -> {out}", flush=True)


def middle_frame(dataset, row: int) -> np.ndarray:
    """(H, W, 3) uint8 middle frame of video ``row``, from its frame folder or video file."""
    record = dataset.records[row]
    return dataset.frames(record, np.array([record.num_frames // 2]))[0].permute(1, 2, 0).numpy()


def plot_examples(query_set, gallery_set, neighbours: np.ndarray, count: int, path: Path) -> None:
    """Evenly spaced queries with their nearest gallery videos (one middle frame each)."""
    rows = np.unique(np.linspace(0, len(query_set) - 1, min(count, len(query_set))).astype(int))

    def class_name(dataset, row):
        label = dataset.records[row].label
        return dataset.class_names[label] if 0 <= label < len(dataset.class_names) else str(label)

    shown = [neighbours[q, :NUM_NEIGHBOURS_SHOWN] for q in rows]
    plot_retrieval_examples([middle_frame(query_set, q) for q in rows],
                            [[middle_frame(gallery_set, g) for g in n] for n in shown],
                            [class_name(query_set, q) for q in rows],
                            [[class_name(gallery_set, g) for g in n] for n in shown], path)


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
