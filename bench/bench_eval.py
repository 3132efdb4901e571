"""Frozen-feature evaluation at Kinetics-400 scale, the former path against the current one; prints one JSON line.

    python bench/bench_eval.py            # the UCF101 shape, then the K400 shape (10 min on 2 busy cores)
    python bench/bench_eval.py --quick    # the UCF101 shape, and the K400 shape on fewer queries (2.5 min)
    python bench/bench_eval.py --device cuda

Features are synthetic and clustered (class centres plus noise, each video's feature non-negative as pooled ReLU
maps are; the JSON gives the kNN top-1 they reach, about 70 % at the K400 shape) at two shapes: ``k400`` (240,000 train videos x 400-d, 20,000 queries, 400
classes) and ``ucf101`` (9,537 x 512, 3,783 queries, 101 classes). What retrieve.py does with them:

- neighbours for R@k (k = 50; each set centred on its own mean) and for kNN (k = 20; both on the train mean).
  ``former``: two searches, each sorting every row of similarities in full (the code before issue 26, kept
  below as the reference), and the kNN weights looked up again from the gallery rows. ``current``: one pass over
  the gallery with both query sets stacked, topk with the stable sort's tie rule (utils.metrics.recall_and_knn).
  At the K400 shape the former path runs on ``--former-queries`` queries (its cost grows linearly with the
  queries: every row is sorted alone), and the two paths are timed in turns on those queries
  (``speedup_same_queries``, the median of per-round ratios, bench/timing.alternate); the current path also runs
  on every query, and ``speedup`` compares it with the former path extrapolated to every query. Both also report
  the fraction of queries whose neighbours agree exactly.
  Target: speedup >= 8 on the 2-core CPU.
- the linear probe: ``current`` is utils.metrics.linear_probe (L-BFGS in torch on --device, run to its own
  stopping rule); ``former`` is scikit-learn's LogisticRegression(C=1, max_iter=2000) on the same standardised
  features, run in full at the UCF101 shape and, at the K400 shape, for ``--former-probe-iterations`` iterations
  only (an hour or more in full), which gives its seconds per iteration. Target: the current probe <= 600 s at
  the K400 shape on the 2-core CPU.

Timings on a shared machine move with its load; each figure names the clock (wall) and the thread count.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

if not __package__:  # run as a file: the repository root is not on the path yet
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evaluation import metrics  # noqa: E402

from bench.timing import alternate, ratio  # noqa: E402

SHAPES = {  # train videos, queries, feature width, classes
    "ucf101": (9537, 3783, 512, 101),
    "k400": (240_000, 20_000, 400, 400),
}
RECALL_K, KNN_K, TEMPERATURE = 50, 20, 0.07


# ---------------------------------------------------------------- the former path (before issue 26), as reference

def former_nearest_neighbours(queries: np.ndarray, gallery: np.ndarray, k: int, device: torch.device,
                              block_elements: int = 2**26, gallery_elements: int = 2**28) -> np.ndarray:
    """Blocks of queries against chunks of the gallery, every similarity row sorted in full (stable)."""
    k = min(k, len(gallery))
    chunk = max(k, gallery_elements // max(gallery.shape[1], 1))
    best_values = torch.empty(len(queries), 0, device=device)
    best_rows = torch.empty(len(queries), 0, dtype=torch.long, device=device)
    for first in range(0, len(gallery), chunk):
        keys = torch.from_numpy(np.ascontiguousarray(gallery[first:first + chunk])).to(device)
        rows = max(1, block_elements // len(keys))
        merged_values, merged_rows = [], []
        for start in range(0, len(queries), rows):
            block = torch.from_numpy(np.ascontiguousarray(queries[start:start + rows])).to(device)
            order = torch.sort(block @ keys.T, dim=1, descending=True, stable=True)
            values = torch.cat([best_values[start:start + rows], order.values[:, :k]], dim=1)
            candidates = torch.cat([best_rows[start:start + rows], order.indices[:, :k] + first], dim=1)
            kept = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k]
            merged_values.append(values.gather(1, kept))
            merged_rows.append(candidates.gather(1, kept))
        best_values, best_rows = torch.cat(merged_values), torch.cat(merged_rows)
    return best_rows.cpu().numpy()


def former_neighbours(queries, query_labels, gallery, gallery_labels, num_classes, device):
    """R@k's search (own means) and kNN's (gallery mean) one after the other, as retrieve.py did."""
    recall_rows = former_nearest_neighbours(metrics.centre_and_normalise(queries),
                                            metrics.centre_and_normalise(gallery), RECALL_K, device)
    mean = gallery.mean(axis=0, keepdims=True)
    q, g = metrics.centre_and_normalise(queries, mean), metrics.centre_and_normalise(gallery, mean)
    knn_rows = former_nearest_neighbours(q, g, KNN_K, device)
    similarity = np.einsum("qd,qkd->qk", q, g[knn_rows])
    weights = np.exp((similarity - 1.0) / TEMPERATURE)
    scores = np.zeros((len(q), num_classes))
    np.add.at(scores, (np.arange(len(q))[:, None], gallery_labels[knn_rows]), weights)
    return recall_rows, scores


def current_neighbours(queries, query_labels, gallery, gallery_labels, num_classes, device):
    _, recall_rows, scores = metrics.recall_and_knn(queries, query_labels, gallery, gallery_labels, num_classes,
                                                       (RECALL_K,), KNN_K, TEMPERATURE, device)
    return recall_rows, scores


def former_probe(train, train_labels, test, max_iter: int) -> tuple[np.ndarray, int]:
    from sklearn.linear_model import LogisticRegression
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
    model = LogisticRegression(C=1.0, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a capped run warns that it did not converge: it is meant not to
        model.fit((train - mean) / std, train_labels)
    return model.predict((test - mean) / std), int(model.n_iter_[0])


# ---------------------------------------------------------------- features and measurements

def clustered_features(train: int, queries: int, dim: int, classes: int, seed: int = 0):
    """(train, dim) and (queries, dim) float32 features of ``classes`` clusters, with their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim), dtype=np.float32)

    def draw(n):
        labels = rng.integers(0, classes, n)
        noise = rng.standard_normal((n, dim), dtype=np.float32)
        noise *= 1.6
        noise += centres[labels]
        return np.abs(noise, out=noise), labels
    return (*draw(train), *draw(queries))


def timed(fn, *args):
    tic = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - tic, out


def same_rows(a: np.ndarray, b: np.ndarray) -> float:
    return round(float((a == b).all(axis=1).mean()), 6)


def bench_neighbours(gallery, gallery_labels, queries, query_labels, classes, former_queries, repeats, device):
    subset = slice(0, former_queries)
    sub = (queries[subset], query_labels[subset], gallery, gallery_labels, classes, device)
    outputs = {}

    def run(name, fn):
        def call():
            outputs[name] = fn(*sub)
        return call
    times = alternate({"former": run("former", former_neighbours), "current": run("current", current_neighbours)},
                      repeats=repeats, warmup=0)
    former_s = float(np.median(times["former"]))
    result = {"former_queries": former_queries, "former_s": round(former_s, 2),
              "current_s_same_queries": round(float(np.median(times["current"])), 2),
              "speedup_same_queries": ratio(times, "former", "current", 2),
              "recall_rows_agree": same_rows(outputs["former"][0], outputs["current"][0]),
              "knn_top1_agree": round(float((outputs["former"][1].argmax(1) == outputs["current"][1].argmax(1))
                                            .mean()), 6)}
    if former_queries < len(queries):
        current_s, (_, scores) = timed(current_neighbours, queries, query_labels, gallery, gallery_labels, classes,
                                       device)
        former_extrapolated = former_s * len(queries) / former_queries
        result.update(current_s=round(current_s, 2), former_s_extrapolated=round(former_extrapolated, 1),
                      speedup=round(former_extrapolated / current_s, 2))
    else:
        current_s, scores = result["current_s_same_queries"], outputs["current"][1]
        result.update(current_s=current_s, speedup=result["speedup_same_queries"]["median"])
    result["knn_top1"] = round(100 * float((scores.argmax(1) == query_labels).mean()), 2)
    result["target_speedup"] = 8
    return result


def bench_probe(train, train_labels, test, test_labels, classes, former_iterations, device):
    evaluations = []
    step = torch.optim.LBFGS.step

    def counting_step(self, closure):
        def counted():
            evaluations.append(1)
            return closure()
        return step(self, counted)
    torch.optim.LBFGS.step = counting_step
    try:
        current_s, scores = timed(metrics.linear_probe, train, train_labels, test, classes, device)
    finally:
        torch.optim.LBFGS.step = step
    current = scores.argmax(axis=1)
    former_s, (former, former_iters) = timed(former_probe, train, train_labels, test, former_iterations or 2000)
    result = {"current_s": round(current_s, 1), "current_evaluations": len(evaluations),
              "current_top1": round(100 * float((current == test_labels).mean()), 2),
              "former_s": round(former_s, 1), "former_iterations": former_iters,
              "former_capped": bool(former_iterations),
              "former_top1": round(100 * float((former == test_labels).mean()), 2),
              "predictions_agree": round(float((current == former).mean()), 4), "target_current_s": 600}
    if former_iterations:
        result["former_s_per_iteration"] = round(former_s / former_iters, 2)
        del result["predictions_agree"], result["former_top1"]  # a capped fit is no reference for accuracy
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--quick", action="store_true",
                        help="the K400 shape on 2,000 queries (the former path on 200) and its probe on 24,000 "
                             "train videos; the UCF101 shape in full")
    parser.add_argument("--former-queries", type=int, default=1000,
                        help="queries of the former search at the K400 shape (extrapolated to all)")
    parser.add_argument("--former-probe-iterations", type=int, default=10,
                        help="scikit-learn iterations at the K400 shape (0: run it to convergence, an hour or more)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the two searches at the UCF101 shape")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    report = {"bench": "eval_frozen_features", "device": str(device), "torch_threads": torch.get_num_threads(),
              "quick": args.quick, "shapes": {}}
    start = time.perf_counter()
    for name in args.shapes:
        train_n, query_n, dim, classes = SHAPES[name]
        large = name == "k400"
        if large and args.quick:
            query_n = 2000
        tic = time.perf_counter()
        gallery, gallery_labels, queries, query_labels = clustered_features(train_n, query_n, dim, classes)
        entry = {"train": train_n, "queries": query_n, "dim": dim, "classes": classes,
                 "features_s": round(time.perf_counter() - tic, 1)}
        former_queries = (200 if args.quick else args.former_queries) if large else query_n
        entry["neighbours"] = bench_neighbours(gallery, gallery_labels, queries, query_labels, classes,
                                               min(former_queries, query_n), 1 if large else args.repeats, device)
        probe_rows = 24_000 if large and args.quick else train_n
        entry["probe"] = bench_probe(gallery[:probe_rows], gallery_labels[:probe_rows], queries, query_labels,
                                     classes, args.former_probe_iterations if large else 0, device)
        entry["probe"]["train"] = probe_rows
        report["shapes"][name] = entry
    report["total_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
