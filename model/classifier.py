"""Downstream models: a backbone with a linear head, and loading a backbone from any checkpoint.

`load_backbone` is strict on purpose (METHOD.md §10): a checkpoint whose backbone tensors do not
match the freshly built network one for one, by name and shape, is refused with a message naming
the keys, the file and the flags it was written with, instead of finetuning a random network.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from dataset.clip_input import frame_differences
from dataset.transforms import IMAGENET_MEAN, IMAGENET_STD
from model.backbones import BACKBONES, VCOP_FAMILY_NETS, build_backbone, load_vcop_backbone
from utils.checkpoint_io import CheckpointError, load_checkpoint, why_unreadable

# Where each kind of checkpoint of this project keeps its backbone (first match wins). A new method
# adds its prefix here. MoCo's `key_encoder.backbone.*` (the momentum encoder) never matches.
BACKBONE_PREFIXES = {
    "encoder.backbone.": "pretraining checkpoint (SimCLR / MoCo query encoder, IIC shared encoder)",
    "backbone.": "classifier checkpoint (finetune.py)",
}
DDP_PREFIX = "module."
FALLBACK_NET, FALLBACK_BASE_WIDTH = "r21d", 64
# "rgb": the clip as the dataset gives it; "res": frame differences (see `prepare_input`); "u" / "v": one
# optical-flow component, which the dataset reads instead of RGB when built with that modality.
MODALITIES = ("rgb", "res", "u", "v")
FLOW_MODALITIES = ("u", "v")


def add_backbone_args(parser: argparse.ArgumentParser) -> None:
    """--net and --base-width, defaulting to the values stored in the loaded checkpoint."""
    group = parser.add_argument_group("backbone")
    group.add_argument("--net", default=None, choices=sorted(BACKBONES),
                       help=f"backbone; default: the --net the checkpoint was written with (else {FALLBACK_NET})")
    group.add_argument("--base-width", type=int, default=None,
                       help="width of the first backbone stage; default: the checkpoint's (else "
                            f"{FALLBACK_BASE_WIDTH}, the published networks)")


def checkpoint_config(ckpt: dict) -> dict:
    return ckpt.get("config") or {}


def resolve_backbone_args(args: argparse.Namespace, ckpt: dict | None) -> None:
    """Fill ``args.net`` / ``args.base_width`` left unset from the checkpoint's config, else the fallback."""
    config = checkpoint_config(ckpt) if ckpt is not None else {}
    if args.net is None:
        args.net = config.get("net", FALLBACK_NET)
    if args.base_width is None:
        args.base_width = config.get("base_width", FALLBACK_BASE_WIDTH)


def read_checkpoint(path: str | Path, flag: str = "--ckpt") -> dict:
    """A checkpoint of this project with a ``model`` state dict (errors name the file and the flag)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{flag} {path}: no such checkpoint file")
    ckpt = load_checkpoint(path, fix=f"pass another {flag}")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path} has no 'model' state dict: it is not a checkpoint of this project "
                              "(train_ssl.py or finetune.py writes one)")
    return ckpt


def strip_ddp_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the leading ``module.`` that a DistributedDataParallel-wrapped save puts on every key."""
    if state and all(k.startswith(DDP_PREFIX) for k in state):
        return {k[len(DDP_PREFIX):]: v for k, v in state.items()}
    return state


def _written_with(ckpt: dict) -> str:
    config = checkpoint_config(ckpt)
    if "net" not in config:
        return "its configuration does not record the backbone"
    return f"it was written with --net {config['net']} --base-width {config.get('base_width')}"


def _few(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def check_state_matches(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], what: str,
                        path: str | Path, ckpt: dict, built_with: str) -> None:
    """Raise CheckpointError naming a few missing, unexpected and wrong-shape tensors, if any."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong_shape = [f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}"
                   for k in sorted(set(expected) & set(given)) if given[k].shape != expected[k].shape]
    if not (missing or unexpected or wrong_shape):
        return
    problems = [f"{label}: {_few(keys)}" for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape (checkpoint vs model)", wrong_shape))
                if keys]
    raise CheckpointError(f"the {what} in {path} does not fit the {built_with} built here ({'; '.join(problems)}); "
                          f"{_written_with(ckpt)}: pass the same --net/--base-width (or leave them unset to take "
                          "the checkpoint's)")


def backbone_state(ckpt: dict, path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """The backbone tensors of ``ckpt`` with their prefix removed, and the kind of checkpoint."""
    state = strip_ddp_prefix(ckpt["model"])
    for prefix, kind in BACKBONE_PREFIXES.items():
        found = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if found:
            return found, kind
    raise CheckpointError(f"{path} holds no backbone tensors (no key starts with any of "
                          f"{', '.join(BACKBONE_PREFIXES)}; its first keys are {_few(sorted(state))}); "
                          "pass a checkpoint written by train_ssl.py or finetune.py")


def load_backbone(backbone: nn.Module, path: str | Path, ckpt: dict | None = None, net: str = "?",
                  base_width: int | str = "?") -> int:
    """Load the backbone tensors of checkpoint ``path`` into ``backbone``, strictly; returns how many."""
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    state, kind = backbone_state(ckpt, path)
    expected = backbone.state_dict()
    check_state_matches(expected, state, f"backbone of this {kind}", path, ckpt,
                        f"--net {net} --base-width {base_width} backbone")
    backbone.load_state_dict(state)
    return len(state)


# where other codebases' checkpoint files keep their state dict, when it is not the file itself
STATE_DICT_KEYS = ("state_dict", "model", "net")


def read_state_dict(path: str | Path, flag: str = "--init-from") -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint file written by any codebase: the file itself, or the dict it keeps
    under one of STATE_DICT_KEYS. Read with ``weights_only=True``; errors name the flag and the file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{flag} {path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several unrelated types for foreign or truncated files
        raise CheckpointError(f"{flag} {path}: cannot read it as a tensors-only checkpoint ({why_unreadable(e)}); "
                              "if it is a checkpoint you trust, load it yourself and torch.save its state dict "
                              "alone") from None
    for key in STATE_DICT_KEYS:
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    if not isinstance(ckpt, dict) or not any(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CheckpointError(f"{flag} {path} holds no state dict (neither at its top level nor under "
                              f"{', '.join(STATE_DICT_KEYS)})")
    return ckpt


def init_from(backbone: nn.Module, path: str | Path, net: str) -> dict:
    """--init-from: load the backbone of a VCOP-family checkpoint (VCOP, IIC, DualVar, ...); returns the report."""
    if net not in VCOP_FAMILY_NETS:
        raise ValueError(f"--init-from loads VCOP-family checkpoints, whose backbones are --net "
                         f"{', '.join(VCOP_FAMILY_NETS)}; --net {net} is not one of them")
    state = read_state_dict(path)  # its errors name the flag and the file
    try:
        report = load_vcop_backbone(backbone, state)
    except CheckpointError as error:
        raise CheckpointError(f"--init-from {path}: {error}") from None
    print(f"loaded {report['loaded_tensors']} backbone tensors from {path} (VCOP-family layout, prefix "
          f"{report['prefix']!r}; {report['ignored_tensors']} other tensors left out)", flush=True)
    return report


class VideoClassifier(nn.Module):
    """Backbone → global average pool → dropout → Linear (init N(0, 0.01), bias 0).

    With ``frozen_backbone`` (linear probe) the backbone takes no gradient and stays in eval mode,
    so its BatchNorm statistics never move either.
    """

    def __init__(self, net: str, base_width: int, num_classes: int, dropout: float = 0.0,
                 frozen_backbone: bool = False) -> None:
        super().__init__()
        self.backbone, channels = build_backbone(net, base_width)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(channels, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)
        self.frozen_backbone = frozen_backbone
        if frozen_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

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
                             f"{_few(changed)}); a parameter or BatchNorm buffer was updated although it "
                             "should be frozen")


def check_modality(modality: str, clip_input: str = "rgb") -> None:
    if modality not in MODALITIES:
        raise ValueError(f"--modality {modality!r}: choose one of {', '.join(MODALITIES)}")
    if modality != "rgb" and clip_input != "rgb":
        raise ValueError(f"--modality {modality} already makes the network's input from the RGB clip; it does not "
                         f"combine with --clip-input {clip_input}: leave one of them at rgb")


def unnormalize(clips: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised clips (..., 3, T, H, W) back to [0, 1] pixel values."""
    shape = (3, 1, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=clips.dtype, device=clips.device).view(shape)
    std = torch.tensor(IMAGENET_STD, dtype=clips.dtype, device=clips.device).view(shape)
    return clips * std + mean


def prepare_input(clips: torch.Tensor, modality: str) -> torch.Tensor:
    """The network input for ``modality`` from the dataset's clips (..., 3, T, H, W).

    "rgb": the normalised RGB clips as they are. "res" is IIC's finetuning input, the raw residual
    x_t − x_{t−1}, taken on the normalised clip: the per-channel mean cancels, so this is the
    [0, 1]-pixel residual divided by the ImageNet std. "u" / "v": the dataset already gives flow clips
    in [0, 1] (built with that modality), the same input as IIC's pretraining view 2.
    """
    check_modality(modality)
    return frame_differences(clips, wrap=True) if modality == "res" else clips


def residual_view(clips: torch.Tensor) -> torch.Tensor:
    """IIC's view 2 from normalised RGB clips: (x_t − x_{t−1} + 1) / 2 on [0, 1] pixels (METHOD.md §6)."""
    return (frame_differences(unnormalize(clips), wrap=True) + 1) / 2


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cross-entropy in fp32 plus the batch top-1 accuracy, the dict the training engine expects."""
    loss = F.cross_entropy(logits.float(), labels)
    accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
    return {"loss_ce": loss, "acc_top1": accuracy}
