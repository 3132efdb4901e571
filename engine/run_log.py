"""Run logs: configuration and git revision at start, tensorboard + JSON lines + a progress bar on rank 0, and
meters whose means are all-reduced across processes.

Files in OUTPUT_DIR: ``config.json`` (the resolved configuration plus the git revision),
``log.jsonl`` (one JSON object per line: per-iteration entries with ``"kind": "iter"`` and per-epoch
summaries with ``"kind": "epoch"``), ``tensorboard/`` (event files). A resumed run first drops what the
interrupted one logged after its checkpoint, so every step appears once (the epoch summary of an epoch
resumed mid-way averages only the iterations run after the restart).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import deque
from pathlib import Path

import torch

from utils.config import git_revision
from utils.distributed import all_reduce_mean, is_main_process
from utils.progress import progress_bar


class SmoothedValue:
    """A series of values: the median and mean over a recent window, and the mean over everything."""

    def __init__(self, window: int = 20):
        self.window = deque(maxlen=window)
        self.total = 0.0
        self.count = 0

    def update(self, value: float, n: int = 1) -> None:
        if math.isnan(value):  # a metric with nothing to measure in this batch (e.g. acc_rank_identity)
            return
        self.window.append(value)
        self.total += value * n
        self.count += n

    @property
    def median(self) -> float:
        return float(torch.tensor(list(self.window)).median()) if self.window else float("nan")

    @property
    def avg(self) -> float:
        return sum(self.window) / len(self.window) if self.window else float("nan")

    @property
    def global_avg(self) -> float:
        return self.total / self.count if self.count else float("nan")


class MetricLogger:
    """Named SmoothedValues; ``global_averages()`` is a collective that averages over processes."""

    def __init__(self, window: int = 20):
        self.window = window
        self.meters: dict[str, SmoothedValue] = {}

    def update(self, values: dict[str, float], n: int = 1) -> None:
        for name, value in values.items():
            self.meters.setdefault(name, SmoothedValue(self.window)).update(value, n)

    def global_averages(self) -> dict[str, float]:
        """Mean of each meter over the epoch and over processes (every rank must call this, with the
        same meter names)."""
        names = sorted(self.meters)
        if not names:
            return {}
        local = torch.tensor([self.meters[k].global_avg for k in names], dtype=torch.float64)
        return dict(zip(names, all_reduce_mean(local).tolist()))


class RunLogger:
    """Rank 0 writes tensorboard scalars, ``log.jsonl`` and a tqdm bar; other ranks do nothing."""

    def __init__(self, output_dir: str | os.PathLike, purge_step: int | None = None):
        self.output_dir = Path(output_dir)
        self.enabled = is_main_process()
        self.writer = None
        self.jsonl = None
        if self.enabled:
            from torch.utils.tensorboard import SummaryWriter  # slow import: rank 0 only

            self.output_dir.mkdir(parents=True, exist_ok=True)
            # purge_step drops events a killed run logged after its last checkpoint, so curves do not fold back
            self.writer = SummaryWriter(str(self.output_dir / "tensorboard"), purge_step=purge_step)
            if purge_step is not None:
                self._purge_jsonl(purge_step)
            self.jsonl = open(self.output_dir / "log.jsonl", "a")

    def _purge_jsonl(self, purge_step: int) -> None:
        """Drop the lines of steps >= purge_step, as tensorboard does with its events."""
        path = self.output_dir / "log.jsonl"
        if not path.is_file():
            return
        kept = [line for line in path.read_text().splitlines(keepends=True)
                if line.strip() and json.loads(line)["step"] < purge_step]
        tmp = path.with_name(".log.jsonl.tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)

    def start(self, config: dict) -> dict:
        """Write OUTPUT_DIR/config.json with the git revision; returns what was written. Nothing is printed:
        engine.launch.launch prints one line naming this file and the flags that differ from the defaults."""
        info = {"git": git_revision(), "config": config}
        if self.enabled:
            tmp = self.output_dir / ".config.json.tmp"
            tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, self.output_dir / "config.json")
        return info

    def log(self, kind: str, step: int, values: dict[str, float], **fields) -> None:
        """One JSON line ``{"kind", "step", **fields, **values}`` and tensorboard scalars ``kind/name``."""
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"kind": kind, "step": step, **fields, **values}) + "\n")
        self.jsonl.flush()
        for name, value in values.items():
            self.writer.add_scalar(f"{kind}/{name}", value, step)

    def progress(self, total: int, initial: int, desc: str):
        """A progress bar on rank 0 (utils.progress: tqdm on a terminal, plain lines in a log), None elsewhere."""
        if not self.enabled:
            return None
        return progress_bar(total, initial=initial, desc=desc, file=sys.stdout)

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
            self.jsonl.close()
            self.enabled = False
