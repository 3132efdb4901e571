"""utils/evaluation.py: 10-clip aggregation, top-k and per-class accuracy, R@k with ties and k beyond the
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
from utils import evaluation
from utils.evaluation import (IncompleteEvaluationError, aggregate_clips, assemble, classification_report,
                              recall_at_k, run_inference, shard_indices, topk_accuracy)


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
    monkeypatch.setattr(evaluation, "get_world_size", lambda: world_size)
    monkeypatch.setattr(evaluation, "gather_rows", lambda idx, values, n: parts.append((idx, values)))
    for rank in range(world_size):
        if not shards[rank]:
            continue  # an empty shard: covered by the real two-process test below
        monkeypatch.setattr(evaluation, "get_rank", lambda: rank)
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
from utils.evaluation import embed_2d
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
