"""Evaluation plumbing shared by finetune.py, test.py and retrieve.py.

- `run_inference`: one pass over a dataset, sharded across processes *without padding*
  (rank r takes rows r, r+W, ...), outputs written into a preallocated array, gathered with their row
  indices, and checked so that every video is counted exactly once (METHOD.md §7, §10).
- 10-clip aggregation, top-k, per-class accuracy and the confusion matrix.
- Retrieval: centring, L2 normalisation, cosine similarity and R@k.
- Plots (matplotlib, Agg): confusion matrix, retrieval examples, t-SNE (PCA fallback).

Ties are broken by index everywhere: among equal scores the lower class index (top-k) or the lower
gallery row (retrieval) ranks first. A stable sort makes this deterministic.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from utils.distributed import get_rank, get_world_size, is_dist, is_main_process
from utils.engine import autocast, quiet_worker
from utils.progress import progress_bar

RECALL_KS = (1, 5, 10, 20, 50)


# ---------------------------------------------------------------- sharded inference

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


def inherit_flags(args, config: dict, fallbacks: dict) -> None:
    """Flags left at None take the value recorded in a checkpoint's ``config``, else ``fallbacks``."""
    for name, fallback in fallbacks.items():
        if getattr(args, name, None) is None:
            setattr(args, name, config.get(name, fallback))


# ---------------------------------------------------------------- classification metrics

def aggregate_clips(logits: torch.Tensor, how: str = "softmax") -> torch.Tensor:
    """Video scores from clip logits (B, n_clips, K) -> (B, K): mean of the softmax over clips, or the
    mean of the logits with ``how="logits"``."""
    if how == "softmax":
        return logits.float().softmax(dim=-1).mean(dim=1)
    if how == "logits":
        return logits.float().mean(dim=1)
    raise ValueError(f"--aggregate {how!r}: choose softmax or logits")


def ranked_classes(scores: np.ndarray, k: int) -> np.ndarray:
    """The k best classes per row (N, K) -> (N, min(k, K)); ties go to the lower class index."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, ks=(1, 5)) -> dict[int, float]:
    """Fraction of rows whose label is among the top-k scores (k larger than K counts every class)."""
    best = ranked_classes(scores, max(ks))
    hits = best == labels[:, None]  # (N, min(max k, K))
    return {k: float(hits[:, :k].any(axis=1).mean()) for k in ks}


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts; row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Recall of each class from a confusion matrix; NaN for a class with no video."""
    totals = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(matrix) / np.maximum(totals, 1), np.nan)


def classification_report(scores: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    """top1 / top5 / mean class accuracy (percent), per-class accuracy and the confusion matrix."""
    if (labels < 0).any():
        raise ValueError(f"{int((labels < 0).sum())} videos have no label (-1): a classification test needs a "
                         "labelled split; check the CSV (frame_dir,num_frames,label)")
    num_classes = scores.shape[1]
    accuracy = topk_accuracy(scores, labels, (1, 5))
    matrix = confusion_matrix(ranked_classes(scores, 1)[:, 0], labels, num_classes)
    per_class = per_class_accuracy(matrix)
    names = class_names if len(class_names) == num_classes else [str(i) for i in range(num_classes)]
    return {
        "top1": 100 * accuracy[1],
        "top5": 100 * accuracy[5],
        "mean_class_accuracy": 100 * float(np.nanmean(per_class)) if np.isfinite(per_class).any() else float("nan"),
        "num_videos": int(len(labels)),
        "per_class_accuracy": {name: (None if np.isnan(a) else 100 * float(a)) for name, a in zip(names, per_class)},
        "confusion_matrix": matrix.tolist(),
    }


# ---------------------------------------------------------------- retrieval

def centre_and_normalise(features: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
    """Subtract ``mean`` (by default the set's own mean), then L2-normalise each row (a zero row stays zero)."""
    centred = features - (features.mean(axis=0, keepdims=True) if mean is None else mean)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return centred / np.maximum(norms, 1e-12)


def nearest_neighbours(queries: np.ndarray, gallery: np.ndarray, k: int, device: torch.device | None = None,
                       block_elements: int = 2**26, gallery_elements: int = 2**28) -> np.ndarray:
    """Rows of the k most cosine-similar gallery items per query (Q, min(k, G)), both sets already
    centred and normalised; ties go to the lower gallery row.

    Computed on ``device`` (the GPU when there is one) without ever holding the (Q, G) matrix or a
    Kinetics-size gallery there: the gallery goes up in chunks of about ``gallery_elements`` numbers (1 GB in
    fp32), each compared with blocks of queries of about ``block_elements`` similarities (256 MB), and every
    query keeps its best k so far. A stable sort keeps equal similarities in gallery order (topk does not
    promise it); the running best hold lower rows than the next chunk, so merging them stably keeps it too."""
    k = min(k, len(gallery))
    device = device or torch.device("cpu")
    chunk = max(k, gallery_elements // max(gallery.shape[1], 1))
    best_values = torch.empty(len(queries), 0, device=device)
    best_rows = torch.empty(len(queries), 0, dtype=torch.long, device=device)
    for first in range(0, len(gallery), chunk):
        keys = torch.from_numpy(np.ascontiguousarray(gallery[first:first + chunk])).to(device)  # (g, D)
        rows = max(1, block_elements // len(keys))
        merged_values, merged_rows = [], []
        for start in range(0, len(queries), rows):
            block = torch.from_numpy(np.ascontiguousarray(queries[start:start + rows])).to(device)  # (q, D)
            order = torch.sort(block @ keys.T, dim=1, descending=True, stable=True)  # (q, g)
            values = torch.cat([best_values[start:start + rows], order.values[:, :k]], dim=1)
            candidates = torch.cat([best_rows[start:start + rows], order.indices[:, :k] + first], dim=1)
            kept = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k]
            merged_values.append(values.gather(1, kept))
            merged_rows.append(candidates.gather(1, kept))
        best_values, best_rows = torch.cat(merged_values), torch.cat(merged_rows)
    return best_rows.cpu().numpy()


def recall_at_k(query_features: np.ndarray, query_labels: np.ndarray, gallery_features: np.ndarray,
                gallery_labels: np.ndarray, ks=RECALL_KS,
                device: torch.device | None = None) -> tuple[dict[str, float], np.ndarray]:
    """R@k in percent: a query is a hit when any of its k nearest gallery videos shares its class
    (k larger than the gallery uses the whole gallery). Each set is centred on its own mean and
    L2-normalised; similarity is the cosine. Also returns the neighbour rows (Q, min(max k, G))."""
    if len(query_features) == 0 or len(gallery_features) == 0:
        raise ValueError(f"retrieval needs queries and a gallery, got {len(query_features)} queries and "
                         f"{len(gallery_features)} gallery videos")
    neighbours = nearest_neighbours(centre_and_normalise(query_features), centre_and_normalise(gallery_features),
                                    max(ks), device)
    hits = gallery_labels[neighbours] == query_labels[:, None]  # (Q, k)
    return {f"R@{k}": 100 * float(hits[:, :k].any(axis=1).mean()) for k in ks}, neighbours


def knn_classify(query_features: np.ndarray, gallery_features: np.ndarray, gallery_labels: np.ndarray,
                 num_classes: int, k: int = 20, temperature: float = 0.07,
                 device: torch.device | None = None) -> np.ndarray:
    """Weighted k-nearest-neighbour class scores (Q, num_classes) of frozen features (METHOD.md §7).

    Both sets are centred on the gallery's mean (no statistics of the queries are used) and
    L2-normalised; each of a query's k most cosine-similar gallery videos votes for its class with
    weight exp(similarity / temperature), as in InstDisc and DINO."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"kNN needs k >= 1 and a positive temperature, got k={k}, temperature={temperature}")
    mean = gallery_features.mean(axis=0, keepdims=True)
    queries, gallery = centre_and_normalise(query_features, mean), centre_and_normalise(gallery_features, mean)
    neighbours = nearest_neighbours(queries, gallery, k, device)  # (Q, k)
    # the neighbours' similarities only: the (Q, G) matrix is never held whole
    similarity = np.einsum("qd,qkd->qk", queries, gallery[neighbours])  # (Q, k)
    weights = np.exp((similarity - 1.0) / temperature)  # shifted by the largest possible cosine: no overflow
    scores = np.zeros((len(queries), num_classes))
    np.add.at(scores, (np.arange(len(queries))[:, None], gallery_labels[neighbours]), weights)
    return scores


def linear_probe(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                 num_classes: int) -> np.ndarray:
    """Class scores (Q, num_classes) of a multinomial logistic regression fitted on frozen train features,
    each dimension standardised with the train split's statistics (L2 penalty C = 1, L-BFGS)."""
    from sklearn.linear_model import LogisticRegression

    mean, std = train_features.mean(axis=0), train_features.std(axis=0) + 1e-6
    model = LogisticRegression(C=1.0, max_iter=2000)  # L-BFGS draws nothing at random
    model.fit((train_features - mean) / std, train_labels)
    scores = np.full((len(test_features), num_classes), -np.inf)
    scores[:, model.classes_] = model.predict_log_proba((test_features - mean) / std)
    return scores


# ---------------------------------------------------------------- plots

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_confusion_matrix(matrix: np.ndarray, class_names: list[str], path: str | Path) -> None:
    plt = _pyplot()
    num_classes = len(matrix)
    side = min(4 + 0.25 * num_classes, 30)
    fig, ax = plt.subplots(figsize=(side, side))
    rows = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(matrix / rows, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(num_classes)
    if num_classes <= 60:
        ax.set_xticks(ticks, class_names, rotation=90, fontsize=7)
        ax.set_yticks(ticks, class_names, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix (row-normalised)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_retrieval_examples(query_frames: list[np.ndarray], neighbour_frames: list[list[np.ndarray]],
                            query_labels: list[str], neighbour_labels: list[list[str]], path: str | Path) -> None:
    """One row per query: its middle frame, then its nearest neighbours' (green title = same class)."""
    plt = _pyplot()
    rows, cols = len(query_frames), 1 + max(len(n) for n in neighbour_frames)
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 1.8 * rows), squeeze=False)
    for r in range(rows):
        axes[r, 0].imshow(query_frames[r])
        axes[r, 0].set_title(f"query: {query_labels[r]}", fontsize=7)
        for c, (frame, label) in enumerate(zip(neighbour_frames[r], neighbour_labels[r]), start=1):
            axes[r, c].imshow(frame)
            axes[r, c].set_title(f"{c}: {label}", fontsize=7,
                                 color="green" if label == query_labels[r] else "red")
        for ax in axes[r]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def embed_2d(features: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D embedding for a scatter plot: t-SNE when scikit-learn is present (PCA otherwise, for < 5 points, and for
    features that are all alike)."""
    centred = features - features.mean(axis=0)
    spread = float(np.abs(centred).max()) if centred.size else 0.0
    # scikit-learn 1.9's Barnes-Hut t-SNE crashes the process (a segfault) on identical or vanishingly close points,
    # the features of a collapsed network; t-SNE does not depend on the scale, so it sees them scaled to 1.
    # (A NaN spread goes on to scikit-learn, which names non-finite input in its error.)
    if len(features) >= 5 and spread != 0:
        try:
            from sklearn.manifold import TSNE
            from threadpoolctl import threadpool_limits
            perplexity = float(min(30, (len(features) - 1) / 3))
            # Small sets run single-threaded: OpenMP threads spinning next to torch's took 100x longer.
            with threadpool_limits(1 if len(features) < 1000 else None, user_api="openmp"):
                return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
                    centred / spread), "t-SNE"
        except ImportError:
            pass
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    points = centred @ vt[:2].T  # (N, <=2)
    return np.pad(points, ((0, 0), (0, 2 - points.shape[1]))), "PCA"


def plot_embedding(features: np.ndarray, labels: np.ndarray, class_names: list[str], path: str | Path,
                   title: str = "test features") -> str:
    """Scatter of a 2-D embedding coloured by class; returns the method used ("t-SNE" or "PCA")."""
    plt = _pyplot()
    points, method = embed_2d(features)
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab20" if len(class_names) > 10 else "tab10")
    for c in np.unique(labels):
        mask = labels == c
        name = class_names[c] if 0 <= c < len(class_names) else str(c)
        ax.scatter(points[mask, 0], points[mask, 1], s=12, color=cmap(int(c) % cmap.N), label=name)
    if len(class_names) <= 20:
        ax.legend(fontsize=7, markerscale=1.5, loc="best")
    ax.set_title(f"{method} of {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return method
