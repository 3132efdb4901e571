"""Checkpoints of the VCOP family of codebases (VCOP, IIC, DualVar, PRP, Pace, ...): their r3d, r21d, c3d and r3d_18
backbones have the module structure of ours under other names; ``load_vcop_backbone`` maps them and loads strictly."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn as nn

from utils.checkpoint_io import CheckpointError, few

# The VCOP family (VCOP, IIC, DualVar, PRP, Pace, ...) names the same tensors differently. This table maps
# the module path of one of our convs or BNs, relative to its residual block, to the family's. The stem
# counts as a block whose conv is conv1 (stem.0 -> conv1, stem.1 -> bn1); C3D's names are the family's.
VCOP_NAMES = {
    "conv1.0": "conv1.temporal_spatial_conv",  # R3D: one k×k×k conv
    "conv1.0.0": "conv1.spatial_conv",  # R(2+1)D: its factored conv (.0.2 is the parameter-free ReLU)
    "conv1.0.1": "conv1.bn",
    "conv1.0.3": "conv1.temporal_conv",
    "conv1.1": "bn1",
    "conv2.0": "conv2.temporal_spatial_conv",
    "conv2.0.0": "conv2.spatial_conv",
    "conv2.0.1": "conv2.bn",
    "conv2.0.3": "conv2.temporal_conv",
    "conv2.1": "bn2",
    "downsample.0": "downsampleconv.temporal_spatial_conv",
    "downsample.0.0": "downsampleconv.spatial_conv",
    "downsample.0.1": "downsampleconv.bn",
    "downsample.0.3": "downsampleconv.temporal_conv",
    "downsample.1": "downsamplebn",
}
VCOP_FAMILY_NETS = ("r3d", "r21d", "c3d", "r3d_18")
# keys of the family's backbone modules; anything else beside them (fc, linear, heads) is ignored
VCOP_BACKBONE_KEY = re.compile(r"(conv|bn)\d")


def vcop_name(key: str) -> str | None:
    """The family's name for our state-dict ``key``, or None where the family has no such tensor."""
    module, _, tensor = key.rpartition(".")
    if match := re.fullmatch(r"features\.((conv|bn)\w+)", module):  # C3D
        return f"{match[1]}.{tensor}"
    if match := re.fullmatch(r"stem\.(.+)", module):
        block, local = "", f"conv1.{match[1]}"
    elif match := re.fullmatch(r"layer(\d)\.(\d+)\.(.+)", module):
        # the family's first block of a stage is `block1`, the others `blocks.0`, `blocks.1`, ...
        index = int(match[2])
        block, local = f"conv{int(match[1]) + 1}." + ("block1." if index == 0 else f"blocks.{index - 1}."), match[3]
    else:
        return None
    return f"{block}{VCOP_NAMES[local]}.{tensor}" if local in VCOP_NAMES else None


def find_vcop_prefix(names: list[str], state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The prefix (``module.``, ``encoder_q.0.``, ``base_network.``, "", ...) under which ``state_dict``
    holds the most of the family names ``names``; on a tie, the one whose tensors come first."""
    anchor = names[0]
    candidates = [key[:-len(anchor)] for key in state_dict if key == anchor or key.endswith("." + anchor)]
    if not candidates:
        return None
    return max(candidates, key=lambda prefix: sum(prefix + name in state_dict for name in names))


def load_vcop_backbone(backbone: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Load a VCOP-family checkpoint's backbone into ``backbone`` (r3d, r21d, c3d or r3d_18), strictly.

    ``state_dict`` may hold the backbone under any prefix and other tensors beside it (heads, a
    momentum encoder). Returns a report: the prefix found, how many tensors were loaded and how many
    of the checkpoint's were left out. A checkpoint of another architecture or width raises
    CheckpointError naming the missing, unexpected and wrong-shape tensors.
    """
    ours = backbone.state_dict()
    theirs = {key: vcop_name(key) for key in ours}
    if None in theirs.values():
        raise ValueError(f"this {type(backbone).__name__} backbone has no counterpart in the VCOP family layout "
                         f"(tensor {next(k for k, v in theirs.items() if v is None)}); the family's networks are "
                         f"--net {', '.join(VCOP_FAMILY_NETS)}")
    names = list(theirs.values())
    prefix = find_vcop_prefix(names, state_dict)
    if prefix is None:
        raise CheckpointError(f"the checkpoint holds no tensor named like the family's {names[0]} under any prefix "
                              f"(its first keys are {few(list(state_dict))}): it is not a checkpoint of this "
                              "backbone; pass the --net (and --base-width) it was trained with")
    under_prefix = {key[len(prefix):] for key in state_dict if key.startswith(prefix)}
    missing = [name for name in names if name not in under_prefix]
    unexpected = sorted(name for name in under_prefix - set(names) if VCOP_BACKBONE_KEY.match(name))
    wrong_shape = [f"{prefix}{name} {tuple(state_dict[prefix + name].shape)} vs {tuple(ours[key].shape)}"
                   for key, name in theirs.items()
                   if name in under_prefix and state_dict[prefix + name].shape != ours[key].shape]
    if missing or unexpected or wrong_shape:
        problems = [f"{label}: {few(keys)}" for label, keys in
                    (("missing", missing), ("unexpected", unexpected),
                     ("wrong shape (checkpoint vs model)", wrong_shape)) if keys]
        raise CheckpointError(f"the VCOP-family backbone under prefix {prefix!r} does not fit the "
                              f"{type(backbone).__name__} built here ({'; '.join(problems)}): pass the --net and "
                              "--base-width it was trained with")
    backbone.load_state_dict({key: state_dict[prefix + name] for key, name in theirs.items()}, strict=True)
    return {"prefix": prefix, "loaded_tensors": len(theirs), "ignored_tensors": len(state_dict) - len(theirs)}
