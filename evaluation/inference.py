"""Inference over a data set, sharded across processes *without padding* (rank r takes rows r, r+W, ...): outputs
written into a preallocated array, gathered with their row indices, and checked so that every video is counted
exactly once (METHOD.md §7, §10); the 10-clip scores of a classifier."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from evaluation.metrics import aggregate_clips
from utils.distributed import get_rank, get_world_size, is_dist, is_main_process
from utils.precision import autocast
from utils.progress import progress_bar
from utils.workers import quiet_worker


class IncompleteEvaluationError(RuntimeError):
    """Some video was scored zero or several times; the message lists the rows."""


def shard_indices(num_items: int, rank: int, world_size: int) -> range:
    """Rows of this process: rank, rank + W, ...; shards differ in size by at most one, no padding."""
    return range(rank, num_items, world_size)


def eval_loader(dataset, batch_size: int, workers: int, pin_memory: bool = False) -> DataLoader:
    """This process's shard, in order, last partial batch kept."""
    shard = Subset(dataset, shard_indices(len(dataset), get_rank(), get_world_size()))
    return DataLoader(shard, batch_size=batch_size, shuffle=False, drop_last=False, num_workers=workers,
                      pin_memory=pin_memory, persistent_workers=False, worker_init_fn=quiet_worker)


def assemble(parts: list[tuple[np.ndarray, np.ndarray]], num_items: int) -> np.ndarray:
    """Rows ``(indices, values)`` of every process -> values ``(num_items, ...)`` in dataset order.

    Raises IncompleteEvaluationError unless every index in [0, num_items) appears exactly once.
    """
    indices = np.concatenate([p[0] for p in parts]).astype(np.int64)
    counts = np.bincount(indices, minlength=num_items) if len(indices) else np.zeros(num_items, np.int64)
    if len(counts) != num_items or (counts != 1).any():
        missing = np.flatnonzero(counts[:num_items] == 0)
        repeated = np.flatnonzero(counts[:num_items] > 1)
        raise IncompleteEvaluationError(
            f"evaluation covered {len(indices)} rows for {num_items} videos: missing rows {missing[:5].tolist()}, "
            f"repeated rows {repeated[:5].tolist()}, out-of-range rows {indices[indices >= num_items][:5].tolist()}")
    values = np.concatenate([p[1] for p in parts])
    out = np.empty_like(values)
    out[indices] = values
    return out


def gather_rows(indices: np.ndarray, values: np.ndarray, num_items: int) -> np.ndarray:
    """Collect every process's rows and assemble them (a collective; every rank gets the result)."""
    parts = [(indices, values)]
    if is_dist():
        parts = [None] * get_world_size()
        dist.all_gather_object(parts, (indices, values))
    return assemble(parts, num_items)


def gather_rows_to_main(indices: np.ndarray, values: np.ndarray, num_items: int) -> np.ndarray | None:
    """``gather_rows`` whose result only rank 0 receives (None elsewhere): for features too large to hold
    once per process (Kinetics-400's conv5 features are tens of GB)."""
    if not is_dist():
        return assemble([(indices, values)], num_items)
    parts = [None] * get_world_size() if is_main_process() else None
    dist.gather_object((indices, values), parts, dst=0)
    return assemble(parts, num_items) if is_main_process() else None


@torch.no_grad()
def run_inference(fn: Callable[[dict], torch.Tensor], dataset, *, batch_size: int, workers: int,
                  device: torch.device, amp: str = "none", desc: str = "eval",
                  timings: dict | None = None, everywhere: bool = True) -> np.ndarray | None:
    """``fn(batch) -> (B, D)`` over every item of ``dataset``; returns ``(len(dataset), D)`` float32 in
    dataset order on every process (on rank 0 only, None elsewhere, when not ``everywhere``).

    Each process writes its shard into one preallocated array (no Python lists of tensors). With
    ``timings`` the seconds spent inside ``fn`` are added under "model" and the whole pass under "total".
    """
    loader = eval_loader(dataset, batch_size, workers, pin_memory=device.type == "cuda")
    shard_size = len(loader.dataset)
    indices = np.empty(shard_size, dtype=np.int64)
    values = None  # (shard_size, D), allocated at the first batch when D is known
    filled = 0
    bar = None
    if is_main_process():
        bar = progress_bar(shard_size, desc=desc, leave=False)
    model_time = 0.0
    start = time.perf_counter()
    for batch in loader:
        tic = time.perf_counter()
        with autocast(amp, device):
            out = fn(batch)
        out = out.float().cpu().numpy()  # (B, D); the copy also waits for the device
        model_time += time.perf_counter() - tic
        if values is None:
            values = np.empty((shard_size, out.shape[1]), dtype=np.float32)
        n = len(out)
        values[filled:filled + n] = out
        indices[filled:filled + n] = torch.as_tensor(batch["index"]).numpy()
        filled += n
        if bar is not None:
            bar.update(n)
    if bar is not None:
        bar.close()
    if timings is not None:
        timings["model"] = timings.get("model", 0.0) + model_time
        timings["total"] = timings.get("total", 0.0) + time.perf_counter() - start
    if values is None:  # an empty shard (more processes than videos): agree on D with the others
        values = np.empty((0, _feature_dim_from_peers(None)), dtype=np.float32)
    elif is_dist():
        _feature_dim_from_peers(values.shape[1])
    gather = gather_rows if everywhere else gather_rows_to_main
    return gather(indices[:filled], values[:filled], len(dataset))


def _feature_dim_from_peers(dim: int | None) -> int:
    """The feature width, known to every process with a non-empty shard (rank 0 always has one)."""
    if not is_dist():
        return dim or 0
    dims = [None] * get_world_size()
    dist.all_gather_object(dims, dim)
    return next(d for d in dims if d is not None)


def classify_videos(model: torch.nn.Module, dataset, *, prepare: Callable[[torch.Tensor], torch.Tensor],
                    aggregate: str = "softmax", batch_size: int, workers: int, device: torch.device,
                    amp: str = "none", desc: str = "test") -> np.ndarray:
    """Video scores (N, K) of a classifier over a dataset of 10-clip items, in dataset order."""
    model.eval()

    def scores(batch: dict) -> torch.Tensor:
        # (B, n_clips, 3, T, H, W); a dataset that ships uint8 clips makes them float on the device
        clips = dataset.to_device(batch, device)["clips"] if hasattr(dataset, "to_device") \
            else batch["clips"].to(device, non_blocking=True)
        logits = model(prepare(clips.flatten(0, 1)))  # (B·n_clips, K)
        return aggregate_clips(logits.unflatten(0, clips.shape[:2]), aggregate)  # (B, K)

    return run_inference(scores, dataset, batch_size=batch_size, workers=workers, device=device, amp=amp, desc=desc)


def dataset_labels(dataset) -> np.ndarray:
    return np.array([r.label for r in dataset.records], dtype=np.int64)
