"""Sampling recipes: what one item of a VideoFrameDataset holds, as data (METHOD.md §2-3).

A recipe names the frame-index sampler that draws a video's clips (``CLIP_SAMPLERS``, over dataset/sampling.py)
and the views made of them: which clip each view crops, with which augmentation of dataset/transforms.py, and
how often a view is only cropped. It also says whether the views are ImageNet-normalised, how a flow modality is
read, and what happens to a video that fails to decode. The methods declare their recipes next to their code
(model/dualvar.py, model/iic.py); the downstream protocols, finetuning and the 10-clip evaluation, are here.
VideoFrameDataset reads any of them, drawing every random number in the order the recipe lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dataset import sampling

NUM_EVAL_CLIPS = 10

# name -> (video length, rng, frames per clip, stride, clips) -> frame indices (clips, frames per clip). Looked up in
# the sampling module at each call.
CLIP_SAMPLERS: dict[str, Callable[..., np.ndarray]] = {
    "pair": lambda length, rng, frames, stride, clips: np.stack(
        sampling.dualvar_clip_pair(length, rng, frames, stride)),  # A and B, reversed together
    "consecutive": lambda length, rng, frames, stride, clips: sampling.iic_clip_indices(length, rng, frames)[None],
    "random_start": lambda length, rng, frames, stride, clips: sampling.finetune_clip_indices(
        length, rng, frames, stride)[None],
    "evenly_spaced": lambda length, rng, frames, stride, clips: sampling.eval_clip_indices(
        length, frames, stride, clips),  # draws nothing
}
# what a view does to its frames (ClipTransform recipes of dataset/transforms.py): "pretrain" crops, jitters
# the colours and blurs; "crop" only crops, to [0, 1] pixels; "finetune" crops, flips and jitters; "eval" takes
# the centre crop
AUGMENTATIONS = ("pretrain", "crop", "finetune", "eval")
# how a recipe reads a flow modality (--modality u / v): "none" refuses it; "beside" adds the clip's flow under
# "flow", cropped as the clip; "instead" makes the clips of flow (a flow view is cropped, and flipped when its
# augmentation flips, never colour-jittered)
FLOW_READS = ("none", "beside", "instead")


@dataclass(frozen=True)
class View:
    clip: int = 0  # which of the drawn clips the view is made of
    augment: str = "pretrain"  # one of AUGMENTATIONS
    crop_only_p: float = 0.0  # probability that a "pretrain" view is only cropped (no colour work, no blur)


@dataclass(frozen=True)
class SamplingRecipe:
    name: str  # recorded in a run's configuration ("sampler")
    clips: str  # one of CLIP_SAMPLERS
    views: tuple[View, ...]
    num_clips: int = 1  # clips drawn ("pair" draws 2)
    stacked: bool = False  # the views go to "clips" (V, 3, T, H, W); else the one view to "clip" (3, T, H, W)
    normalized: bool = True  # ImageNet-normalised RGB; False: [0, 1] pixels
    resize_once: bool = False  # views share frames: decode and resize each distinct frame once for all of them
    stride: int | None = None  # a fixed temporal stride whatever --stride says (None: --stride)
    flow: str = "none"  # one of FLOW_READS
    fixed_input: str | None = None  # the network input the recipe fixes, refusing --clip-input diff (None: any)
    replaces_bad_videos: bool = True  # a video that fails to decode is replaced by another of its class
    method: str = "downstream"  # whose recipe, for messages

    def __post_init__(self):
        if self.clips not in CLIP_SAMPLERS or self.flow not in FLOW_READS or \
                any(v.augment not in AUGMENTATIONS for v in self.views):
            raise ValueError(f"recipe {self.name!r}: unknown clip sampler, flow read or augmentation")
        if not self.views or (not self.stacked and len(self.views) != 1):
            raise ValueError(f"recipe {self.name!r}: one view unless the views are stacked")


# finetuning: one clip at --stride from a random start, cropped, flipped and jittered (METHOD.md §7)
FINETUNE = SamplingRecipe("finetune", "random_start", views=(View(augment="finetune"),), flow="instead")
# the 10-clip test and retrieval: evenly spaced clips, centre crops; a video that fails to decode stops the run
# (a result must cover the videos it names)
EVAL = SamplingRecipe("eval", "evenly_spaced", views=tuple(View(i, "eval") for i in range(NUM_EVAL_CLIPS)),
                      num_clips=NUM_EVAL_CLIPS, stacked=True, flow="instead", replaces_bad_videos=False)
