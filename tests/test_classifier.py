"""model/classifier.py: strict backbone loading from every kind of checkpoint, the linear-probe guard,
and the residual inputs."""

import argparse

import pytest
import torch

from dataset.clip_input import frame_differences
from dataset.transforms import IMAGENET_MEAN, IMAGENET_STD
from engine.training import build_optimizer
from model import add_method_args, build_method
from model.backbones import build_backbone
from model.classifier import VideoClassifier, assert_unchanged, check_modality, prepare_input, snapshot
from model.features import residual_view
from model.weights import load_backbone
from utils.checkpoint_io import CheckpointError, save_checkpoint


def method(model="simclr", base_width=8):
    parser = argparse.ArgumentParser()
    add_method_args(parser)
    args = parser.parse_args(["--model", model, "--net", "r3d", "--base-width", str(base_width), "--moco-k", "8"])
    torch.manual_seed(0)
    return build_method(args), vars(args)


def save(tmp_path, state, config, name="ckpt.pth"):
    path = tmp_path / name
    save_checkpoint({"model": state, "config": config}, path)
    return path


def assert_same(module, reference):
    for key, value in module.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_pretraining_checkpoint_loads_every_backbone_tensor(tmp_path):
    pretrained, config = method()
    path = save(tmp_path, pretrained.state_dict(), config)
    backbone, _ = build_backbone("r3d", 8)
    loaded = load_backbone(backbone, path)
    assert loaded == len(backbone.state_dict()) > 0
    assert_same(backbone, pretrained.backbone.state_dict())


def test_ddp_prefixed_keys_load(tmp_path):
    pretrained, config = method()
    path = save(tmp_path, {f"module.{k}": v for k, v in pretrained.state_dict().items()}, config)
    backbone, _ = build_backbone("r3d", 8)
    load_backbone(backbone, path)
    assert_same(backbone, pretrained.backbone.state_dict())


def test_moco_loads_the_query_encoder_never_the_key_encoder(tmp_path):
    pretrained, config = method("moco")
    with torch.no_grad():
        for p in pretrained.key_encoder.parameters():
            p.add_(1.0)  # key encoder now differs from the query encoder
    path = save(tmp_path, pretrained.state_dict(), config)
    backbone, _ = build_backbone("r3d", 8)
    load_backbone(backbone, path)
    assert_same(backbone, pretrained.encoder.backbone.state_dict())


def test_finetuned_classifier_checkpoint_loads(tmp_path):
    torch.manual_seed(1)
    classifier = VideoClassifier.build("r3d", 8, num_classes=3)
    path = save(tmp_path, classifier.state_dict(), {"net": "r3d", "base_width": 8})
    backbone, _ = build_backbone("r3d", 8)
    load_backbone(backbone, path)
    assert_same(backbone, classifier.backbone.state_dict())


def test_wrong_architecture_is_refused_with_the_flags_it_was_written_with(tmp_path):
    pretrained, config = method(base_width=8)
    path = save(tmp_path, pretrained.state_dict(), config)
    backbone, _ = build_backbone("r3d", 16)
    with pytest.raises(CheckpointError, match=r"wrong shape.*--net r3d --base-width 8") as error:
        load_backbone(backbone, path, net="r3d", base_width=16)
    assert str(path) in str(error.value)
    other, _ = build_backbone("r21d", 8)
    with pytest.raises(CheckpointError, match=r"missing: .*unexpected: "):
        load_backbone(other, path, net="r21d", base_width=8)


def test_missing_or_unexpected_tensor_is_refused(tmp_path):
    pretrained, config = method()
    state = pretrained.state_dict()
    dropped = "encoder.backbone.layer4.0.conv2.1.running_var"
    path = save(tmp_path, {k: v for k, v in state.items() if k != dropped}, config, "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing: layer4\.0\.conv2\.1\.running_var"):
        load_backbone(build_backbone("r3d", 8)[0], path)
    path = save(tmp_path, {**state, "encoder.backbone.extra.weight": torch.zeros(2)}, config, "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected: extra\.weight"):
        load_backbone(build_backbone("r3d", 8)[0], path)
    path = save(tmp_path, {"head.weight": torch.zeros(2)}, config, "nobackbone.pth")
    with pytest.raises(CheckpointError, match=r"no backbone tensors.*head\.weight"):
        load_backbone(build_backbone("r3d", 8)[0], path)


def test_linear_probe_keeps_every_backbone_tensor_and_the_guard_fires(tmp_path):
    torch.manual_seed(0)
    classifier = VideoClassifier.build("r3d", 8, num_classes=3, frozen_backbone=True)
    reference = snapshot(classifier.backbone)
    head = snapshot(classifier.fc)
    optimizer = build_optimizer(classifier, argparse.Namespace(optimizer="sgd", lr=0.5, momentum=0.9,
                                                               weight_decay=1e-3))
    classifier.train()
    assert not classifier.backbone.training and classifier.fc.training
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(classifier(torch.randn(2, 3, 8, 32, 32)), torch.tensor([0, 2]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert_unchanged(classifier.backbone, reference)  # BatchNorm statistics included
    with pytest.raises(AssertionError):
        assert_unchanged(classifier.fc, head)  # the head did train
    with torch.no_grad():
        classifier.backbone.stem[1].running_mean.add_(0.1)
    with pytest.raises(AssertionError, match=r"frozen backbone changed.*stem\.1\.running_mean"):
        assert_unchanged(classifier.backbone, reference)


def test_residual_inputs():
    pixels = torch.rand(2, 3, 4, 5, 6)  # (B, 3, T, H, W) in [0, 1]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    normalised = (pixels - mean) / std
    previous = torch.cat([pixels[:, :, -1:], pixels[:, :, :-1]], dim=2)  # frame 0 uses the last frame
    torch.testing.assert_close(residual_view(normalised), (pixels - previous + 1) / 2)
    torch.testing.assert_close(prepare_input(normalised, "res"), (pixels - previous) / std)
    assert prepare_input(normalised, "rgb") is normalised
    assert torch.equal(frame_differences(normalised, wrap=True)[:, :, 1], normalised[:, :, 1] - normalised[:, :, 0])
    flow = torch.rand(2, 3, 4, 5, 6)  # flow clips arrive from the dataset as network input
    assert prepare_input(flow, "u") is flow and prepare_input(flow, "v") is flow
    with pytest.raises(ValueError, match="--modality 'w'"):
        check_modality("w")
