"""--clip-input diff (dataset/clip_input.py): T + 1 frames decoded and augmented as one clip, differenced to T on the
device; one difference shared with IIC's residual view; recorded in checkpoints and taken by every consumer."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import embed
import finetune
import retrieve
import train_ssl
from conftest import RECIPES, tiny_demo_args, tiny_demo_flags
from dataset.build import build_dataset
from dataset.clip_input import frame_differences, frames_to_decode, to_network_input
from model.classifier import prepare_input
from model.iic import residual_frames

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("test_script", REPO / "test.py")  # not the stdlib `test`
test_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_script)
CPU = torch.device("cpu")


def test_frame_differences_of_consecutive_frames_and_circular():
    clips = torch.randn(2, 3, 5, 4, 4)
    diffs = frame_differences(clips)
    assert diffs.shape == (2, 3, 4, 4, 4)
    for t in range(4):
        assert torch.equal(diffs[:, :, t], clips[:, :, t + 1] - clips[:, :, t])
    wrapped = frame_differences(clips, wrap=True)
    assert torch.equal(wrapped[:, :, 0], clips[:, :, 0] - clips[:, :, 4])
    assert torch.equal(wrapped[:, :, 1:], diffs)
    assert to_network_input(clips, "rgb") is clips and torch.equal(to_network_input(clips, "diff"), diffs)
    assert frames_to_decode(8, "diff") == 9 and frames_to_decode(8, "rgb") == 8
    with pytest.raises(ValueError, match="--clip-input 'flow'"):
        frames_to_decode(8, "flow")


def test_iic_residual_and_finetuning_residual_are_the_same_difference():
    pixels = torch.rand(2, 3, 6, 4, 4)
    torch.testing.assert_close(residual_frames(pixels), (frame_differences(pixels, wrap=True) + 1) / 2)
    torch.testing.assert_close(prepare_input(pixels, "res"), frame_differences(pixels, wrap=True))


@pytest.mark.parametrize("sampler", ["dualvar", "two_view", "finetune", "eval"])
def test_diff_clips_are_the_differences_of_the_rgb_clip_one_frame_longer(tiny_demo, sampler):
    """The same draws as an RGB clip of T + 1 frames (one crop, one jitter, one blur for every frame), differenced."""
    diff = build_dataset(tiny_demo_args(tiny_demo, "--clip-input", "diff", "--stride", "2"), "trainval",
                         RECIPES[sampler], uint8=True)
    rgb = build_dataset(tiny_demo_args(tiny_demo, "--num-frames", "9", "--stride", "2"), "trainval", RECIPES[sampler],
                        uint8=True)
    key = "clip" if sampler == "finetune" else "clips"
    for index in (0, 5):
        a, b = diff[index], rgb[index]
        assert torch.equal(a[key], b[key]) and a[key].shape[-3] == 9  # T + 1 decoded frames
        network = diff.to_device({key: a[key]}, CPU)[key]
        assert network.shape[-3] == 8
        torch.testing.assert_close(network, frame_differences(rgb.to_device({key: b[key]}, CPU)[key]))


def test_diff_refused_where_the_input_is_fixed_elsewhere(tiny_demo):
    with pytest.raises(ValueError, match="IIC's views"):
        build_dataset(tiny_demo_args(tiny_demo, "--clip-input", "diff"), "trainval", RECIPES["iic"])
    with pytest.raises(ValueError, match="IIC's views are fixed"):  # before any work: run_cli prints one line
        train_ssl.main(train_ssl.parse_args(tiny_demo_flags(tiny_demo) + [
            "--model", "iic", "--clip-input", "diff", "--output-dir", str(tiny_demo / "refused"), "--dry-run"]))


def test_checkpoint_records_the_input_and_every_consumer_takes_it(tiny_demo, tmp_path):
    flags = tiny_demo_flags(tiny_demo) + ["--device", "cpu", "--amp", "none", "--stride", "2"]
    pretrain = tmp_path / "pretrain"
    train_ssl.main(train_ssl.get_args_parser().parse_args(flags + [
        "--output-dir", str(pretrain), "--model", "simclr", "--mode", "clip-sr-tc", "--net", "r3d", "--base-width",
        "8", "--batch-size", "2", "--epochs", "1", "--max-iters-per-epoch", "1", "--clip-input", "diff"]))
    ckpt = torch.load(pretrain / "checkpoint.pth", weights_only=True)
    assert ckpt["config"]["clip_input"] == "diff"

    finetuned = finetune.main(finetune.get_args_parser().parse_args(flags + [
        "--pretrain", str(pretrain / "checkpoint.pth"), "--output-dir", str(tmp_path / "ft"), "--batch-size", "3",
        "--steps", "2", "--val-freq", "0"]))
    ft_config = json.loads((tmp_path / "ft" / "config.json").read_text())["config"]
    assert ft_config["clip_input"] == "diff"  # taken from the pretraining checkpoint without being told
    # --steps 2 on 4 iterations per epoch: one epoch cut short after 2 optimizer steps
    assert (finetuned["steps"], finetuned["epochs"], ft_config["resolved"]["steps"]) == (2, 1, 2)
    assert torch.load(finetuned["last_checkpoint"], weights_only=True)["global_step"] == 2
    report = test_script.main(test_script.get_args_parser().parse_args(flags[:-2] + [
        "--ckpt", finetuned["last_checkpoint"], "--output-dir", str(tmp_path / "test")]))
    assert report["config"]["clip_input"] == "diff" and report["config"]["stride"] == 2

    results = retrieve.main(retrieve.get_args_parser().parse_args(flags + [
        "--ckpt", str(pretrain / "checkpoint.pth"), "--output-dir", str(tmp_path / "ret"), "--num-examples", "0",
        "--no-tsne"]))
    assert results["config"]["clip_input"] == "diff"
    # the features are those of the differences: recompute one gallery video by hand
    gallery = np.load(tmp_path / "ret" / "features_train.npz")
    dataset = build_dataset(tiny_demo_args(tiny_demo, "--clip-input", "diff", "--stride", "2"), "trainval",
                            RECIPES["eval"])
    from model.backbones import build_backbone
    from model.weights import load_backbone
    backbone, _ = build_backbone("r3d", 8)
    load_backbone(backbone, pretrain / "checkpoint.pth")
    backbone.eval()
    with torch.no_grad():
        clips = dataset.to_device({"clips": dataset[0]["clips"]}, CPU)["clips"]  # (10, 3, 8, 32, 32)
        expected = backbone(clips).mean(dim=(2, 3, 4)).mean(dim=0)
    np.testing.assert_allclose(gallery["features"][0], expected.numpy(), rtol=1e-4, atol=1e-5)

    with pytest.raises(ValueError, match="--ckpt colour-stats needs RGB clips"):  # a reference reads RGB
        retrieve.main(retrieve.get_args_parser().parse_args(flags + [
            "--ckpt", "colour-stats", "--clip-input", "diff", "--output-dir", str(tmp_path / "colour")]))


def test_embed_takes_the_checkpoints_input(tiny_demo, tmp_path):
    flags = tiny_demo_flags(tiny_demo) + ["--device", "cpu", "--amp", "none"]
    pretrain = tmp_path / "pretrain"
    train_ssl.main(train_ssl.get_args_parser().parse_args(flags + [
        "--output-dir", str(pretrain), "--model", "simclr", "--mode", "clip", "--net", "r3d", "--base-width", "8",
        "--batch-size", "2", "--epochs", "1", "--max-iters-per-epoch", "1", "--clip-input", "diff"]))
    videos = sorted(str(p) for p in (tiny_demo / "videos").rglob("*.avi"))[:2]
    listing = tmp_path / "videos.txt"
    listing.write_text("\n".join(videos) + "\n")
    out = tmp_path / "features.npz"
    embed.main(embed.get_args_parser().parse_args([
        "--ckpt", str(pretrain / "checkpoint.pth"), "--videos", str(listing), "--out", str(out), "--workers", "0",
        "--device", "cpu", "--amp", "none", "--clips", "2"]))
    with np.load(out) as data:
        config = json.loads(str(data["config"]))
        assert config["clip_input"] == "diff" and data["features"].shape[0] == 2


@pytest.mark.parametrize("clip_input", ["rgb", "diff"])
def test_reversal_sensitivity_of_a_network_plays_the_frames_backwards(tiny_demo, tmp_path, clip_input):
    from paper_scripts import random_init, reversal_sensitivity

    ckpt = tmp_path / "random.pth"
    random_init.main(random_init.get_args_parser().parse_args([
        "--net", "r3d", "--base-width", "8", "--num-frames", "8", "--size", "32", "--resize", "36", "48",
        "--clip-input", clip_input, "--out", str(ckpt)]))
    out = tmp_path / "reversal.json"
    result = reversal_sensitivity.main(reversal_sensitivity.get_args_parser().parse_args(
        tiny_demo_flags(tiny_demo)[:-2] + ["--ckpt", str(ckpt), "--num-videos", "0", "--stride", "1", "--out",
                                             str(out)]))
    assert json.loads(out.read_text()) == result
    assert result["clip_input"] == clip_input and result["num_videos"] == 6  # every test video
    # random weights are not blind to the arrow of time; a clip compared with itself would give 0
    assert 0.05 < result["reversal_sensitivity"] < 2
