"""Where a backbone's weights come from: a checkpoint of this project (``--ckpt`` / ``--pretrain``), a checkpoint of
the VCOP family (``--init-from``), or none. The flags, the "exactly one of" rule, and strict loading.

``load_backbone`` is strict on purpose (METHOD.md §10): a checkpoint whose backbone tensors do not
match the freshly built network one for one, by name and shape, is refused with a message naming
the keys, the file and the flags it was written with, instead of finetuning a random network.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn

from model.backbones import BACKBONES
from model.vcop import VCOP_FAMILY_NETS, load_vcop_backbone
from utils.checkpoint_io import CheckpointError, few, load_checkpoint, state_mismatch, why_unreadable
from utils.config import inherit_flags

# Where each kind of checkpoint of this project keeps its backbone (first match wins). A new method
# adds its prefix here. MoCo's `key_encoder.backbone.*` (the momentum encoder) never matches.
BACKBONE_PREFIXES = {
    "encoder.backbone.": "pretraining checkpoint (SimCLR / MoCo query encoder, IIC shared encoder)",
    "backbone.": "classifier checkpoint (finetune.py)",
}
DDP_PREFIX = "module."
FALLBACK_NET, FALLBACK_BASE_WIDTH = "r21d", 64
VCOP_KIND = "VCOP-family checkpoint"


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


def check_state_matches(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], what: str,
                        path: str | Path, ckpt: dict, built_with: str) -> None:
    """Raise CheckpointError naming a few missing, unexpected and wrong-shape tensors, if any."""
    problems = state_mismatch(expected, given)
    if not problems:
        return
    raise CheckpointError(f"the {what} in {path} does not fit the {built_with} built here ({problems}); "
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
                          f"{', '.join(BACKBONE_PREFIXES)}; its first keys are {few(sorted(state))}); "
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


def check_one_source(args: argparse.Namespace, flag: str = "--ckpt",
                     ours: str = "a checkpoint of this project") -> None:
    """Exactly one of ``flag`` (a checkpoint of this project: ``ours``) and --init-from."""
    if (getattr(args, flag.lstrip("-").replace("-", "_")) is None) == (args.init_from is None):
        raise ValueError(f"pass exactly one of {flag} ({ours}) and --init-from (a VCOP-family checkpoint)")


def read_source(args: argparse.Namespace, flag: str = "--ckpt", no_checkpoint: tuple[str, ...] = ()) -> dict:
    """The checkpoint of this project that ``flag`` names, read; ``{}`` when it names none (--init-from, or one of
    the values ``no_checkpoint``, such as ``--pretrain none``). --net and --base-width left unset take the values
    it was written with, else the fallbacks (a foreign checkpoint records none)."""
    path = getattr(args, flag.lstrip("-").replace("-", "_"), None)
    ckpt = {} if path is None or path in no_checkpoint else read_checkpoint(path, flag)
    inherit_flags(args, checkpoint_config(ckpt), {"net": FALLBACK_NET, "base_width": FALLBACK_BASE_WIDTH})
    return ckpt


def load_weights(backbone: nn.Module, args: argparse.Namespace, ckpt: dict, flag: str = "--ckpt") -> tuple[int, str]:
    """Load ``backbone`` from --init-from, else from the checkpoint ``ckpt`` that ``flag`` named (``read_source``);
    returns (tensors loaded, the kind of checkpoint)."""
    if getattr(args, "init_from", None) is not None:
        return init_from(backbone, args.init_from, args.net)["loaded_tensors"], VCOP_KIND
    path = getattr(args, flag.lstrip("-").replace("-", "_"))
    loaded = load_backbone(backbone, path, ckpt, args.net, args.base_width)
    return loaded, backbone_state(ckpt, path)[1]


