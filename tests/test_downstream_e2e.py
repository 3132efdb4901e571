"""End to end on a tiny generated demo set: pretrain -> finetune (ft and linear probe, with resume)
-> test -> retrieve, all through the entry points' main(args) in this process."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import finetune
import retrieve
import train_ssl
from conftest import DEMO_CLASSES, tiny_demo_flags
from engine.card import build_card, summary_line
from evaluation import metrics
from utils.checkpoint_io import CheckpointError, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("test_script", REPO / "test.py")  # not the stdlib `test`
test_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_script)


@pytest.fixture(scope="module")
def demo(tiny_demo):
    return tiny_demo


def data_flags(demo):
    return tiny_demo_flags(demo) + ["--device", "cpu"]


@pytest.fixture(scope="module")
def pretrained(demo):
    out = demo / "pretrain"
    train_ssl.main(train_ssl.get_args_parser().parse_args(
        data_flags(demo) + ["--output-dir", str(out), "--model", "simclr", "--mode", "clip", "--net", "r3d",
                            "--base-width", "8", "--batch-size", "2", "--epochs", "1", "--max-iters-per-epoch",
                            "1", "--stride", "1"]))
    return out / "checkpoint.pth"


def run_finetune(demo, pretrain, out, *extra):
    # --net and --base-width come from the checkpoint's configuration
    return finetune.main(finetune.get_args_parser().parse_args(
        data_flags(demo) + ["--pretrain", str(pretrain), "--output-dir", str(out), "--batch-size", "3",
                            "--epochs", "2", "--schedule", "1", "--log-every", "1", *extra]))


@pytest.fixture(scope="module")
def finetuned(demo, pretrained):
    out = demo / "finetune"
    results = run_finetune(demo, pretrained, out)
    return out, results


def test_finetune_writes_results_checkpoints_and_validates_each_epoch(finetuned):
    out, results = finetuned
    assert results["loaded_tensors"] > 0 and results["pretrain_kind"].startswith("pretraining")
    assert json.loads((out / "finetune_results.json").read_text()) == results
    assert (out / "best.pth").is_file() and (out / "checkpoint.pth").is_file()
    assert results["best_checkpoint"] == str(out / "best.pth")
    epochs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [0, 1] and all(0 <= e["val_top1"] <= 100 for e in epochs)
    best = max(epochs, key=lambda e: e["val_top1"])  # first epoch wins a tie
    assert (results["best_epoch"], results["best_val_top1"]) == (best["epoch"], best["val_top1"])
    assert load_checkpoint(out / "best.pth")["epoch"] == best["epoch"] + 1
    config = json.loads((out / "config.json").read_text())["config"]
    assert (config["net"], config["base_width"], config["stride"]) == ("r3d", 8, 2)  # inherited; finetune stride


def test_finetune_resume_reaches_the_same_weights(demo, pretrained, finetuned, tmp_path):
    run_finetune(demo, pretrained, tmp_path, "--epochs", "1")
    run_finetune(demo, pretrained, tmp_path)  # --resume auto
    resumed = load_checkpoint(tmp_path / "checkpoint.pth")
    reference = load_checkpoint(finetuned[0] / "checkpoint.pth")
    assert resumed["best"] == reference["best"]
    for key, value in reference["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=1e-6, msg=key)


def test_linear_probe_runs_with_the_frozen_backbone_check(demo, pretrained, tmp_path):
    results = run_finetune(demo, pretrained, tmp_path, "--train-what", "last", "--epochs", "1", "--modality", "res")
    assert results["train_what"] == "last"
    pretrained_state = load_checkpoint(pretrained)["model"]
    probed = load_checkpoint(tmp_path / "checkpoint.pth")["model"]
    backbone_keys = [k for k in probed if k.startswith("backbone.")]
    assert backbone_keys
    for key in backbone_keys:
        assert torch.equal(probed[key], pretrained_state["encoder." + key]), key


def test_finetune_refuses_a_checkpoint_of_another_architecture(demo, pretrained, tmp_path):
    with pytest.raises(CheckpointError, match=r"wrong shape.*written with --net r3d --base-width 8"):
        run_finetune(demo, pretrained, tmp_path, "--base-width", "16")


def test_test_script_scores_every_test_video_once(demo, finetuned, tmp_path):
    args = test_script.get_args_parser().parse_args(
        data_flags(demo) + ["--ckpt", str(finetuned[0] / "best.pth"), "--output-dir", str(tmp_path),
                            "--batch-size", "4"])  # 6 test videos: a partial last batch
    report = test_script.main(args)
    assert args.stride == 2 and args.modality == "rgb"  # from the checkpoint's configuration
    saved = json.loads((tmp_path / "test_results.json").read_text())
    assert saved["num_videos"] == 6 == len(saved["per_video"]) == sum(map(sum, saved["confusion_matrix"]))
    assert sorted(v["video"] for v in saved["per_video"]) == sorted(
        line.split(",")[0] for line in (demo / "csv" / "test_split01.csv").read_text().splitlines())
    hits = [v["prediction"] == v["label"] for v in saved["per_video"]]
    assert saved["top1"] == pytest.approx(100 * np.mean(hits)) and saved["top5"] == 100.0  # 3 classes
    assert set(saved["per_class_accuracy"]) == set(DEMO_CLASSES) and report["top1"] == saved["top1"]
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 0
    with pytest.raises(CheckpointError, match="not a finetune.py checkpoint"):
        test_script.main(test_script.get_args_parser().parse_args(
            data_flags(demo) + ["--ckpt", str(demo / "pretrain" / "checkpoint.pth"), "--output-dir", str(tmp_path)]))


def test_retrieve_exports_features_and_recall(demo, pretrained, tmp_path):
    results = retrieve.main(retrieve.get_args_parser().parse_args(
        data_flags(demo) + ["--ckpt", str(pretrained), "--output-dir", str(tmp_path), "--batch-size", "4",
                            "--layer", "conv5", "--merge"]))
    saved = json.loads((tmp_path / "retrieval.json").read_text())
    assert (saved["num_queries"], saved["num_gallery"]) == (6, 15)
    train, test = np.load(tmp_path / "features_train.npz"), np.load(tmp_path / "features_test.npz")
    assert train["features"].shape == (15, saved["feature_dim"]) and test["features"].shape[0] == 6
    assert len(set(train["video_ids"].tolist())) == 15 and sorted(set(test["labels"].tolist())) == [0, 1, 2]
    recomputed, _ = metrics.recall_at_k(test["features"], test["labels"], train["features"], train["labels"])
    assert recomputed == {k: saved[k] for k in recomputed} == {k: results[k] for k in recomputed}
    assert saved["R@50"] == 100.0  # k beyond the 15-video gallery: every class is in it
    # kNN and the linear probe score the exported features
    knn = metrics.knn_classify(test["features"], train["features"], train["labels"], 3, k=20, temperature=0.07)
    assert saved["knn_top1"] == 100 * metrics.topk_accuracy(knn, test["labels"], (1,))[1]
    probe = metrics.linear_probe(train["features"], train["labels"], test["features"], 3)
    assert saved["linear_probe_top1"] == 100 * metrics.topk_accuracy(probe, test["labels"], (1,))[1]
    assert saved["knn"] == {"k": 20, "temperature": 0.07}
    assert (tmp_path / "retrieval_examples.png").is_file() and (tmp_path / "tsne_test.png").is_file()


def test_test_and_retrieve_write_a_reproduction_card_from_the_runs_configs(demo, pretrained, finetuned, tmp_path):
    """The card of a test result follows the checkpoints back to the finetuning and pretraining runs."""
    test_script.main(test_script.get_args_parser().parse_args(
        data_flags(demo) + ["--ckpt", str(finetuned[0] / "best.pth"), "--output-dir", str(tmp_path / "test")]))
    card = json.loads((tmp_path / "test" / "card.json").read_text())
    assert card == build_card(tmp_path / "test" / "test_results.json")
    pre, ft = card["pretraining"], card["finetuning"]
    assert (pre["model"], pre["mode"], pre["net"], pre["epochs"], pre["checkpoint_epoch"]) == ("simclr", "clip", "r3d",
                                                                                             1, 1)
    assert (pre["processes"], pre["per_process_batch"], pre["global_batch"]) == (1, 2, 2)
    assert pre["negatives"] == "the batch of the single process"
    assert pre["clip"]["stride"] == 1 and ft["clip"]["stride"] == 2 == card["clip"]["stride"]
    assert pre["videos"] == {"listed": 15, "used": 15}  # the tiny demo: 15 train videos, 6 test
    best_epoch = finetuned[1]["best_epoch"]
    assert (ft["what"], ft["epochs"], ft["checkpoint_epoch"]) == ("all layers", 2, best_epoch + 1)
    assert (ft["videos"]["listed"], ft["videos"]["train_used"] + ft["videos"]["validation_hold_out"]) == (15, 15)
    assert (ft["global_batch"], ft["batch_norm"]) == (3, "batch statistics of each process")
    assert card["data"]["videos"] == {"test_listed": 6, "test_used": 6}
    assert (card["evaluation"]["clips"], card["evaluation"]["crops"], card["data"]["split"]) == (10, 1, 1)
    assert card["seeds"] == [0] and set(card["revision"]) == {"commit", "clean"}
    line = summary_line(card)
    assert "1 × 2 = 2 per step" in line and "10 clips × 1 centre crop" in line and "after epoch 1" in line

    retrieve.main(retrieve.get_args_parser().parse_args(
        data_flags(demo) + ["--ckpt", str(pretrained), "--output-dir", str(tmp_path / "ret"), "--no-tsne"]))
    card = json.loads((tmp_path / "ret" / "card.json").read_text())
    assert card["finetuning"] is None and card["pretraining"]["checkpoint_epoch"] == 1
    assert card["data"]["videos"] == {"train_listed": 15, "train_used": 15, "test_listed": 6, "test_used": 6}
    assert card["metrics"]["R@1"] == json.loads((tmp_path / "ret" / "retrieval.json").read_text())["R@1"]


@pytest.fixture(scope="module")
def fp32_features(demo, pretrained, tmp_path_factory):
    """The pretrained network's exported features computed in fp32: the reference of the bf16 ones."""
    out = tmp_path_factory.mktemp("fp32_retrieval")
    retrieve.main(retrieve.get_args_parser().parse_args(
        data_flags(demo) + ["--ckpt", str(pretrained), "--output-dir", str(out), "--num-examples", "0", "--no-tsne",
                            "--amp", "none"]))
    return np.load(out / "features_test.npz")["features"]


@pytest.mark.parametrize("cpu_bf16", ["1", "0"])
def test_amp_auto_as_on_a_bf16_cpu_and_an_avx2_cpu(demo, pretrained, fp32_features, tmp_path, monkeypatch, cpu_bf16):
    """VSSL_CPU_BF16 makes --amp auto resolve as on a CPU with (1) and without (0) native bf16, on any machine:
    training runs in fp32 either way, evaluation in bf16 on the former; the cards say which ran in what, and the
    bf16 features stay within bf16's precision of the fp32 ones."""
    monkeypatch.setenv("VSSL_CPU_BF16", cpu_bf16)
    evaluation = "bf16 autocast" if cpu_bf16 == "1" else "fp32"
    run_finetune(demo, pretrained, tmp_path / "ft", "--epochs", "1", "--max-iters-per-epoch", "2", "--val-freq", "0")
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["config"]["amp"] == "none"
    test_script.main(test_script.get_args_parser().parse_args(
        data_flags(demo) + ["--ckpt", str(tmp_path / "ft" / "checkpoint.pth"), "--output-dir", str(tmp_path / "test")]))
    card = json.loads((tmp_path / "test" / "card.json").read_text())
    assert (card["pretraining"]["precision"], card["finetuning"]["precision"]) == ("fp32", "fp32")
    assert card["evaluation"]["precision"] == evaluation
    assert f"stride 2, in {evaluation}; seed 0" in summary_line(card)  # the evaluation's part of the line

    retrieve.main(retrieve.get_args_parser().parse_args(
        data_flags(demo) + ["--ckpt", str(pretrained), "--output-dir", str(tmp_path / "ret"), "--num-examples", "0",
                            "--no-tsne"]))
    assert json.loads((tmp_path / "ret" / "card.json").read_text())["evaluation"]["precision"] == evaluation
    features = np.load(tmp_path / "ret" / "features_test.npz")["features"]
    if cpu_bf16 == "0":
        np.testing.assert_array_equal(features, fp32_features)
    else:  # bf16 keeps 8 significant bits: a few parts in a thousand per operation, about 1 % after the network
        assert not np.array_equal(features, fp32_features)
        np.testing.assert_allclose(features, fp32_features, rtol=0, atol=0.03 * np.abs(fp32_features).max())


def test_retrieve_scores_the_colour_statistics_reference(demo, tmp_path):
    results = retrieve.main(retrieve.get_args_parser().parse_args(
        data_flags(demo) + ["--ckpt", "colour-stats", "--output-dir", str(tmp_path), "--num-examples", "0",
                            "--no-tsne", "--knn-k", "3"]))
    assert results["feature_dim"] == 6 and results["loaded_tensors"] == 0 and results["knn"]["k"] == 3
    test = np.load(tmp_path / "features_test.npz")
    assert np.allclose(test["features"][:, 3:], np.abs(test["features"][:, 3:]))  # standard deviations


def vcop_release(tmp_path, net: str = "r3d", base_width: int = 8) -> tuple[Path, dict]:
    """A VCOP-family checkpoint file as IIC-style code saves it: {'state_dict': DDP-prefixed tensors + a head}."""
    from model.backbones import build_backbone
    from model.vcop import vcop_name
    backbone, channels = build_backbone(net, base_width)
    family = {vcop_name(k): v + 0.01 if v.is_floating_point() else v + 7 for k, v in backbone.state_dict().items()}
    path = tmp_path / "release.pth"
    torch.save({"state_dict": {**{"module.base_network." + k: v for k, v in family.items()},
                               "module.linear.weight": torch.zeros(3, channels)}, "epoch": 300}, path)
    return path, family


def test_finetune_and_retrieve_init_from_a_vcop_family_checkpoint(demo, tmp_path):
    from model.vcop import vcop_name
    path, family = vcop_release(tmp_path)
    results = finetune.main(finetune.get_args_parser().parse_args(
        data_flags(demo) + ["--init-from", str(path), "--net", "r3d", "--base-width", "8", "--output-dir",
                            str(tmp_path / "ft"), "--train-what", "last", "--epochs", "1", "--val-freq", "0",
                            "--max-iters-per-epoch", "1", "--batch-size", "2"]))
    assert results["loaded_tensors"] == len(family) and results["init_from"] == str(path)
    # no validation, so no best.pth: the results name the checkpoint that exists
    assert results["best_checkpoint"] is None and results["best_val_top1"] is None
    assert results["last_checkpoint"] == str(tmp_path / "ft" / "checkpoint.pth")
    assert not (tmp_path / "ft" / "best.pth").exists()
    probed = load_checkpoint(tmp_path / "ft" / "checkpoint.pth")["model"]
    for key in (k for k in probed if k.startswith("backbone.")):  # linear probe: the loaded tensors, unchanged
        assert torch.equal(probed[key], family[vcop_name(key[len("backbone."):])]), key
    retrieved = retrieve.main(retrieve.get_args_parser().parse_args(
        data_flags(demo) + ["--init-from", str(path), "--net", "r3d", "--base-width", "8", "--output-dir",
                            str(tmp_path / "ret"), "--num-examples", "0", "--no-tsne"]))
    assert retrieved["loaded_tensors"] == len(family) and retrieved["checkpoint_kind"] == "VCOP-family checkpoint"
    with pytest.raises(CheckpointError, match="--init-from .*wrong shape"):
        retrieve.main(retrieve.get_args_parser().parse_args(
            data_flags(demo) + ["--init-from", str(path), "--net", "r3d", "--base-width", "16", "--output-dir",
                                str(tmp_path / "ret16")]))
    with pytest.raises(ValueError, match="exactly one of --pretrain"):
        finetune.main(finetune.get_args_parser().parse_args(
            data_flags(demo) + ["--init-from", str(path), "--pretrain", "none"]))


def test_finetune_with_grad_checkpoint_reaches_the_same_weights(demo, pretrained, tmp_path, monkeypatch):
    import model.backbones
    calls = []
    checkpoint = model.backbones.checkpoint
    monkeypatch.setattr(model.backbones, "checkpoint", lambda *a, **kw: calls.append(1) or checkpoint(*a, **kw))
    flags = ("--epochs", "1", "--val-freq", "0", "--amp", "none")
    run_finetune(demo, pretrained, tmp_path / "plain", *flags)
    assert not calls
    run_finetune(demo, pretrained, tmp_path / "checkpointed", *flags, "--grad-checkpoint")
    assert calls and len(calls) % 5 == 0  # 5 stages per training step
    plain = load_checkpoint(tmp_path / "plain" / "checkpoint.pth")["model"]
    for key, value in load_checkpoint(tmp_path / "checkpointed" / "checkpoint.pth")["model"].items():
        torch.testing.assert_close(value, plain[key], rtol=1e-5, atol=1e-6, msg=lambda message: f"{key}: {message}")
