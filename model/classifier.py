"""The downstream model: a backbone with a linear head (finetuning, linear probing, the 10-clip test), its input
for each ``--modality``, and the linear-probe guard."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dataset.clip_input import MODALITIES, frame_differences
from model.backbones import build_backbone
from utils.checkpoint_io import few


class VideoClassifier(nn.Module):
    """Backbone → global average pool → dropout → Linear (init N(0, 0.01), bias 0).

    With ``frozen_backbone`` (linear probe) the backbone takes no gradient and stays in eval mode,
    so its BatchNorm statistics never move either.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, dropout: float = 0.0,
                 frozen_backbone: bool = False) -> None:
        super().__init__()
        self.backbone = backbone  # model.backbones: (B, 3, T, H, W) -> (B, C, T', H', W'), C = backbone.out_channels
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(backbone.out_channels, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)
        self.frozen_backbone = frozen_backbone
        if frozen_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    @classmethod
    def build(cls, net: str, base_width: int, num_classes: int, dropout: float = 0.0,
              frozen_backbone: bool = False) -> "VideoClassifier":
        """A classifier on a fresh ``--net`` backbone of ``--base-width``."""
        return cls(build_backbone(net, base_width)[0], num_classes, dropout, frozen_backbone)

    def train(self, mode: bool = True) -> "VideoClassifier":
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()
        return self

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        features = self.backbone(clips).mean(dim=(2, 3, 4))  # (B, C, T', H', W') -> (B, C)
        return self.fc(self.dropout(features))  # (B, num_classes)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every tensor of ``module``: parameters and buffers (BatchNorm statistics included)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module: nn.Module, reference: dict[str, torch.Tensor], what: str = "backbone") -> None:
    """The linear-probe guard: raise if any tensor of ``module`` differs from ``reference``."""
    current = module.state_dict()
    changed = sorted(k for k in reference if not torch.equal(current[k].cpu(), reference[k].cpu()))
    if changed or current.keys() != reference.keys():
        raise AssertionError(f"the frozen {what} changed during linear probing ({len(changed)} tensors, e.g. "
                             f"{few(changed)}); a parameter or BatchNorm buffer was updated although it "
                             "should be frozen")


def check_modality(modality: str, clip_input: str = "rgb") -> None:
    if modality not in MODALITIES:
        raise ValueError(f"--modality {modality!r}: choose one of {', '.join(MODALITIES)}")
    if modality != "rgb" and clip_input != "rgb":
        raise ValueError(f"--modality {modality} already makes the network's input from the RGB clip; it does not "
                         f"combine with --clip-input {clip_input}: leave one of them at rgb")


def prepare_input(clips: torch.Tensor, modality: str) -> torch.Tensor:
    """The network input for ``modality`` from the dataset's clips (..., 3, T, H, W).

    "rgb": the normalised RGB clips as they are. "res" is IIC's finetuning input, the raw residual
    x_t − x_{t−1}, taken on the normalised clip: the per-channel mean cancels, so this is the
    [0, 1]-pixel residual divided by the ImageNet std. "u" / "v": the dataset already gives flow clips
    in [0, 1] (built with that modality), the same input as IIC's pretraining view 2.
    """
    check_modality(modality)
    return frame_differences(clips, wrap=True) if modality == "res" else clips


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cross-entropy in fp32 plus the batch top-1 accuracy, the dict the training engine expects."""
    loss = F.cross_entropy(logits.float(), labels)
    accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
    return {"loss_ce": loss, "acc_top1": accuracy}
