"""The splits a run reads: the official test split, and the train split whole ("trainval") or either side of the
hold-out that finetuning validates on ("train", "val"), drawn with a fixed seed."""

from __future__ import annotations

import numpy as np

from dataset.layout import VideoRecord, read_split_csv
from dataset.local_dataset import DatasetPaths

SPLITS = ("trainval", "train", "val", "test")
HOLDOUT_SEED = 666


def holdout_split(records: list[VideoRecord], val_size: float,
                  seed: int = HOLDOUT_SEED) -> tuple[list[VideoRecord], list[VideoRecord]]:
    """(train, val): ``val_size`` rows (a count, or a fraction when < 1) drawn without replacement
    with ``default_rng(seed)``; train keeps every other row, in CSV order. Disjoint, union = input."""
    count = int(round(val_size * len(records))) if val_size < 1 else int(val_size)
    if not 0 < count < len(records):
        raise ValueError(f"--val-size {val_size} must leave at least one video on each side of the hold-out; "
                         f"the train split has {len(records)} videos")
    val_rows = np.sort(np.random.default_rng(seed).choice(len(records), size=count, replace=False))
    is_val = np.zeros(len(records), dtype=bool)
    is_val[val_rows] = True
    return ([r for r, v in zip(records, is_val) if not v], [records[i] for i in val_rows])


def load_split(paths: DatasetPaths, split: str, k: int, val_size: float | None) -> list[VideoRecord]:
    """The records of ``split`` (one of SPLITS) of official split ``k``: test, or the train split whole (trainval)
    or either side of its hold-out (train, val)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if split == "test":
        return read_split_csv(paths.split_csv("test", k))
    records = read_split_csv(paths.split_csv("train", k))
    if split == "trainval":
        return records
    train, val = holdout_split(records, paths.default_val_size if val_size is None else val_size)
    return train if split == "train" else val
