"""Evaluation glue with probes (METHOD.md §7): 10-clip video scores, retrieval features, the splits that
the gallery, the queries, finetuning and validation read.

Clips encode their video and clip number, so a one-hot "model" shows whose clips made each score;
retrieval features are recomputed by hand (mean over clips, IIC's conv5 max-pool, the residual or flow
half of --merge); finetuning is run and every video it reads is logged.
"""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn

import finetune
import retrieve
from conftest import RECIPES
from dataset import video_dataset as vd
from dataset.build import build_dataset
from dataset.layout import VideoRecord, flow_frame_name, frame_name, read_split_csv, write_class_index, write_split_csv
from dataset.splits import holdout_split
from evaluation.inference import classify_videos
from model.backbones import build_backbone

MEAN = (0.485, 0.456, 0.406)  # ImageNet, METHOD.md §3
STD = (0.229, 0.224, 0.225)
CLASSES = ["Clap", "Jump", "Wave"]
NUM_CLIPS = 10
NUM_FRAMES = 14
HW = (36, 48)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- 10-clip scores

class ProbeClips(torch.utils.data.Dataset):
    """Video v's clip c is filled with channel 0 = v, channel 1 = c (as the eval sampler's "clips")."""

    def __init__(self, num_videos: int):
        self.num_videos = num_videos

    def __len__(self):
        return self.num_videos

    def __getitem__(self, v):
        clips = torch.zeros(NUM_CLIPS, 3, 2, 3, 3)
        clips[:, 0] = v
        clips[:, 1] = torch.arange(NUM_CLIPS, dtype=torch.float32).view(NUM_CLIPS, 1, 1, 1)
        return {"clips": clips, "index": v, "label": v % len(CLASSES)}


def voted_class(video: int, clip: int) -> int:
    """The class clip c of video v votes for: its own label for 7 clips, then other classes."""
    return video % len(CLASSES) if clip < 7 else (video + clip) % len(CLASSES)


class OneHotModel(nn.Module):
    """Reads the video and clip number off each clip: logits = 3 · one-hot(voted_class)."""

    def forward(self, clips):  # (N, 3, T, H, W)
        votes = [voted_class(int(v), int(c)) for v, c in zip(clips[:, 0, 0, 0, 0], clips[:, 1, 0, 0, 0])]
        return 3.0 * torch.nn.functional.one_hot(torch.tensor(votes), len(CLASSES)).float()


@pytest.mark.parametrize("aggregate", ["softmax", "logits"])
def test_each_video_score_comes_from_its_own_ten_clips(aggregate):
    num_videos = 7  # batches of 3, 3 and 1
    scores = classify_videos(OneHotModel(), ProbeClips(num_videos), prepare=lambda x: x, aggregate=aggregate,
                             batch_size=3, workers=0, device=torch.device("cpu"))
    assert scores.shape == (num_videos, len(CLASSES))
    for v in range(num_videos):
        expected = np.zeros(len(CLASSES))
        for c in range(NUM_CLIPS):
            logits = np.zeros(len(CLASSES))
            logits[voted_class(v, c)] = 3.0
            expected += (np.exp(logits) / np.exp(logits).sum() if aggregate == "softmax" else logits) / NUM_CLIPS
        np.testing.assert_allclose(scores[v], expected, rtol=1e-5, atol=1e-6, err_msg=f"video {v}")


# ---------------------------------------------------------------- retrieval features by hand

def unnormalised(clip):
    return torch.stack([clip[c] * STD[c] + MEAN[c] for c in range(3)])


def residual_by_hand(clip):
    """(3, T, H, W) normalised clip -> (x_t − x_{t−1} + 1) / 2 on [0, 1] pixels, r_0 from the last frame."""
    x = unnormalised(clip)
    frames = x.shape[1]
    return torch.stack([(x[:, t] - x[:, (t - 1) % frames] + 1) / 2 for t in range(frames)], dim=1)


def conv5_by_hand(feature_map):
    """(C, T, H, W) -> max over (1, 2, 2) windows (the last ones partial when H or W is odd), flattened."""
    channels, frames, height, width = feature_map.shape
    pooled = torch.empty(channels, frames, (height + 1) // 2, (width + 1) // 2)
    for i in range(pooled.shape[2]):
        for j in range(pooled.shape[3]):
            pooled[:, :, i, j] = feature_map[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].amax(dim=(2, 3))
    return pooled.flatten()


def clip_feature_by_hand(backbone, clip, layer):
    feature_map = backbone(clip.unsqueeze(0))[0]  # (C, T', H', W')
    return feature_map.mean(dim=(1, 2, 3)) if layer == "pool" else conv5_by_hand(feature_map)


def video_feature_by_hand(backbone, clips, layer, second_view=None):
    """Mean over the video's clips; with ``second_view`` (clips of the other view) the two halves."""
    first = torch.stack([clip_feature_by_hand(backbone, clip, layer) for clip in clips]).mean(dim=0)
    if second_view is None:
        return first
    second = torch.stack([clip_feature_by_hand(backbone, clip, layer) for clip in second_view]).mean(dim=0)
    return torch.cat([first, second])


@pytest.mark.parametrize("layer", ["pool", "conv5"])
@pytest.mark.parametrize("merge", [False, True])
def test_video_features_equal_a_hand_computation(layer, merge):
    torch.manual_seed(0)
    backbone, _ = build_backbone("r3d", 4)
    backbone.eval()
    clips = torch.randn(2, 3, 3, 8, 40, 40)  # (B, n_clips, 3, T, H, W): conv5 of 5x5, odd
    with torch.no_grad():
        got = retrieve.video_features(backbone, clips, layer, merge)
        for video, video_clips in zip(got, clips):
            second = torch.stack([residual_by_hand(clip) for clip in video_clips]) if merge else None
            expected = video_feature_by_hand(backbone, video_clips, layer, second)
            torch.testing.assert_close(video, expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- the splits of retrieval and finetuning

def write_jpeg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    path.write_bytes(encoded.tobytes())


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """3 classes; train: 4 videos per class (g01-g04), test: 1 per class (g05); RGB frames and u / v flow."""
    root = tmp_path_factory.mktemp("eval_glue")
    rng = np.random.default_rng(0)
    splits = {"train": [], "test": []}
    for label, name in enumerate(CLASSES):
        for group in range(1, 6):
            rel = f"{name}/v_{name}_g{group:02d}_c01"
            base = rng.integers(0, 256, (*HW, 3))
            for t in range(NUM_FRAMES):
                write_jpeg(root / "frames" / rel / frame_name(t), ((base + 9 * t) % 256).astype(np.uint8))
                if t < NUM_FRAMES - 1:
                    for component, channel in (("u", 0), ("v", 1)):
                        write_jpeg(root / "flow" / component / rel / flow_frame_name(t),
                                   ((255 - base[..., channel] + 5 * t) % 256).astype(np.uint8))
            splits["train" if group < 5 else "test"].append(VideoRecord(rel, NUM_FRAMES, label))
    for split, records in splits.items():
        write_split_csv(root / "csv" / f"{split}_split01.csv", records)
    write_class_index(root / "csv" / "ClassInd.txt", CLASSES)
    return root


def data_flags(root: Path) -> list[str]:
    return ["--dataset", str(root / "csv"), "--flow-root", str(root / "flow"), "--num-frames", "4", "--size", "32",
            "--resize", *map(str, HW), "--workers", "0", "--device", "cpu"]


def record_reads(monkeypatch):
    """(sampler, modality, video) for every item any dataset gives."""
    reads = []
    real_getitem = vd.VideoFrameDataset.__getitem__

    def getitem(self, index):
        reads.append((self.recipe.name, self.modality, self.records[index].frame_dir))
        return real_getitem(self, index)

    monkeypatch.setattr(vd.VideoFrameDataset, "__getitem__", getitem)
    return reads


def csv_videos(root: Path, split: str) -> list[str]:
    return [record.frame_dir for record in read_split_csv(root / "csv" / f"{split}_split01.csv")]


@pytest.mark.parametrize("merge_modality", ["res", "u"])
def test_retrieval_gallery_is_train_queries_are_test_and_features_match(small_set, tmp_path, monkeypatch,
                                                                      merge_modality):
    torch.manual_seed(0)
    backbone, _ = build_backbone("r3d", 4)
    ckpt = tmp_path / "pretrain.pth"
    torch.save({"model": {f"encoder.backbone.{k}": v for k, v in backbone.state_dict().items()},
                "config": {"net": "r3d", "base_width": 4}}, ckpt)
    reads = record_reads(monkeypatch)
    out = tmp_path / "retrieval"
    retrieve.main(retrieve.get_args_parser().parse_args(
        data_flags(small_set) + ["--ckpt", str(ckpt), "--output-dir", str(out), "--batch-size", "2", "--layer",
                                 "conv5", "--merge", "--merge-modality", merge_modality, "--stride", "1",
                                 "--num-examples", "0", "--no-tsne", "--amp", "none"]))  # an fp32 reference below
    train_videos, test_videos = csv_videos(small_set, "train"), csv_videos(small_set, "test")
    assert sorted(train_videos) == sorted(set(train_videos)) and not set(train_videos) & set(test_videos)
    saved = json.loads((out / "retrieval.json").read_text())
    assert (saved["num_gallery"], saved["num_queries"]) == (len(train_videos), len(test_videos))

    backbone.eval()
    for split, videos in (("train", train_videos), ("test", test_videos)):
        exported = np.load(out / f"features_{split}.npz")
        assert exported["video_ids"].tolist() == videos  # gallery = the whole train split, queries = test
        args = retrieve.get_args_parser().parse_args(data_flags(small_set) + ["--ckpt", str(ckpt), "--stride", "1"])
        rgb = build_dataset(args, "trainval" if split == "train" else "test", RECIPES["eval"], modality="rgb")
        flow = build_dataset(args, "trainval" if split == "train" else "test", RECIPES["eval"], modality="u") \
            if merge_modality == "u" else None
        for row, features in enumerate(exported["features"]):
            clips = rgb[row]["clips"]
            second = (torch.stack([residual_by_hand(clip) for clip in clips]) if merge_modality == "res"
                      else flow[row]["clips"])  # flow clips: [0, 1], not normalised
            with torch.no_grad():
                expected = video_feature_by_hand(backbone, clips, "conv5", second)
            np.testing.assert_allclose(features, expected.numpy(), rtol=1e-4, atol=1e-5, err_msg=f"{split} {row}")
    sources = {(sampler, modality) for sampler, modality, _ in reads}
    assert sources == ({("eval", "rgb")} | ({("eval", "u")} if merge_modality == "u" else set()))


def test_finetuning_trains_on_the_train_split_minus_the_holdout_and_validates_on_the_holdout(
        small_set, tmp_path, monkeypatch):
    reads = record_reads(monkeypatch)
    finetune.main(finetune.get_args_parser().parse_args(
        data_flags(small_set) + ["--pretrain", "none", "--net", "r3d", "--base-width", "4", "--output-dir",
                                 str(tmp_path), "--batch-size", "1", "--epochs", "1", "--schedule", "1",
                                 "--val-size", "3", "--log-every", "100"]))
    train_videos = csv_videos(small_set, "train")
    trained = [video for sampler, _, video in reads if sampler == "finetune"]
    validated = [video for sampler, _, video in reads if sampler == "eval"]
    assert sorted(validated) == sorted(set(validated)) and len(validated) == 3  # the --val-size 3 hold-out
    # batch size 1: every training video is read once in the epoch, and none of the hold-out
    assert sorted(trained) == sorted(set(train_videos) - set(validated))
    _, held_out = holdout_split(read_split_csv(small_set / "csv" / "train_split01.csv"), 3)
    assert set(validated) == {record.frame_dir for record in held_out}
