"""The miniature's measurements: kNN and linear probe on frozen features, the colour-statistics reference,
shuffle-rank accuracy split by permutation, and the aggregation of seeds into mean ± std."""
import argparse
import json
import math

import numpy as np
import pytest
import torch

from evaluation.metrics import knn_classify, linear_probe, topk_accuracy
from model import add_method_args, build_method
from model.references import ColourStatistics
from paper_scripts import collect_results


def test_knn_votes_match_a_hand_computation():
    gallery = np.array([[3.0, 1.0], [3.0, 0.0], [1.0, 1.0], [1.0, 0.0]])  # mean (2, 0.5)
    labels = np.array([0, 0, 1, 1])
    query = np.array([[3.0, 0.4]])
    # centred on the gallery mean: gallery rows (1, .5), (1, -.5), (-1, .5), (-1, -.5); query (1, -.1)
    q = np.array([1.0, -0.1]) / np.hypot(1.0, 0.1)
    g = np.array([[1, .5], [1, -.5], [-1, .5], [-1, -.5]]) / np.hypot(1, .5)
    cos = g @ q  # the two class-0 rows are nearest
    expected = np.zeros((1, 2))
    expected[0, 0] = np.exp((cos[0] - 1) / 0.1) + np.exp((cos[1] - 1) / 0.1)
    np.testing.assert_allclose(knn_classify(query, gallery, labels, 2, k=2, temperature=0.1), expected)
    # k = 3 adds the nearest class-1 row (-1, -.5) with its own weight
    scores = knn_classify(query, gallery, labels, 2, k=3, temperature=0.1)
    np.testing.assert_allclose(scores[0, 1], np.exp((cos[3] - 1) / 0.1))
    # without centring, every row would point the same way: centring is what separates them
    assert topk_accuracy(knn_classify(query, gallery, labels, 2, k=1), np.array([0]), (1,))[1] == 1.0
    with pytest.raises(ValueError, match="k >= 1"):
        knn_classify(query, gallery, labels, 2, k=0)


def test_knn_and_linear_probe_read_the_classes_of_separable_features():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 3
    train_labels, test_labels = np.repeat(np.arange(4), 20), np.repeat(np.arange(4), 10)
    train = centres[train_labels] + rng.normal(size=(80, 16))
    test = centres[test_labels] + rng.normal(size=(40, 16))
    assert topk_accuracy(knn_classify(test, train, train_labels, 4), test_labels, (1,))[1] == 1.0
    assert topk_accuracy(linear_probe(train, train_labels, test, 4), test_labels, (1,))[1] == 1.0
    shuffled = rng.permutation(train_labels)  # labels unrelated to the features: near chance
    assert topk_accuracy(linear_probe(train, shuffled, test, 4), test_labels, (1,))[1] < 0.6


def test_colour_statistics_are_the_per_channel_mean_and_std():
    clips = torch.rand(2, 3, 4, 5, 6)
    out = ColourStatistics()(clips)
    assert out.shape == (2, 6, 1, 1, 1)
    np.testing.assert_allclose(out[1, 2, 0, 0, 0], clips[1, 2].mean(), rtol=1e-6)
    np.testing.assert_allclose(out[0, 4, 0, 0, 0], clips[0, 1].std(), rtol=1e-6)


def dualvar(mode="clip-sr-tc"):
    parser = argparse.ArgumentParser()
    add_method_args(parser)
    return build_method(parser.parse_args(["--net", "r3d", "--base-width", "8", "--mode", mode,
                                           "--series-dim", "4"]))


def test_rank_accuracy_is_split_by_permutation_so_an_order_blind_network_shows():
    method = dualvar()
    basis = torch.eye(4)
    reference = basis[:2].expand(4, 2, 4).clone()  # (B, n, d): segment k -> e_k in every sample
    # an order-blind network: slot j of the shuffled clip always gets e_j, whatever segment it holds
    shuffled_series = basis[:2].expand(4, 2, 4).clone()
    permutations = torch.tensor([[0, 1], [1, 0], [0, 1], [1, 0]])
    out = method.shuffle_rank(reference, reference, shuffled_series, permutations)
    assert out["acc_rank_identity"].item() == 1.0 and out["acc_rank_shuffled"].item() == 0.0
    assert out["acc_rank"].item() == 0.5
    # a network that sees the order: slot j gets the embedding of the segment it holds
    seeing = basis[:2][permutations]  # (B, n, d): slot j -> e_{σ(j)}
    out = method.shuffle_rank(reference, reference, seeing, permutations)
    assert out["acc_rank_identity"].item() == 1.0 and out["acc_rank_shuffled"].item() == 1.0
    # no identity in the batch: nothing to measure, and the logger skips it
    swaps = torch.tensor([[1, 0], [1, 0]])
    out = method.shuffle_rank(reference[:2], reference[:2], basis[:2][swaps], swaps)
    assert math.isnan(out["acc_rank_identity"].item()) and out["acc_rank_shuffled"].item() == 1.0


def test_training_logs_the_split_rank_accuracy():
    method = dualvar()
    torch.manual_seed(0)
    out = method(torch.randn(4, 3, 3, 8, 32, 32))
    assert {"acc_rank", "acc_rank_identity", "acc_rank_shuffled"} <= set(out)
    from engine.run_log import MetricLogger
    meters = MetricLogger()
    meters.update({"acc_rank_identity": float("nan")})
    meters.update({"acc_rank_identity": 0.5})
    assert meters.meters["acc_rank_identity"].global_avg == 0.5


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_seeds_aggregate_into_mean_and_sample_std(tmp_path, capsys):
    root = tmp_path / "miniature"
    knn = {"dualvar": [30.0, 34.0, 38.0], "random": [20.0, 20.0, 23.0]}
    for method, values in knn.items():
        for seed, value in enumerate(values):
            write_json(root / method / f"seed{seed}" / "test_retrieval" / "retrieval.json",
                       {"knn_top1": value, "linear_probe_top1": value + 1, "R@1": value - 1})
    write_json(root / "dualvar" / "seed0" / "test" / "test_results.json", {"top1": 50.0})  # one seed only
    (root / "dualvar" / "seedless").mkdir()  # not a seed folder: ignored
    args = collect_results.get_args_parser().parse_args(
        ["--seeds", "--output-root", str(root), "--experiments", "random", "dualvar", "--out", str(root / "r.md"),
         "--summary", str(root / "summary.json")])
    text = collect_results.main(args)
    summary = json.loads((root / "summary.json").read_text())
    assert list(summary) == ["random", "dualvar"]
    stats = summary["dualvar"]["metrics"]["knn_top1"]
    assert stats == {"mean": 34.0, "std": 4.0, "n": 3}
    assert summary["random"]["metrics"]["knn_top1"]["std"] == pytest.approx(np.std([20, 20, 23], ddof=1))
    assert summary["dualvar"]["per_seed"]["2"]["R@1"] == 37.0
    assert summary["dualvar"]["metrics"]["finetune_top1"] == {"mean": 50.0, "std": 0.0, "n": 1}
    row = next(line for line in text.splitlines() if line.startswith("| dualvar"))
    assert row == "| dualvar | 3 | 34.0 ± 4.0 | 35.0 ± 4.0 | 50.0 ± 0.0 (n=1) | 33.0 ± 4.0 |"
    assert (root / "r.md").read_text() == text == capsys.readouterr().out
    write_json(root / "random" / "seed1" / "test_retrieval" / "retrieval.json", {"knn_top1": "high"})
    with pytest.raises(collect_results.ResultsError, match="seed1.*knn_top1"):
        collect_results.summarize_seeds(root)


def test_reversal_sensitivity_is_zero_for_features_blind_to_the_arrow_of_time():
    from paper_scripts.reversal_sensitivity import reversal_sensitivity

    clips = torch.randn(6, 3, 4, 2, 2)
    ramp = torch.arange(4.0).view(1, 1, 4, 1, 1)
    blind = lambda x: x.mean(dim=2).flatten(1)  # noqa: E731
    seeing = lambda x: (x * ramp).mean(dim=2).flatten(1)  # noqa: E731  weights late frames more
    assert reversal_sensitivity(blind(clips), blind(clips.flip(2))) == pytest.approx(0.0, abs=1e-6)
    assert reversal_sensitivity(seeing(clips), seeing(clips.flip(2))) > 0.3
    features = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    # change 1 per clip; mean distance between the two clips 5
    assert reversal_sensitivity(features, features + torch.tensor([1.0, 0.0])) == pytest.approx(0.2)


def test_direction_accuracy_counts_only_videos_predicted_as_either_class_of_the_pair():
    names = ["Right", "Left", "Other"]
    confusion = [[6, 2, 4],  # Right: 6 right, 2 called Left, 4 called Other (not counted)
                 [3, 5, 0],
                 [7, 7, 7]]
    assert collect_results.direction_accuracy(confusion, names, ("Right", "Left")) == pytest.approx(100 * 11 / 16)
    assert collect_results.direction_accuracy(confusion, names, ("Left", "Right")) == pytest.approx(100 * 11 / 16)
    assert collect_results.direction_accuracy([[0, 0], [0, 0]], names[:2], ("Right", "Left")) is None
    with pytest.raises(collect_results.ResultsError, match="no class 'Up'"):
        collect_results.direction_accuracy(confusion, names, ("Up", "Left"))


def write_seed_runs(root, method, knn, rank=None, reversal=None, confusion=None):
    for seed, value in enumerate(knn):
        folder = root / method / f"seed{seed}"
        write_json(folder / "test_retrieval" / "retrieval.json",
                   {"knn_top1": value, "linear_probe_top1": value, "R@1": value})
        if reversal is not None:
            write_json(folder / "reversal.json", {"reversal_sensitivity": reversal[seed]})
        if rank is not None:
            log = folder / "pretrain" / "log.jsonl"
            log.parent.mkdir(parents=True, exist_ok=True)
            entries = [{"kind": "epoch", "acc_rank_identity": 0.0, "acc_rank_shuffled": 0.0},  # an earlier epoch
                       {"kind": "iter", "acc_rank_identity": 0.5},
                       {"kind": "epoch", "acc_rank_identity": rank[seed][0], "acc_rank_shuffled": rank[seed][1]}]
            log.write_text("".join(json.dumps(e) + "\n" for e in entries))
        if confusion is not None:
            write_json(folder / "test" / "test_results.json",
                       {"top1": 50.0, "confusion_matrix": confusion[seed], "class_names": ["Right", "Left"]})


def test_seed_table_has_direction_rank_and_reversal_columns(tmp_path):
    root = tmp_path / "miniature"
    write_seed_runs(root, "dualvar", [30, 31, 32], rank=[(0.9, 0.1), (0.8, 0.2), (0.7, 0.3)],
                    reversal=[0.1, 0.2, 0.3], confusion=[[[3, 1], [1, 3]], [[4, 0], [2, 2]], [[1, 1], [1, 1]]])
    pairs_file = tmp_path / "pairs.txt"
    pairs_file.write_text("Right Left\r\n")
    args = collect_results.get_args_parser().parse_args(
        ["--seeds", "--output-root", str(root), "--direction-pairs", str(pairs_file), "--summary",
         str(root / "summary.json")])
    text = collect_results.main(args)
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    assert header == ("| method | seeds | kNN top-1 | linear probe top-1 | finetune top-1 | R@1 | direction Right/Left | "
                      "rank acc. identity | rank acc. shuffled | reversal sensitivity |")
    row = next(line for line in text.splitlines() if line.startswith("| dualvar"))
    assert "| 0.80 ± 0.10 | 0.20 ± 0.10 | 0.20 ± 0.10 |" in row  # the last epoch's entries, two decimals
    metrics = json.loads((root / "summary.json").read_text())["dualvar"]["metrics"]
    assert metrics["direction Right/Left"]["mean"] == pytest.approx((75 + 75 + 50) / 3)


def test_planted_bug_is_detected_only_when_it_moves_toward_random_by_two_sd_of_the_difference(tmp_path):
    root = tmp_path / "miniature"
    write_seed_runs(root, "random", [20, 21, 22])
    write_seed_runs(root, "simclr", [40, 41, 42])
    write_seed_runs(root, "bug_far", [25, 26, 27])  # 15 points toward random, sd of the difference 0.8
    write_seed_runs(root, "bug_near", [39, 41, 43])  # 0 points
    write_seed_runs(root, "bug_up", [50, 51, 52])  # away from random: not what a broken objective does
    summary = collect_results.summarize_seeds(root)
    table, results = collect_results.compare_with_correct(
        summary, [("bug_far", "simclr"), ("bug_near", "simclr"), ("bug_up", "simclr")])
    assert results["bug_far"]["knn_top1"]["difference"] == pytest.approx(-15.0)
    assert results["bug_far"]["knn_top1"]["sd"] == pytest.approx((2 * 1.0 / 3) ** 0.5)
    assert [results[name]["detected"] for name in ("bug_far", "bug_near", "bug_up")] == [True, False, False]
    assert "| bug_far | simclr | -15.0 ± 0.8 |" in table
    with pytest.raises(collect_results.ResultsError, match="no seed results for missing"):
        collect_results.compare_with_correct(summary, [("missing", "simclr")])
