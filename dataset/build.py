"""A run's dataset from the data flags: the registered data set or CSV folder, the split, the recipe, and the checks
that fail at the start of a run instead of hours in (labels, video files, frame counts)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dataset.clip_input import FLOW_MODALITIES
from dataset.frame_counts import check_frame_counts
from dataset.layout import LayoutError, VideoRecord, is_video_file
from dataset.local_dataset import resolve_dataset
from dataset.recipes import SamplingRecipe
from dataset.splits import load_split
from dataset.video_dataset import DEFAULT_MAX_BAD_VIDEOS, VideoFrameDataset


def build_dataset(args: argparse.Namespace, split: str, recipe: SamplingRecipe,
                  modality: str | None = None, uint8: bool = False) -> VideoFrameDataset:
    """The dataset of ``args.dataset`` (see dataset/flags.py) for ``split`` in SPLITS, its items made by ``recipe``.

    ``modality`` (one of MODALITIES) defaults to ``args.modality`` when the script has that flag (IIC's
    train_ssl.py), else "rgb"; a flow modality checks the flow root before any item is read. ``uint8``: clips
    as bytes, for a DataLoader whose batches go through ``dataset.to_device``.
    """
    modality = modality or getattr(args, "modality", None) or "rgb"
    paths = resolve_dataset(args.dataset, args.data_root, args.frame_root, args.csv_dir,
                            getattr(args, "flow_root", None), getattr(args, "video_root", None))
    records = load_split(paths, split, args.split, args.val_size)
    labels = [r.label for r in records]
    if paths.num_classes and max(labels) >= paths.num_classes:
        raise LayoutError(f"a label in the {split} CSV of {paths.csv_dir} is {max(labels)}, but the dataset has "
                          f"{paths.num_classes} classes; re-run process_data/src/write_csv.py")
    flow_root = paths.check_flow_root() if modality in FLOW_MODALITIES else None
    csv_path = paths.split_csv("test" if split == "test" else "train", args.split)
    dataset = VideoFrameDataset(
        records, paths.frame_root, recipe, class_names=paths.class_names, num_classes=paths.num_classes,
        seed=getattr(args, "seed", 0), num_frames=args.num_frames, stride=args.stride, size=args.size,
        resize=tuple(args.resize), resize_quirk=args.resize_quirk, per_frame_jitter=args.per_frame_jitter,
        modality=modality, flow_root=flow_root, hflip=not args.no_hflip, video_root=paths.video_root,
        max_bad_videos=getattr(args, "max_bad_videos", DEFAULT_MAX_BAD_VIDEOS), uint8=uint8,
        clip_input=getattr(args, "clip_input", None) or "rgb", csv_path=csv_path)
    check_video_files(records, paths.video_root, csv_path)
    check_frame_counts([r for r in records if not is_video_file(r.frame_dir)], paths.frame_root, csv_path)
    return dataset


def check_video_files(records: list[VideoRecord], video_root: Path | None, csv_path: Path | None = None) -> None:
    """Raise LayoutError unless every video row of the CSV names an existing file (one stat per video: their
    frame counts were checked by write_csv.py, and a video that fails to decode is handled while training)."""
    videos = [r for r in records if is_video_file(r.frame_dir)]
    if not videos:
        return
    missing = [r.path(video_root) for r in videos if not r.path(video_root).is_file()]
    if missing:
        raise LayoutError(f"{len(missing)} of the {len(videos)} videos that {csv_path or 'the CSV'} names do not "
                          f"exist, e.g. {missing[0]}: point --video-root at the folder that "
                          "process_data/src/write_csv.py --source video read, or re-run it")


def require_labels(dataset: VideoFrameDataset, purpose: str) -> None:
    """Raise LayoutError naming the CSV file and line of the first video without a class (a missing or
    negative label), which ``purpose`` (finetuning, testing, retrieval) cannot do without."""
    unlabelled = next((r for r in dataset.records if r.label < 0), None)
    if unlabelled is None:
        return
    csv_path = dataset.csv_path
    line = "?"
    if csv_path is not None and Path(csv_path).is_file():
        with open(csv_path) as f:
            line = next((n for n, text in enumerate(f, start=1)
                         if text.split(",", 1)[0].strip() == unlabelled.frame_dir), "?")
    count = sum(r.label < 0 for r in dataset.records)
    raise LayoutError(f"{csv_path or 'the split CSV'}:{line}: video {unlabelled.frame_dir} has no class label "
                      f"(a missing or negative third column; {count} such row(s)), but {purpose} needs the class of "
                      "every video: fix the CSV or re-create it with process_data/src/write_csv.py")
