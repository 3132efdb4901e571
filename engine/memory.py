"""Peak GPU memory of a pretraining step, estimated from the clip shape, the batch and the backbone passes.

The activations that autograd keeps for backward are counted exactly by running one clip through the backbone
on the meta device (no memory, no compute) with a saved-tensor hook; a step keeps them for every clip that
gets gradients. With --grad-checkpoint a step keeps only each backbone stage's input for every such clip, and
while the backward pass recomputes one stage, that stage's activations for the clips of one backbone call (its
largest); both are counted the same way, stage by stage. Weights, gradients and optimizer state come on top. Not counted: cuDNN workspaces, the
transient memory of the no-gradient passes (MoCo's keys, IIC's intra-negative), the heads and the losses, and
the allocator's fragmentation, together typically 10-30 % more, hence the margin below.
"""

from __future__ import annotations

import argparse

import torch

from model import build_method
from model.backbones import build_backbone

GIB = 2**30
MARGIN = 1.25  # for what the estimate leaves out (see the module docstring)
HALF_PRECISION = ("bf16", "fp16")


def _meta_backbone(net: str, base_width: int, num_frames: int, size: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The backbone in training mode and one (1, 3, T, size, size) fp32 clip, on the meta device."""
    with torch.device("meta"):
        backbone, _ = build_backbone(net, base_width)
        clip = torch.empty(1, 3, num_frames, size, size)
    return backbone.train(), clip


def _saved_bytes(module: torch.nn.Module, x: torch.Tensor, parameters: set[int]) -> tuple[torch.Tensor, int]:
    """``module(x)`` and the bytes autograd saves for its backward, the storages of ``parameters`` excluded and
    every storage counted once."""
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in parameters:
            saved[storage._cdata] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = module(x)
    return out, sum(saved.values())


def saved_activation_bytes(net: str, base_width: int, num_frames: int, size: int) -> int:
    """Bytes autograd saves for backward in one training-mode forward of one (3, T, size, size) fp32 clip,
    parameters excluded, each storage counted once."""
    backbone, clip = _meta_backbone(net, base_width, num_frames, size)
    return _saved_bytes(backbone, clip, {p.untyped_storage()._cdata for p in backbone.parameters()})[1]


def stage_activation_bytes(net: str, base_width: int, num_frames: int, size: int) -> list[tuple[int, int]]:
    """Per backbone stage (model.backbones ``stages``) of one training-mode forward of one (3, T, size, size) fp32
    clip: (bytes of the stage's input, bytes autograd saves inside the stage), parameters excluded."""
    backbone, x = _meta_backbone(net, base_width, num_frames, size)
    parameters = {p.untyped_storage()._cdata for p in backbone.parameters()}
    stages = []
    for stage in backbone.stages():
        out, saved = _saved_bytes(stage, x, parameters)
        stages.append((x.untyped_storage().nbytes(), saved))
        x = out
    return stages


def clips_with_gradient(args: argparse.Namespace) -> int:
    """Backbone passes per video that keep activations for backward, as the method of ``args`` states them
    (METHOD.md §5-6)."""
    with torch.device("meta"):
        return build_method(args).clips_with_gradient


def pretraining_memory(args: argparse.Namespace, method: torch.nn.Module, amp: str = "none") -> dict:
    """The estimate for one process of train_ssl.py, in GiB, with --grad-checkpoint as ``args`` has it and the
    peaks with it and without. ``amp`` as resolved (none / bf16 / fp16), or auto, counted as 16 bits since auto is
    bf16 or fp16 on every GPU."""
    halve = 2 if amp in (*HALF_PRECISION, "auto") else 1  # autocast saves the convolutions' inputs in 16 bits
    per_clip = saved_activation_bytes(args.net, args.base_width, args.num_frames, args.size) // halve
    stages = stage_activation_bytes(args.net, args.base_width, args.num_frames, args.size)
    kept_per_clip = sum(inputs for inputs, _ in stages) // halve
    recomputed_per_clip = max(saved for _, saved in stages) // halve
    passes = method.clips_with_gradient
    activations = {False: per_clip * passes * args.batch_size,
                   True: kept_per_clip * passes * args.batch_size
                   + recomputed_per_clip * method.clips_in_largest_pass * args.batch_size}
    trainable = sum(p.numel() for p in method.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in method.parameters() if not p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in method.buffers())
    state = 3 * 4 * trainable + 4 * frozen + buffers  # weights, gradients, SGD momentum / AdamW's first moment
    if args.optimizer == "adamw":
        state += 4 * trainable  # AdamW's second moment
    checkpointing = bool(getattr(args, "grad_checkpoint", False))
    peaks = {on: round(MARGIN * (activations[on] + state) / GIB, 1) for on in (False, True)}
    return {
        "clip": f"{args.num_frames}x{args.size}x{args.size}", "amp": amp, "batch_per_process": args.batch_size,
        "clips_with_gradient_per_video": passes, "grad_checkpoint": checkpointing,
        "activations_per_clip_gib": round(per_clip / GIB, 3),
        "activations_gib": round(activations[checkpointing] / GIB, 2),
        "weights_gradients_optimizer_gib": round(state / GIB, 2),
        "peak_per_gpu_gib": peaks[checkpointing],
        "peak_per_gpu_gib_with_grad_checkpoint": peaks[True],
        "peak_per_gpu_gib_without_grad_checkpoint": peaks[False],
        "note": f"activations counted exactly, plus {round(100 * (MARGIN - 1))} % for workspaces and fragmentation",
    }


def check_fits(estimate: dict, device: torch.device, world_size: int) -> None:
    """Refuse a CUDA run whose estimated peak exceeds the GPU's memory, naming the flags that make it fit."""
    if device.type != "cuda":
        return
    total = torch.cuda.get_device_properties(device).total_memory / GIB
    need = estimate["peak_per_gpu_gib"]
    if need <= total:
        return
    batch = estimate["batch_per_process"]
    fits = max(1, int(batch * total / need))
    checkpointed = estimate["peak_per_gpu_gib_with_grad_checkpoint"]
    checkpoint_advice = "" if estimate["grad_checkpoint"] else (
        f"add --grad-checkpoint (about {checkpointed} GiB per GPU{'' if checkpointed <= total else ', still too much'}; "
        "the same gradients, each backbone stage recomputed in the backward pass), ")
    raise ValueError(
        f"a step needs about {need} GiB per GPU ({batch} videos x {estimate['clips_with_gradient_per_video']} clips "
        f"of {estimate['clip']}, --amp {estimate['amp']}"
        f"{', --grad-checkpoint' if estimate['grad_checkpoint'] else ''}; see --dry-run), more than the {total:.0f} GiB "
        f"of {torch.cuda.get_device_name(device)}: {checkpoint_advice}run on more GPUs (the launchers keep the global "
        f"batch: NUM_GPUS=8 gives {batch * world_size // 8 or 1} per GPU), use --amp auto on a GPU with bf16, or "
        f"lower --batch-size to about {fits} (a smaller contrastive batch: fewer negatives, not the published recipe)")
