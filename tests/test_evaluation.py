"""evaluation/: 10-clip aggregation, top-k and per-class accuracy, R@k with ties and k beyond the
gallery, and sharded inference that counts every video once (also with two real processes)."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_gloo_processes
from evaluation import inference, metrics
from evaluation.inference import IncompleteEvaluationError, assemble, run_inference, shard_indices
from evaluation.metrics import aggregate_clips, classification_report, recall_at_k, topk_accuracy


def softmax(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def test_ten_clip_aggregation_matches_a_hand_made_example():
    # One confident clip for class 0, two mild ones for class 1: the mean of the softmax picks class 1,
    # the mean of the logits class 0.
    clips = [[10.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 2.0, 0.0]]
    logits = torch.tensor([clips])  # (B=1, n_clips=3, K=3)
    expected = [sum(softmax(c)[k] for c in clips) / 3 for k in range(3)]
    probabilities = aggregate_clips(logits, "softmax")
    torch.testing.assert_close(probabilities, torch.tensor([expected]))
    assert probabilities.argmax().item() == 1
    torch.testing.assert_close(aggregate_clips(logits, "logits"), torch.tensor([[10 / 3, 4 / 3, 0.0]]))
    assert aggregate_clips(logits, "logits").argmax().item() == 0
    with pytest.raises(ValueError, match="--aggregate"):
        aggregate_clips(logits, "max")


def test_topk_ties_go_to_the_lower_class_and_k_beyond_the_classes_counts_all():
    scores = np.array([[0.4, 0.4, 0.2], [0.1, 0.2, 0.7], [0.5, 0.3, 0.2]])
    labels = np.array([1, 2, 1])
    # row 0: tie between classes 0 and 1 -> class 0 ranks first, so top-1 misses and top-2 hits
    assert topk_accuracy(scores, labels, (1, 2, 5)) == pytest.approx({1: 1 / 3, 2: 1.0, 5: 1.0})


def test_per_class_and_mean_class_accuracy():
    scores = np.eye(4)[[0, 0, 1, 1, 1]]  # predictions 0 0 1 1 1; class 3 has no video
    labels = np.array([0, 1, 1, 1, 2])
    report = classification_report(scores, labels, ["a", "b", "c", "d"])
    assert report["top1"] == pytest.approx(60.0)
    assert report["per_class_accuracy"] == pytest.approx({"a": 100.0, "b": 200 / 3, "c": 0.0, "d": None})
    assert report["mean_class_accuracy"] == pytest.approx((100 + 200 / 3 + 0) / 3)
    assert report["confusion_matrix"][1] == [1, 2, 0, 0] and report["num_videos"] == 5
    with pytest.raises(ValueError, match="no label"):
        classification_report(scores, np.array([0, 1, 1, 1, -1]), ["a", "b", "c", "d"])


def test_recall_at_k_hand_computed_with_ties_and_k_beyond_the_gallery():
    # Both sets have zero mean, so centring leaves them as they are; cosine = dot product.
    gallery = np.array([[1.0, 0], [-1, 0], [0, 1], [0, -1]])
    gallery_labels = np.array([0, 1, 2, 0])
    queries = np.array([[1.0, 0], [-1, 0]])
    query_labels = np.array([2, 0])
    # query 0: similarities (1, -1, 0, 0); rows 2 and 3 tie -> row 2 first: order 0, 2, 3, 1 -> labels 0, 2, ...
    # query 1: similarities (-1, 1, 0, 0) -> order 1, 2, 3, 0 -> labels 1, 2, 0, 0
    recall, neighbours = recall_at_k(queries, query_labels, gallery, gallery_labels, ks=(1, 2, 3, 50))
    assert neighbours.tolist() == [[0, 2, 3, 1], [1, 2, 3, 0]]
    assert recall == pytest.approx({"R@1": 0.0, "R@2": 50.0, "R@3": 100.0, "R@50": 100.0})
    # each set is centred on its own mean: shifting one set changes nothing
    shifted, _ = recall_at_k(queries + 5.0, query_labels, gallery - 3.0, gallery_labels, ks=(1, 2, 3, 50))
    assert shifted == recall


def test_assemble_refuses_missing_and_repeated_rows():
    values = np.arange(5, dtype=np.float32)[:, None]
    parts = [(np.array([0, 2, 4]), values[[0, 2, 4]]), (np.array([1, 3]), values[[1, 3]])]
    np.testing.assert_array_equal(assemble(parts, 5), values)
    with pytest.raises(IncompleteEvaluationError, match=r"missing rows \[3\]"):
        assemble([parts[0], (np.array([1]), values[[1]])], 5)
    with pytest.raises(IncompleteEvaluationError, match=r"repeated rows \[2\]"):
        assemble([parts[0], (np.array([1, 2, 3]), values[[1, 2, 3]])], 5)


class IndexDataset(torch.utils.data.Dataset):
    """Item i carries its index and a 'clip' whose value identifies it."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"index": i, "clips": torch.full((2, 3), float(i))}


def features_of(batch):
    return batch["clips"].mean(dim=1) * 10  # (B, 3): row i holds 10·i


@pytest.mark.parametrize("num_items,batch_size,world_size", [(7, 3, 1), (7, 2, 3), (5, 4, 2), (2, 4, 3)])
def test_sharded_inference_counts_every_video_once(num_items, batch_size, world_size, monkeypatch):
    """Each simulated rank runs its shard (last partial batch kept, no padding); the shards assemble to
    exactly one row per video, in dataset order."""
    shards = [list(shard_indices(num_items, r, world_size)) for r in range(world_size)]
    assert sorted(i for s in shards for i in s) == list(range(num_items))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    parts = []
    monkeypatch.setattr(inference, "get_world_size", lambda: world_size)
    monkeypatch.setattr(inference, "gather_rows", lambda idx, values, n: parts.append((idx, values)))
    for rank in range(world_size):
        if not shards[rank]:
            continue  # an empty shard: covered by the real two-process test below
        monkeypatch.setattr(inference, "get_rank", lambda: rank)
        run_inference(features_of, IndexDataset(num_items), batch_size=batch_size, workers=0,
                      device=torch.device("cpu"))
    result = assemble(parts, num_items)
    np.testing.assert_array_equal(result, 10 * np.repeat(np.arange(num_items)[:, None], 3, axis=1))


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        results = {num_items: torch.from_numpy(run_inference(features_of, IndexDataset(num_items), batch_size=2,
                                                             workers=0, device=torch.device("cpu")))
                   for num_items in (5, 1)}  # 1 video: rank 1 has an empty shard
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_gather_every_video_once(tmp_path):
    results = run_gloo_processes(_worker, tmp_path)
    for num_items in (5, 1):
        expected = 10 * np.repeat(np.arange(num_items)[:, None], 3, axis=1)
        for result in results:
            np.testing.assert_array_equal(result[num_items].numpy(), expected)


def test_the_2d_embedding_of_features_that_are_all_alike_is_pca_not_a_crash():
    """scikit-learn's Barnes-Hut t-SNE segfaults on identical points (a collapsed network's features); run in a
    child process so that a regression fails this test instead of killing the test run."""
    script = """
import sys
import numpy as np
from evaluation.plots import embed_2d
rng = np.random.default_rng(0)
for name, features in (("zeros", np.zeros((15, 64), np.float32)), ("alike", np.full((15, 64), 0.5, np.float32)),
                       ("tiny", (rng.standard_normal((15, 64)) * 1e-30).astype(np.float32)),
                       ("normal", rng.standard_normal((15, 64)).astype(np.float32))):
    points, method = embed_2d(features)
    assert points.shape == (15, 2) and np.isfinite(points).all(), name
    print(name, method)
"""
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-X", "faulthandler", "-c", script], cwd=repo, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(repo)})
    assert done.returncode == 0, done.stderr[-2000:]
    methods = dict(line.split() for line in done.stdout.splitlines())
    assert methods == {"zeros": "PCA", "alike": "PCA", "tiny": "t-SNE", "normal": "t-SNE"}


# ---------------------------------------------------------------- neighbours by topk, ties as a stable sort

def _stable_best(similarity: torch.Tensor, k: int):
    order = torch.sort(similarity, dim=1, descending=True, stable=True)
    return order.values[:, :k], order.indices[:, :k]


@pytest.mark.parametrize("k", [1, 2, 7, 20, 50, 100 - metrics.TIE_MARGIN, 99, 100])
def test_best_of_rows_is_the_stable_sort_ties_included(k):
    """Rows of few distinct values (equal runs longer and shorter than the margin straddle the k-th place), a
    constant row (the full-sort fallback), a NaN and signed zeros: the k best in the stable sort's order."""
    rng = np.random.default_rng(k)
    rows = [rng.integers(0, levels, 100) for levels in (2, 3, 5, 40, 1000)]
    rows.append(np.zeros(100))
    spread_tie = rng.standard_normal(100)
    spread_tie[rng.choice(100, 6, replace=False)] = np.sort(spread_tie)[-k] if k <= 100 else 0  # 6-way tie at k
    rows.append(spread_tie)
    with_nan = rng.standard_normal(100)
    with_nan[[3, 60]] = np.nan
    rows.append(with_nan)
    zeros = np.where(rng.random(100) < 0.5, 0.0, -0.0)
    rows.append(zeros)
    similarity = torch.tensor(np.stack(rows), dtype=torch.float32)
    values, columns = metrics.best_of_rows(similarity, k)
    expected_values, expected_columns = _stable_best(similarity, k)
    torch.testing.assert_close(columns, expected_columns, rtol=0, atol=0)
    torch.testing.assert_close(values, expected_values, rtol=0, atol=0, equal_nan=True)


def test_best_of_rows_sorts_only_rows_whose_tie_straddles_the_kth_place(monkeypatch):
    """Distinct values and ties inside the candidates need no full sort; a run of equal values longer than the
    margin across the k-th place does (the fallback is taken for that row alone)."""
    rng = np.random.default_rng(0)
    distinct = torch.tensor(rng.permutation(200), dtype=torch.float32)[None]  # (1, 200)
    short_tie = torch.tensor(rng.integers(0, 60, 200), dtype=torch.float32)[None]  # runs of ~3 equal values
    long_tie = torch.zeros(1, 200)
    sorted_rows = []
    real_sort = torch.sort

    def counting_sort(x, *args, **kwargs):
        if x.shape[-1] == 200:
            sorted_rows.append(x.shape[0])
        return real_sort(x, *args, **kwargs)
    monkeypatch.setattr(metrics.torch, "sort", counting_sort)
    for rows, full_sorts in (([distinct, short_tie], []), ([distinct, long_tie, short_tie], [1])):
        sorted_rows.clear()
        similarity = torch.cat(rows)
        columns = metrics.best_of_rows(similarity, 10)[1]
        assert sorted_rows == full_sorts
        torch.testing.assert_close(columns, _stable_best(similarity, 10)[1], rtol=0, atol=0)


@pytest.mark.parametrize("gallery_elements", [2**28, 16 * 25, 16])
def test_nearest_neighbours_equal_the_full_stable_sort(gallery_elements):
    """Real-valued features (ties only by symmetry) and small integers (ties everywhere), the gallery whole or
    in chunks (25 rows, or k): the neighbours of NumPy's stable argsort of the whole matrix."""
    rng = np.random.default_rng(1)
    for gallery, queries in ((rng.standard_normal((300, 16)), rng.standard_normal((37, 16))),
                             (rng.integers(-1, 2, (300, 16)), rng.integers(-1, 2, (37, 16)))):
        gallery, queries = gallery.astype(np.float32), queries.astype(np.float32)
        for k in (1, 20, 50):
            got = metrics.nearest_neighbours(queries, gallery, k, gallery_elements=gallery_elements)
            expected = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")[:, :k]
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("knn_k", [3, 20, 80])
def test_recall_and_knn_in_one_search_equal_the_two_protocols_apart(knn_k, monkeypatch):
    """One search gives R@k (each set centred on its own mean) and kNN (both on the gallery's mean) exactly as
    recall_at_k and knn_classify do apart; on these sets the two centrings rank differently, so a swap shows."""
    rng = np.random.default_rng(2)
    gallery = rng.integers(-2, 3, (120, 8)).astype(np.float32) + 0.5  # ties, and a mean away from zero
    queries = rng.integers(-2, 3, (30, 8)).astype(np.float32) + 1.5  # a mean unlike the gallery's
    gallery_labels, query_labels = rng.integers(0, 4, 120), rng.integers(0, 4, 30)
    recall, neighbours = recall_at_k(queries, query_labels, gallery, gallery_labels)
    knn = metrics.knn_classify(queries, gallery, gallery_labels, 4, knn_k, 0.1)
    own_mean = metrics.nearest_neighbours(metrics.centre_and_normalise(queries),
                                             metrics.centre_and_normalise(gallery), 20)
    gallery_mean = metrics.nearest_neighbours(metrics.centre_and_normalise(queries, gallery.mean(axis=0)),
                                                 metrics.centre_and_normalise(gallery), 20)
    assert (own_mean != gallery_mean).any()
    searches = []
    real_search = metrics.search
    monkeypatch.setattr(metrics, "search", lambda *a, **kw: searches.append(a[0].shape) or real_search(*a, **kw))
    got_recall, got_neighbours, got_knn = metrics.recall_and_knn(queries, query_labels, gallery, gallery_labels,
                                                                    4, knn_k=knn_k, temperature=0.1)
    assert searches == [(60, 8)]  # one pass over the gallery, both query sets stacked
    assert got_recall == recall
    np.testing.assert_array_equal(got_neighbours, neighbours)
    np.testing.assert_allclose(got_knn, knn, rtol=1e-6)
    # the kNN weights are the cosines of the search itself (no second look-up of the gallery rows)
    rows = metrics.nearest_neighbours(metrics.centre_and_normalise(queries, gallery.mean(axis=0)),
                                         metrics.centre_and_normalise(gallery), knn_k)
    q = metrics.centre_and_normalise(queries, gallery.mean(axis=0))
    g = metrics.centre_and_normalise(gallery)
    expected = np.zeros((30, 4))
    np.add.at(expected, (np.arange(30)[:, None], gallery_labels[rows]),
              np.exp((np.einsum("qd,qkd->qk", q, g[rows]).astype(np.float64) - 1) / 0.1))
    np.testing.assert_allclose(got_knn, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="k >= 1"):
        metrics.recall_and_knn(queries, query_labels, gallery, gallery_labels, 4, knn_k=0)


# ---------------------------------------------------------------- the linear probe against scikit-learn

def _sklearn_probe(train, train_labels, test, num_classes, tol=1e-4):
    from sklearn.linear_model import LogisticRegression
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
    model = LogisticRegression(C=1.0, max_iter=2000, tol=tol).fit((train - mean) / std, train_labels)
    scores = np.full((len(test), num_classes), -np.inf)
    scores[:, model.classes_] = model.predict_log_proba((test - mean) / std)
    return scores


def _clusters(rng, num_classes, dim, spread, n):
    centres = rng.standard_normal((num_classes, dim))
    labels = rng.integers(0, num_classes, n)
    # non-negative and offset like pooled ReLU features, one dimension nearly constant
    features = np.abs(centres[labels] + spread * rng.standard_normal((n, dim))) + 3.0
    features[:, 0] = 1.0 + 1e-4 * rng.standard_normal(n)
    return features.astype(np.float32), labels


@pytest.mark.parametrize("num_classes,dim,spread", [(10, 64, 2.0), (10, 6, 0.7), (10, 64, 0.3), (40, 32, 1.5)])
def test_linear_probe_matches_scikit_learn(num_classes, dim, spread):
    """Demo- and miniature-like shapes (1080 train, 420 test videos, 10 classes; 6-d like the colour statistics),
    separable and overlapping classes: the same accuracy within 0.5 points and the same log-probabilities as
    scikit-learn's LogisticRegression(C=1) solved to its optimum (same objective, penalty scaled by 1 / n)."""
    rng = np.random.default_rng(dim + num_classes)
    features, labels = _clusters(rng, num_classes, dim, spread, 1500)
    train, train_labels, test, test_labels = features[:1080], labels[:1080], features[1080:], labels[1080:]
    ours = metrics.linear_probe(train, train_labels, test, num_classes)
    accuracy = 100 * topk_accuracy(ours, test_labels, (1,))[1]
    reference = 100 * topk_accuracy(_sklearn_probe(train, train_labels, test, num_classes), test_labels, (1,))[1]
    assert abs(accuracy - reference) <= 0.5
    converged = _sklearn_probe(train, train_labels, test, num_classes, tol=1e-8)
    np.testing.assert_allclose(np.exp(ours), np.exp(converged), atol=2e-3)


def test_linear_probe_scores_only_the_classes_it_was_trained_on():
    rng = np.random.default_rng(0)
    centres = {2: np.array([4.0, 0.0]), 5: np.array([0.0, 4.0]), 7: np.array([-4.0, -4.0])}
    train_labels = np.repeat([2, 5, 7], 30)
    train = np.stack([centres[c] for c in train_labels]) + rng.standard_normal((90, 2))
    test = np.array([[4.0, 0.0], [0.0, 4.0], [-4.0, -4.0]])
    scores = metrics.linear_probe(train, train_labels, test, 9)
    assert scores.shape == (3, 9) and np.isneginf(scores[:, [0, 1, 3, 4, 6, 8]]).all()
    assert scores.argmax(axis=1).tolist() == [2, 5, 7]
    np.testing.assert_allclose(np.exp(scores).sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="at least 2 classes"):
        metrics.linear_probe(train, np.zeros(90, dtype=int), test, 9)
    train[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        metrics.linear_probe(train, train_labels, test, 9)
