"""IIC: inter-intra contrastive learning with memory banks (METHOD.md §6).

One shared encoder (backbone + global average pool, no head) embeds three clips per video:
- view 1: the RGB clip, ImageNet-normalised;
- view 2: residual frames (x_t − x_{t−1} + 1) / 2 of the [0, 1] clip, NOT normalised (exactly the
  input `retrieve.py --merge` feeds for the second half of its feature), or the normalised RGB clip
  again for `--modality rgb`, or for `--modality u|v` the batch's "flow" clip: that optical-flow
  component of the same frames and crop, 0..255 mapped to [0, 1], replicated to 3 channels (see
  dataset/video_dataset.py; finetuning, testing and retrieval feed flow the same way);
- the intra-negative: the RGB clip with its temporal order broken (`repeat` / `shuffle`),
  ImageNet-normalised like view 1; it only updates its memory bank (no gradient).

Memory banks M1, M2, Mneg hold one row per training video. For each sample one draw of K + 1 bank
rows `idx` (idx[0] = the sample's own video, idx[1:] uniform over all videos, repeats allowed) serves
both views:
    view-1 logits = [M2[idx] · f1, Mneg[idx] · f1] / τ    (B, 2K+2), positive at column 0
    view-2 logits = [M1[idx] · f2, Mneg[idx] · f2] / τ
Column K+1 is therefore the intra-negative of the sample's own video (the hard negative); with
`--intra-neg none` the Mneg half is absent (plain CMC, K+1 columns). Logits use the banks before this
batch's update; the banks are then moved towards the gathered features of the global batch, so they
stay identical on every process. Index draws use torch's global RNG (saved by the checkpoint).
"""

import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dataset.clip_input import FLOW_MODALITIES, MODALITIES, frame_differences
from dataset.recipes import SamplingRecipe, View
from dataset.transforms import IMAGENET_MEAN, IMAGENET_STD
from model.backbones import build_backbone
from utils.distributed import all_gather_no_grad, host_to_device

INTRA_NEGATIVES = ("repeat", "shuffle", "none")
# The items IIC trains on (METHOD.md §6): one clip of consecutive frames from a random start, cropped only, in
# [0, 1] (the views are made from it: its residual frames, intra-negatives); with a flow modality the same frames'
# flow beside it, under the same crop.
IIC_SAMPLING = SamplingRecipe("iic", "consecutive", views=(View(augment="crop"),), normalized=False, stride=1,
                              flow="beside", fixed_input="IIC's views (RGB and its residual)", method="IIC")
SHUFFLE_CHUNKS = 4


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected 'on' or 'off', got {text!r}")
    return text == "on"


# METHOD.md §6: train_ssl.py takes these as its defaults under --model iic (flags given still win).
PUBLISHED_RECIPE = dict(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, batch_size=16, epochs=240,
                        schedule=[45, 90, 125, 160], lr_gamma=0.2, num_frames=16)


def add_iic_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "IIC (--model iic; its published recipe replaces the training defaults: SGD lr 0.01, momentum 0.9, "
        "weight decay 1e-4, batch 16, 240 epochs, lr x 0.2 at 45 90 125 160, 16 frames)")
    group.add_argument("--modality", default="res", choices=MODALITIES,
                       help="view 2: res = residual frames (x_t − x_{t−1} + 1)/2; rgb = the RGB clip again; "
                            "u / v = one optical-flow component of the same frames, read from --flow-root "
                            "(process_data/src/extract_flow.py writes it)")
    group.add_argument("--intra-neg", default="repeat", choices=INTRA_NEGATIVES,
                       help="intra-negative from the RGB clip: repeat = one random frame tiled T times; "
                            "shuffle = swap two of 4 temporal chunks (T must divide by 4); none = plain CMC")
    group.add_argument("--residual-wrap", type=_on_off, default="on", metavar="{on,off}",
                       help="on: r_0 uses the last frame (circular, published); off: r_0 repeats r_1")
    group.add_argument("--bank-k", type=int, default=1024,
                       help="K: negatives drawn per sample from each memory bank")
    group.add_argument("--bank-t", type=float, default=0.07, help="temperature τ of the memory-bank logits")
    group.add_argument("--bank-momentum", type=float, default=0.5,
                       help="memory-bank row ← m·row + (1 − m)·feature, then renormalised")
    group.add_argument("--iic-l2norm", action="store_true",
                       help="L2-normalise the pooled features before the logits (published: off)")


def imagenet_statistics() -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std (3, 1, 1, 1), to broadcast over clips (B, 3, T, H, W)."""
    return torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)


def normalize_imagenet(clip: torch.Tensor, mean: torch.Tensor | None = None,
                       std: torch.Tensor | None = None) -> torch.Tensor:
    """[0, 1] clips (B, 3, T, H, W) -> ImageNet-normalised, the input of every RGB view. Pass ``mean`` and
    ``std`` already on the clips' device (IIC's buffers) to avoid a host-to-device copy per call."""
    if mean is None or std is None:
        mean, std = (value.to(clip.device) for value in imagenet_statistics())
    return (clip - mean.to(clip.dtype)) / std.to(clip.dtype)


def residual_frames(clip: torch.Tensor, wrap: bool = True) -> torch.Tensor:
    """(x_t − x_{t−1} + 1) / 2 of [0, 1] clips (B, 3, T, H, W) -> same shape, values in [0, 1].

    wrap: r_0 = (x_0 − x_{T−1} + 1) / 2 (circular). Without wrap r_0 is a copy of r_1, which keeps T
    frames so that both views have the same shape.
    """
    if not wrap and clip.shape[2] < 2:
        raise ValueError("--residual-wrap off needs clips of at least 2 frames")
    residual = (frame_differences(clip, wrap=True) + 1) / 2  # (B, 3, T, H, W)
    if not wrap:
        residual = torch.cat([residual[:, :, 1:2], residual[:, :, 1:]], dim=2)
    return residual


def repeat_negative(clip: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random frame of each clip (B, 3, T, H, W) tiled T times -> same shape."""
    batch, _, frames = clip.shape[:3]
    picked = host_to_device(torch.randint(frames, (batch,), generator=generator), clip.device)  # (B,)
    rows = torch.arange(batch, device=clip.device)
    return clip[rows, :, picked].unsqueeze(2).expand_as(clip).contiguous()


def shuffle_negative(clip: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Split each clip (B, 3, T, H, W) into 4 chunks of T/4 frames and swap two distinct random chunks."""
    batch, _, frames = clip.shape[:3]
    if frames % SHUFFLE_CHUNKS:
        raise ValueError(f"--intra-neg shuffle splits clips into {SHUFFLE_CHUNKS} chunks: --num-frames {frames} "
                         f"is not divisible by {SHUFFLE_CHUNKS}")
    first = torch.randint(SHUFFLE_CHUNKS, (batch,), generator=generator)
    # a non-zero offset makes the second chunk distinct from the first
    second = (first + torch.randint(1, SHUFFLE_CHUNKS, (batch,), generator=generator)) % SHUFFLE_CHUNKS
    order = torch.arange(SHUFFLE_CHUNKS).repeat(batch, 1)  # (B, 4)
    rows = torch.arange(batch)
    order[rows, first], order[rows, second] = second, first
    chunk = frames // SHUFFLE_CHUNKS
    frame_order = host_to_device((order.unsqueeze(2) * chunk + torch.arange(chunk)).flatten(1), clip.device)  # (B, T)
    index = frame_order.view(batch, 1, frames, 1, 1).expand_as(clip)
    return torch.gather(clip, 2, index)


class MemoryBanks(nn.Module):
    """Banks of N_videos × dim rows (buffers, so they are checkpointed) with momentum updates."""

    def __init__(self, names: tuple[str, ...], num_videos: int, dim: int, momentum: float) -> None:
        super().__init__()
        self.names = names
        self.num_videos = num_videos
        self.momentum = momentum
        bound = 1.0 / math.sqrt(dim / 3)
        for name in names:
            self.register_buffer(name, torch.rand(num_videos, dim) * 2 * bound - bound)

    def bank(self, name: str) -> torch.Tensor:
        return getattr(self, name)

    def draw(self, index: torch.Tensor, k: int) -> torch.Tensor:
        """(B,) own video indices -> (B, K+1) bank rows: column 0 itself, then K uniform draws."""
        drawn = host_to_device(torch.randint(self.num_videos, (index.shape[0], k + 1)), index.device)
        drawn[:, 0] = index
        return drawn

    @torch.no_grad()
    def update(self, index: torch.Tensor, features: dict[str, torch.Tensor]) -> None:
        """Move the rows of the global batch towards their features; every process gets the same result.

        index (B,) and features {bank name: (B, dim)} of this process; a video present twice in the
        global batch keeps its last occurrence, so the result does not depend on scatter order. Every position
        writes the row of its video's last occurrence, so repeated indices write equal rows; no ``unique``,
        whose data-dependent size would make the host wait for the GPU.
        """
        index = all_gather_no_grad(index)  # (N,)
        positions = torch.arange(index.shape[0], device=index.device)
        same_video = index[:, None] == index[None, :]  # (N, N)
        last = torch.where(same_video, positions[None, :], -1).amax(dim=1)  # (N,) last position of each video
        for name, feature in features.items():
            bank = self.bank(name)
            gathered = all_gather_no_grad(feature.float())[last]  # (N, dim)
            rows = bank[index] * self.momentum + gathered * (1 - self.momentum)
            bank.index_copy_(0, index, F.normalize(rows, dim=1))


class IICEncoder(nn.Module):
    """Backbone + global average pool: clips (B, 3, T, H, W) -> features (B, C)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone, self.out_channels = backbone, backbone.out_channels

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.backbone(clips).mean(dim=(2, 3, 4)).float()  # (B, C)


class IIC(nn.Module):
    """IIC pretraining; `forward(clip, index[, flow])` takes the "iic" sampler's [0, 1] clips, video
    indices and, for a flow modality, the [0, 1] flow clips of the same frames.

    ``backbone`` is a module of model/backbones.py; ``num_videos`` rows per memory bank (the training-set size);
    the keywords are the flags of ``add_iic_args`` under their Python names, with the published values as defaults.
    """

    num_views = 2
    PUBLISHED_RECIPE = PUBLISHED_RECIPE  # train_ssl.py's training defaults under --model iic (engine/pretraining.py)
    # what a training step keeps for backward (engine/memory.py): per video, view 1 and view 2 (the
    # intra-negative runs without gradient), one after the other
    clips_with_gradient, clips_in_largest_pass = 2, 1
    # constructor keyword -> the flag of add_iic_args that sets it
    FLAGS = {"modality": "modality", "intra_neg": "intra_neg", "residual_wrap": "residual_wrap", "bank_k": "bank_k",
             "bank_t": "bank_t", "bank_momentum": "bank_momentum", "l2norm": "iic_l2norm"}

    def __init__(self, backbone: nn.Module, num_videos: int | None = None, *, modality: str = "res",
                 intra_neg: str = "repeat", residual_wrap: bool = True, bank_k: int = 1024, bank_t: float = 0.07,
                 bank_momentum: float = 0.5, l2norm: bool = False) -> None:
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"--modality {modality!r}: choose one of {', '.join(MODALITIES)}")
        if bank_k < 1 or bank_t <= 0 or not 0.0 <= bank_momentum < 1.0:
            raise ValueError(f"need --bank-k ≥ 1, --bank-t > 0 and 0 ≤ --bank-momentum < 1; got {bank_k}, "
                             f"{bank_t}, {bank_momentum}")
        self.modality = modality
        self.batch_keys = ("clip", "index", "flow") if self.modality in FLOW_MODALITIES else ("clip", "index")
        self.intra_neg = intra_neg
        self.residual_wrap = residual_wrap
        self.k = bank_k
        self.temperature = bank_t
        self.l2norm = l2norm
        self.encoder = IICEncoder(backbone)
        mean, std = imagenet_statistics()  # constants on the model's device, not in the state_dict
        self.register_buffer("imagenet_mean", mean, persistent=False)
        self.register_buffer("imagenet_std", std, persistent=False)
        names = ("view1", "view2") + (("intra_neg",) if self.intra_neg != "none" else ())
        # Without a dataset size (e.g. --dry-run) the banks are empty and forward refuses to run.
        self.banks = MemoryBanks(names, num_videos or 0, self.encoder.out_channels, bank_momentum)
        self.loss_weights = {"loss_view1": 1.0, "loss_view2": 1.0}

    @staticmethod
    def sampling_for(args: argparse.Namespace) -> SamplingRecipe:
        return IIC_SAMPLING

    @classmethod
    def from_args(cls, args: argparse.Namespace, num_videos: int | None = None) -> "IIC":
        """The method of train_ssl.py's flags, with memory banks of ``num_videos`` rows (0 or None: empty banks,
        enough for --dry-run)."""
        if getattr(args, "clip_input", "rgb") != "rgb":
            raise ValueError(f"--clip-input {args.clip_input}: IIC's views are fixed by the method (the RGB clip and "
                             "its residual frames, or optical flow); leave --clip-input at rgb")
        backbone, _ = build_backbone(args.net, args.base_width)
        return cls(backbone, num_videos, **{key: getattr(args, flag) for key, flag in cls.FLAGS.items()})

    @property
    def backbone(self) -> nn.Module:
        return self.encoder.backbone

    @staticmethod
    def card_fields(config: dict, processes: int) -> dict:
        """How a run's card (engine/card.py) names the mode and the negatives; IIC samples consecutive frames."""
        return {"mode": f"intra-negative {config.get('intra_neg')}, view 2 {config.get('modality')}",
                "negatives": f"memory banks, {config.get('bank_k')} rows drawn per sample",
                "clip": {"stride": IIC_SAMPLING.stride}}

    def view2(self, clip: torch.Tensor, flow: torch.Tensor | None) -> torch.Tensor:
        if self.modality in FLOW_MODALITIES:
            return flow
        if self.modality == "res":
            return residual_frames(clip, self.residual_wrap)
        return normalize_imagenet(clip, self.imagenet_mean, self.imagenet_std)

    def intra_negative(self, clip: torch.Tensor) -> torch.Tensor:
        make = repeat_negative if self.intra_neg == "repeat" else shuffle_negative
        return normalize_imagenet(make(clip), self.imagenet_mean, self.imagenet_std)

    def embed(self, clips: torch.Tensor) -> torch.Tensor:
        features = self.encoder(clips)  # (B, C)
        return F.normalize(features, dim=1) if self.l2norm else features

    def logits(self, feature: torch.Tensor, other: str, drawn: torch.Tensor) -> torch.Tensor:
        """feature (B, C) against the other view's bank (and Mneg) at rows drawn (B, K+1) -> (B, K+1 or 2K+2)."""
        banks = [other] + (["intra_neg"] if self.intra_neg != "none" else [])
        columns = [torch.einsum("bkc,bc->bk", self.banks.bank(name)[drawn], feature) for name in banks]
        return torch.cat(columns, dim=1) / self.temperature

    def check_config(self, batch_size: int, num_frames: int) -> None:
        """Refuse, from the flags alone, what the first forward would (for --dry-run and before a run writes):
        the views are made from a one-pixel clip of the configured length."""
        clip = torch.zeros(1, 3, num_frames, 1, 1, device=self.imagenet_mean.device)  # meta under --dry-run
        if self.modality not in FLOW_MODALITIES:
            self.view2(clip, None)
        if self.intra_neg != "none":
            self.intra_negative(clip)

    def check_input(self, clip: torch.Tensor, index: torch.Tensor, flow: torch.Tensor | None) -> None:
        if self.banks.num_videos == 0:
            raise ValueError("IIC's memory banks have no rows: build the method with "
                             "build_method(args, num_videos=len(training set))")
        if clip.dim() != 5 or clip.shape[1] != 3:
            raise ValueError(f"IIC expects [0, 1] clips (B, 3, T, H, W) from the 'iic' sampler; got "
                             f"{tuple(clip.shape)}")
        if self.modality in FLOW_MODALITIES and (flow is None or flow.shape != clip.shape):
            got = "none" if flow is None else tuple(flow.shape)
            raise ValueError(f"--modality {self.modality} takes the flow clips (B, 3, T, H, W) of the 'iic' sampler "
                             f"built with that modality, shaped like the RGB clips {tuple(clip.shape)}; got {got}")
        message = (f"a video index lies outside the memory banks of {self.banks.num_videos} rows: the banks were "
                   "built for another training set")
        inside = (index.min() >= 0) & (index.max() < self.banks.num_videos)
        if index.device.type != "cpu":  # checked on the device: a host check would wait for the GPU
            torch._assert_async(inside, message)
        elif not inside:
            raise ValueError(message)

    def forward(self, clip: torch.Tensor, index: torch.Tensor,
                flow: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        self.check_input(clip, index, flow)
        f1 = self.embed(normalize_imagenet(clip, self.imagenet_mean, self.imagenet_std))  # (B, C)
        f2 = self.embed(self.view2(clip, flow))  # (B, C)
        features = {"view1": f1.detach(), "view2": f2.detach()}
        if self.intra_neg != "none":
            with torch.no_grad():
                features["intra_neg"] = self.embed(self.intra_negative(clip))  # (B, C)

        drawn = self.banks.draw(index, self.k)  # (B, K+1)
        targets = torch.zeros(clip.shape[0], dtype=torch.long, device=clip.device)
        # Dot products with thousands of bank rows lose digits in half precision: fp32 whatever the autocast.
        with torch.autocast(clip.device.type, enabled=False):
            # bank rows are gathered copies, so the update below cannot disturb backward
            logits1 = self.logits(f1, "view2", drawn)  # (B, 2K+2)
            logits2 = self.logits(f2, "view1", drawn)  # (B, 2K+2)
            out = {"loss_view1": F.cross_entropy(logits1, targets), "loss_view2": F.cross_entropy(logits2, targets),
                   "acc_view1": (logits1.detach().argmax(dim=1) == 0).float().mean(),
                   "acc_view2": (logits2.detach().argmax(dim=1) == 0).float().mean()}
        self.banks.update(index, features)
        return out
