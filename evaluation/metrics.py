"""Evaluation metrics of finetune.py, test.py and retrieve.py.

- 10-clip aggregation, top-k, per-class accuracy and the confusion matrix.
- Retrieval: centring, L2 normalisation, cosine similarity, R@k and kNN from one nearest-neighbour search.
- The linear probe on frozen features (L-BFGS in torch).

Ties are broken by index everywhere: among equal scores the lower class index (top-k) or the lower
gallery row (retrieval) ranks first, as a stable sort orders them (retrieval finds them by topk and sorts
only where a tie straddles the k-th place, ``best_of_rows``).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

RECALL_KS = (1, 5, 10, 20, 50)


# ---------------------------------------------------------------- classification

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


@contextmanager
def full_fp32_matmul():
    """float32 matmuls in full precision inside the block, whatever ``configure_kernels`` chose: TF32 keeps 10
    bits of mantissa, enough to reorder near neighbours and to move a linear probe away from scikit-learn's."""
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision = before


# Candidates taken beyond the k best, so that a group of equal similarities straddling the k-th place is
# usually resolved among them rather than by a full sort of the row.
TIE_MARGIN = 16


def best_of_rows(similarity: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries of each row of ``similarity`` (q, g) and their columns, (q, k) each, in the order of
    a stable descending sort: by value, equal values by the lower column.

    ``torch.topk`` promises no order among equal values, so it takes k + TIE_MARGIN candidates, which are put
    in (value, column) order. That is the stable sort's answer whenever the last candidate is smaller than the
    k-th: every entry at least as large as the k-th is then a candidate. A row where it is not (a run of equal
    values reaching past the candidates, or a NaN) is sorted in full."""
    width = similarity.shape[1]
    if k + TIE_MARGIN >= width:
        order = torch.sort(similarity, dim=1, descending=True, stable=True)
        return order.values[:, :k], order.indices[:, :k]
    values, columns = torch.topk(similarity, k + TIE_MARGIN, dim=1)  # by value, ties in no promised order
    unsafe = ~(values[:, -1] < values[:, k - 1])  # (q,)
    columns, by_column = torch.sort(columns, dim=1)
    values = values.gather(1, by_column)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k]
    values, columns = values.gather(1, order), columns.gather(1, order)
    if unsafe.any():
        rows = unsafe.nonzero()[:, 0]
        full = torch.sort(similarity[rows], dim=1, descending=True, stable=True)
        values[rows], columns[rows] = full.values[:, :k], full.indices[:, :k]
    return values, columns


def search(queries: np.ndarray, gallery: np.ndarray, k: int, device: torch.device | None = None,
           block_elements: int = 2**26, gallery_elements: int = 2**28) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the k most cosine-similar gallery items per query and their similarities, (Q, min(k, G)) each,
    both sets already centred and normalised; ties go to the lower gallery row.

    Computed on ``device`` (the GPU when there is one) without ever holding the (Q, G) matrix or a
    Kinetics-size gallery there: the gallery goes up in chunks of about ``gallery_elements`` numbers (1 GB in
    fp32), each compared with blocks of queries of about ``block_elements`` similarities (256 MB), and every
    query keeps its best k so far (``best_of_rows``: the order of a stable sort, by topk). The running best hold
    lower rows than the next chunk, so merging them by a stable sort keeps equal similarities in gallery order."""
    k = min(k, len(gallery))
    device = device or torch.device("cpu")
    chunk = max(k, gallery_elements // max(gallery.shape[1], 1))
    best_values = torch.empty(len(queries), 0, dtype=torch.from_numpy(queries[:0]).dtype, device=device)
    best_rows = torch.empty(len(queries), 0, dtype=torch.long, device=device)
    with full_fp32_matmul():
        for first in range(0, len(gallery), chunk):
            keys = torch.from_numpy(np.ascontiguousarray(gallery[first:first + chunk])).to(device)  # (g, D)
            rows = max(1, block_elements // len(keys))
            merged_values, merged_rows = [], []
            for start in range(0, len(queries), rows):
                block = torch.from_numpy(np.ascontiguousarray(queries[start:start + rows])).to(device)  # (q, D)
                chunk_values, chunk_rows = best_of_rows(block @ keys.T, k)  # (q, k)
                values = torch.cat([best_values[start:start + rows], chunk_values], dim=1)
                candidates = torch.cat([best_rows[start:start + rows], chunk_rows + first], dim=1)
                kept = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k]
                merged_values.append(values.gather(1, kept))
                merged_rows.append(candidates.gather(1, kept))
            best_values, best_rows = torch.cat(merged_values), torch.cat(merged_rows)
    return best_rows.cpu().numpy(), best_values.cpu().numpy()


def nearest_neighbours(queries: np.ndarray, gallery: np.ndarray, k: int, device: torch.device | None = None,
                       block_elements: int = 2**26, gallery_elements: int = 2**28) -> np.ndarray:
    """The rows of ``search``: (Q, min(k, G)) gallery rows per query, nearest first, ties to the lower row."""
    return search(queries, gallery, k, device, block_elements, gallery_elements)[0]


def _check_sets(query_features: np.ndarray, gallery_features: np.ndarray) -> None:
    if len(query_features) == 0 or len(gallery_features) == 0:
        raise ValueError(f"retrieval needs queries and a gallery, got {len(query_features)} queries and "
                         f"{len(gallery_features)} gallery videos")


def _check_knn(k: int, temperature: float) -> None:
    if k < 1 or temperature <= 0:
        raise ValueError(f"kNN needs k >= 1 and a positive temperature, got k={k}, temperature={temperature}")


def _recall(neighbours: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray, ks) -> dict[str, float]:
    hits = gallery_labels[neighbours] == query_labels[:, None]  # (Q, k)
    return {f"R@{k}": 100 * float(hits[:, :k].any(axis=1).mean()) for k in ks}


def _knn_votes(neighbours: np.ndarray, similarity: np.ndarray, gallery_labels: np.ndarray, num_classes: int,
               temperature: float) -> np.ndarray:
    """Class scores (Q, num_classes) from each query's neighbours (Q, k) and their cosine similarities (Q, k)."""
    weights = np.exp((similarity.astype(np.float64) - 1.0) / temperature)  # shifted by the largest cosine: no overflow
    scores = np.zeros((len(neighbours), num_classes))
    np.add.at(scores, (np.arange(len(neighbours))[:, None], gallery_labels[neighbours]), weights)
    return scores


def recall_at_k(query_features: np.ndarray, query_labels: np.ndarray, gallery_features: np.ndarray,
                gallery_labels: np.ndarray, ks=RECALL_KS,
                device: torch.device | None = None) -> tuple[dict[str, float], np.ndarray]:
    """R@k in percent: a query is a hit when any of its k nearest gallery videos shares its class
    (k larger than the gallery uses the whole gallery). Each set is centred on its own mean and
    L2-normalised; similarity is the cosine. Also returns the neighbour rows (Q, min(max k, G))."""
    _check_sets(query_features, gallery_features)
    neighbours = nearest_neighbours(centre_and_normalise(query_features), centre_and_normalise(gallery_features),
                                    max(ks), device)
    return _recall(neighbours, query_labels, gallery_labels, ks), neighbours


def knn_classify(query_features: np.ndarray, gallery_features: np.ndarray, gallery_labels: np.ndarray,
                 num_classes: int, k: int = 20, temperature: float = 0.07,
                 device: torch.device | None = None) -> np.ndarray:
    """Weighted k-nearest-neighbour class scores (Q, num_classes) of frozen features (METHOD.md §7).

    Both sets are centred on the gallery's mean (no statistics of the queries are used) and
    L2-normalised; each of a query's k most cosine-similar gallery videos votes for its class with
    weight exp(similarity / temperature), as in InstDisc and DINO."""
    _check_knn(k, temperature)
    mean = gallery_features.mean(axis=0, keepdims=True)
    queries, gallery = centre_and_normalise(query_features, mean), centre_and_normalise(gallery_features, mean)
    neighbours, similarity = search(queries, gallery, k, device)  # (Q, k) each; the (Q, G) matrix is never held
    return _knn_votes(neighbours, similarity, gallery_labels, num_classes, temperature)


def recall_and_knn(query_features: np.ndarray, query_labels: np.ndarray, gallery_features: np.ndarray,
                   gallery_labels: np.ndarray, num_classes: int, ks=RECALL_KS, knn_k: int = 20,
                   temperature: float = 0.07, device: torch.device | None = None
                   ) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """``recall_at_k`` and ``knn_classify`` from one search: (R@k, the R@k neighbour rows, kNN scores).

    The two protocols centre the queries differently (R@k on the queries' own mean, kNN on the gallery's), so
    their similarities differ and neither ranking can be read off the other. What they share is the gallery:
    both centre it on its own mean, so it is centred, normalised, sent to the device and compared once, with
    the two query sets stacked into one pass; each keeps the max(k) nearest rows, which begin with its own
    protocol's fewer (the order is total)."""
    _check_sets(query_features, gallery_features)
    _check_knn(knn_k, temperature)
    mean = gallery_features.mean(axis=0, keepdims=True)
    gallery = centre_and_normalise(gallery_features, mean)
    stacked = np.concatenate([centre_and_normalise(query_features), centre_and_normalise(query_features, mean)])
    rows, similarity = search(stacked, gallery, max(*ks, knn_k), device)  # (2Q, k) each
    count = len(query_features)
    neighbours = rows[:count, :max(ks)]
    scores = _knn_votes(rows[count:, :knn_k], similarity[count:, :knn_k], gallery_labels, num_classes, temperature)
    return _recall(neighbours, query_labels, gallery_labels, ks), neighbours, scores


# The probe's stopping rule: the largest gradient entry of the objective below this. scikit-learn stops at 1e-4,
# which with hundreds of classes (each class's gradient is about 1/classes of the whole) leaves the solution
# short of the optimum by a path-dependent margin (a point of accuracy at 24k x 400 with 400 classes); 1e-6
# reaches the optimum that scikit-learn approaches with its tol lowered (docs/evaluation.md).
PROBE_TOLERANCE = 1e-6
PROBE_MAX_ITERATIONS = 2000  # as the former scikit-learn probe's max_iter
# Below this many multiply-adds per evaluation (n·D·K; the miniature's probe has 7·10^5) the CPU solver runs on one
# thread: hundreds of evaluations of a few milliseconds each spend more in waking threads than in arithmetic, and
# on a loaded machine the spinning made a 0.1 s fit take up to 9 s.
PROBE_SINGLE_THREAD_WORK = 2**24


@contextmanager
def cpu_threads(count: int | None):
    """torch's CPU threads set to ``count`` inside the block (None: unchanged)."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def linear_probe(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                 num_classes: int, device: torch.device | None = None) -> np.ndarray:
    """Log-probabilities (Q, num_classes) of a multinomial logistic regression fitted on frozen train features,
    each dimension standardised with the train split's statistics (L2 penalty C = 1); -inf for a class without
    training videos.

    scikit-learn's LogisticRegression(C=1) objective: the mean cross-entropy plus ||W||² / (2·C·n), the
    intercepts unpenalised. It is minimised by full-batch L-BFGS (strong Wolfe line search, 10 corrections, as
    scipy's) on ``device``, in float32 with the gradient written by hand (two matrix products per evaluation)."""
    classes, targets = np.unique(train_labels, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"the linear probe needs training videos of at least 2 classes, got {len(classes)}")
    if not np.isfinite(train_features).all():
        raise ValueError("the linear probe's training features hold NaN or infinity: the backbone produced non-finite "
                         "features (check the checkpoint, or extract them with --amp none)")
    device = device or torch.device("cpu")
    mean, std = train_features.mean(axis=0), train_features.std(axis=0) + 1e-6
    x = torch.from_numpy(np.ascontiguousarray((train_features - mean) / std, dtype=np.float32)).to(device)
    y = torch.from_numpy(targets.astype(np.int64)).to(device)
    n = len(x)
    weight = torch.zeros(len(classes), x.shape[1], device=device)  # (K, D)
    bias = torch.zeros(len(classes), device=device)  # (K,)
    penalty = 1.0 / n  # 1 / (C n), C = 1
    rows = torch.arange(n, device=device)

    def objective() -> torch.Tensor:
        logits = torch.addmm(bias, x, weight.T)  # (n, K)
        picked = logits[rows, y]
        top = logits.amax(dim=1, keepdim=True)
        probabilities = logits.sub_(top).exp_()  # in place: one (n, K) buffer
        total = probabilities.sum(dim=1)
        loss = (total.log() + top[:, 0] - picked).double().mean() + 0.5 * penalty * weight.double().square().sum()
        probabilities /= total[:, None]
        probabilities[rows, y] -= 1  # d(cross-entropy)/d(logits) · n
        probabilities /= n
        weight.grad = torch.addmm(weight, probabilities.T, x, beta=penalty)
        bias.grad = probabilities.sum(dim=0)
        return loss

    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=PROBE_MAX_ITERATIONS,
                                  max_eval=2 * PROBE_MAX_ITERATIONS, tolerance_grad=PROBE_TOLERANCE,
                                  history_size=10, line_search_fn="strong_wolfe")
    small = device.type == "cpu" and x.numel() * len(classes) < PROBE_SINGLE_THREAD_WORK
    with full_fp32_matmul(), cpu_threads(1 if small else None):
        optimizer.step(objective)
        test = torch.from_numpy(np.ascontiguousarray((test_features - mean) / std, dtype=np.float32)).to(device)
        log_probabilities = torch.addmm(bias, test, weight.T).log_softmax(dim=1)
    scores = np.full((len(test_features), num_classes), -np.inf)
    scores[:, classes] = log_probabilities.double().cpu().numpy()
    return scores
