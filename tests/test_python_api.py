"""Methods and the classifier built from Python with explicit arguments, without argparse: the same modules as
train_ssl.py's and finetune.py's flags build, and the README's example, which trains DualVar for one step."""

import argparse
import re
from pathlib import Path

import pytest
import torch

from model import add_method_args, build_method
from model.backbones import build_backbone
from model.classifier import VideoClassifier
from model.dualvar import MoCoDualVar, SimCLRDualVar
from model.iic import IIC

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def from_flags(*argv: str, num_videos: int | None = None):
    parser = argparse.ArgumentParser()
    add_method_args(parser)
    torch.manual_seed(0)
    return build_method(parser.parse_args(["--net", "r3d", "--base-width", "4", *argv]), num_videos=num_videos)


def built_in_python(make):
    torch.manual_seed(0)
    return make(build_backbone("r3d", 4)[0])


def assert_same_modules(a: torch.nn.Module, b: torch.nn.Module) -> None:
    assert type(a) is type(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("argv, make", [
    (["--mode", "clip-sr-tc"], lambda backbone: SimCLRDualVar(backbone, mode="clip-sr-tc")),
    (["--mode", "clip", "--temperature", "0.2", "--embed-dim", "16"],
     lambda backbone: SimCLRDualVar(backbone, mode="clip", temperature=0.2, embed_dim=16)),
    (["--model", "moco", "--mode", "clip-tc", "--moco-k", "32", "--series-dim", "8"],
     lambda backbone: MoCoDualVar(backbone, mode="clip-tc", moco_k=32, series_dim=8)),
])
def test_dualvar_from_python_is_the_method_of_the_flags(argv, make):
    python, flags = built_in_python(make), from_flags(*argv)
    assert_same_modules(python, flags)
    assert (python.loss_weights, python.num_views, python.clips_with_gradient) == \
        (flags.loss_weights, flags.num_views, flags.clips_with_gradient)
    assert (python.temperature, python.n_series) == (flags.temperature, flags.n_series)


def test_iic_from_python_is_the_method_of_the_flags():
    python = built_in_python(lambda backbone: IIC(backbone, num_videos=6, intra_neg="shuffle", bank_k=8,
                                                  l2norm=True))
    flags = from_flags("--model", "iic", "--intra-neg", "shuffle", "--bank-k", "8", "--iic-l2norm", num_videos=6)
    assert_same_modules(python, flags)
    assert (python.intra_neg, python.k, python.l2norm, python.banks.num_videos) == ("shuffle", 8, True, 6)


def test_classifier_from_a_backbone_is_the_one_of_the_flags():
    torch.manual_seed(0)
    python = VideoClassifier(build_backbone("r3d", 4)[0], num_classes=5, frozen_backbone=True)
    torch.manual_seed(0)
    assert_same_modules(python, VideoClassifier.build("r3d", 4, 5, frozen_backbone=True))
    assert not any(p.requires_grad for p in python.backbone.parameters())


def test_the_readme_example_trains_dualvar_one_step():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "the README has one Python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    method, out = namespace["method"], namespace["out"]
    assert {"loss_clip", "loss_sr", "loss_tc"} <= set(out)
    gradients = [p.grad for p in method.backbone.parameters()]
    assert all(g is not None for g in gradients) and any(g.abs().sum() > 0 for g in gradients)
    assert "argparse" not in blocks[0]
