"""What the network sees of a clip: its RGB frames (the papers' input) or their frame differences.

``--clip-input diff`` decodes T + 1 frames at the clip's stride, augments them as one clip (one crop, one colour
jitter, one blur for all of them), and feeds the T differences x_t − x_{t−1} of consecutive sampled frames,
taken on the ImageNet-normalised clip (the channel mean cancels: the [0, 1] pixel difference over the ImageNet
standard deviation). Appearance that does not move cancels too, so a network sees motion first; on the demo
data a network fed differences learns the arrow of time that the same network fed RGB does not learn at a
CPU's budget (docs/miniature.md).

The difference is one function, ``frame_differences``, shared with IIC's residual view (model/iic.py) and with
the raw residual of IIC's finetuning (``--modality res``), which take it circularly on T frames instead.
"""

from __future__ import annotations

import torch

from dataset.layout import FLOW_COMPONENTS

CLIP_INPUTS = ("rgb", "diff")
# What a clip is made of (--modality): "rgb" its frames; "res" IIC's residual frames, which the models take from the
# RGB frames (model/iic.py, model/classifier.py); "u" / "v" one optical-flow component, which the dataset reads
# instead of RGB.
MODALITIES = ("rgb", "res", *FLOW_COMPONENTS)
FLOW_MODALITIES = FLOW_COMPONENTS
TIME_DIM = -3  # clips are (..., 3, T, H, W)


def check_clip_input(clip_input: str) -> None:
    if clip_input not in CLIP_INPUTS:
        raise ValueError(f"--clip-input {clip_input!r}: choose one of {', '.join(CLIP_INPUTS)}")


def frames_to_decode(num_frames: int, clip_input: str) -> int:
    """Frames a sampler draws for a network clip of ``num_frames`` frames: one more for differences."""
    check_clip_input(clip_input)
    return num_frames + 1 if clip_input == "diff" else num_frames


def frame_differences(clips: torch.Tensor, wrap: bool = False) -> torch.Tensor:
    """x_t − x_{t−1} along time of clips (..., 3, T, H, W).

    Without ``wrap`` the first frame has no predecessor and is dropped: T frames give T − 1 differences. With
    ``wrap`` frame 0 takes the last frame as its predecessor (a circular shift), so T frames give T.
    """
    if wrap:
        return clips - torch.roll(clips, shifts=1, dims=TIME_DIM)
    return clips.narrow(TIME_DIM, 1, clips.shape[TIME_DIM] - 1) - clips.narrow(TIME_DIM, 0, clips.shape[TIME_DIM] - 1)


def to_network_input(clips: torch.Tensor, clip_input: str) -> torch.Tensor:
    """The network's input from decoded, augmented, normalised clips (..., 3, frames_to_decode(T), H, W)."""
    check_clip_input(clip_input)
    return frame_differences(clips) if clip_input == "diff" else clips
