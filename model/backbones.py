"""Video backbones: `build_backbone(name, base_width) -> (module, out_channels)`.

Every module maps a clip batch (B, 3, T, H, W) to its last feature map (B, C, T', H', W');
pooling and heads belong to the method. `base_width` narrows every stage (64 = the published
networks) so that tests and the demo run on a CPU.

r3d, r21d, c3d and r3d_18 have the module structure of the VCOP family of backbones (VCOP, IIC,
DualVar, PRP, Pace, ...) under readable names: model/vcop.py loads those codebases' checkpoints.
"""

from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint
from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D, Conv3DSimple
from torchvision.models.video.s3d import S3D



# ---------------------------------------------------------------- gradient checkpointing by stage

@contextmanager
def running_stats_frozen(module: nn.Module) -> Iterator[None]:
    """Training-mode BatchNorms of ``module`` leave their running statistics and ``num_batches_tracked`` as they
    are inside the block: a checkpointed stage's rerun in backward must not count its batch a second time.

    The rerun must save the same tensors as the first forward, so the running statistics stay in the call and
    their update is made an identity (momentum 0: r <- 1·r + 0·batch, exact); the counter is put back."""
    norms = [m for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    before = [(norm.momentum, None if norm.num_batches_tracked is None else norm.num_batches_tracked.clone())
              for norm in norms]
    for norm in norms:
        norm.momentum = 0.0
    try:
        yield
    finally:
        for norm, (momentum, tracked) in zip(norms, before):
            norm.momentum = momentum
            if tracked is not None:
                norm.num_batches_tracked.copy_(tracked)


def run_stages(stages: list[nn.Module], x: torch.Tensor, grad_checkpoint: bool) -> torch.Tensor:
    """The stages one after the other. With ``grad_checkpoint`` (and gradients enabled) autograd keeps only each
    stage's input, and the stage runs again in the backward pass to rebuild its activations
    (torch.utils.checkpoint, non-reentrant, random state restored): the same loss and gradients, less memory."""
    if not (grad_checkpoint and torch.is_grad_enabled()):
        for stage in stages:
            x = stage(x)
        return x
    for stage in stages:
        x = checkpoint(stage, x, use_reentrant=False,
                       context_fn=lambda stage=stage: (nullcontext(), running_stats_frozen(stage)))
    return x


def set_grad_checkpointing(model: nn.Module, enabled: bool) -> int:
    """Turn stage-wise gradient checkpointing on or off in every backbone inside ``model``; returns how many."""
    backbones = [m for m in model.modules() if hasattr(m, "grad_checkpoint")]
    for backbone in backbones:
        backbone.grad_checkpoint = enabled
    return len(backbones)


def factored_width(in_planes: int, out_planes: int, k_t: int, k_s: int) -> int:
    """Middle width of a (2+1)D factorisation with the parameter count of the full k_t×k_s×k_s conv."""
    return (k_t * k_s * k_s * in_planes * out_planes) // (k_s * k_s * in_planes + k_t * out_planes)


class Conv2Plus1DPerConv(Conv2Plus1D):
    """Conv2Plus1D whose middle width comes from its own (in, out) pair.

    torchvision's BasicBlock passes one middle width, computed from the block's (inplanes, planes),
    to both of its convs; R(2+1)D-10 (METHOD §4) sizes each conv by its own widths.
    """

    def __init__(self, in_planes: int, out_planes: int, midplanes: int, stride: int = 1, padding: int = 1) -> None:
        super().__init__(in_planes, out_planes, factored_width(in_planes, out_planes, 3, 3), stride, padding)


def factored_conv(in_planes: int, out_planes: int, kernel: tuple[int, int], stride: tuple[int, int] = (1, 1),
                  padding: tuple[int, int] = (0, 0)) -> nn.Sequential:
    """A (temporal, spatial) kernel factored as bias-free 1×k×k conv → BN → ReLU → k×1×1 conv.

    ``kernel``, ``stride`` and ``padding`` are (temporal, spatial) pairs; the middle width keeps the
    parameter count of the full conv (`factored_width`).
    """
    (k_t, k_s), (s_t, s_s), (p_t, p_s) = kernel, stride, padding
    mid_planes = factored_width(in_planes, out_planes, k_t, k_s)
    return nn.Sequential(
        nn.Conv3d(in_planes, mid_planes, kernel_size=(1, k_s, k_s), stride=(1, s_s, s_s), padding=(0, p_s, p_s),
                  bias=False),
        nn.BatchNorm3d(mid_planes),
        nn.ReLU(inplace=True),
        nn.Conv3d(mid_planes, out_planes, kernel_size=(k_t, 1, 1), stride=(s_t, 1, 1), padding=(p_t, 0, 0),
                  bias=False),
    )


def plain_shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    return nn.Conv3d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def factored_shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """R(2+1)D-10's downsampling shortcut: the 1×1×1 conv factored like every other conv of the network."""
    return factored_conv(in_planes, out_planes, (1, 1), (stride, stride))


def resnet3d_stem(width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(3, width, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(inplace=True),
    )


def factored_stem(width: int) -> nn.Sequential:
    """R(2+1)D-10's stem: the 3×7×7 conv factored with its parameter-matching middle width, BN, ReLU."""
    return nn.Sequential(factored_conv(3, width, (3, 7), (1, 2), (1, 3)), nn.BatchNorm3d(width), nn.ReLU(inplace=True))


def resnet2plus1d_stem(width: int, mid_width: int) -> nn.Sequential:
    """torchvision's flat R(2+1)D stem: 1×7×7 → BN → ReLU → 3×1×1 → BN → ReLU."""
    return nn.Sequential(
        nn.Conv3d(3, mid_width, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
        nn.BatchNorm3d(mid_width),
        nn.ReLU(inplace=True),
        nn.Conv3d(mid_width, width, kernel_size=(3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(inplace=True),
    )


class VideoResNetTrunk(nn.Module):
    """torchvision's VideoResNet without max-pool, avgpool and fc, with stage widths base_width·(1, 2, 4, 8).

    torchvision's VideoResNet hard-codes 64 as the first width, so the stages are assembled here from
    its BasicBlock and conv builders; at base_width 64 the layers are identical.
    """

    grad_checkpoint = False  # set_grad_checkpointing

    def __init__(self, stem: nn.Module, conv_builder: Callable[..., nn.Module], blocks_per_stage: list[int],
                 base_width: int, shortcut_conv: Callable[[int, int, int], nn.Module] | None = None) -> None:
        super().__init__()
        self.stem = stem
        shortcut_conv = shortcut_conv or plain_shortcut
        in_planes = base_width
        stages = []
        for stage, num_blocks in enumerate(blocks_per_stage):
            planes = base_width * 2 ** stage
            stride = 1 if stage == 0 else 2
            downsample = None
            if stride != 1 or in_planes != planes:
                downsample = nn.Sequential(shortcut_conv(in_planes, planes, stride), nn.BatchNorm3d(planes))
            layers = [BasicBlock(in_planes, planes, conv_builder, stride, downsample)]
            layers += [BasicBlock(planes, planes, conv_builder) for _ in range(num_blocks - 1)]
            stages.append(nn.Sequential(*layers))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = in_planes
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def stages(self) -> list[nn.Module]:
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x):
        # stem (B, w, T, H/2, W/2), layer1 .. layer4 -> (B, 8w, T/8, H/16, W/16)
        return run_stages(self.stages(), x, self.grad_checkpoint)


def r3d(base_width: int) -> nn.Module:
    return VideoResNetTrunk(resnet3d_stem(base_width), Conv3DSimple, [1, 1, 1, 1], base_width)


def r21d(base_width: int) -> nn.Module:
    """R(2+1)D-10: every conv (stem and shortcuts included) factored with its own parameter-matching middle width."""
    return VideoResNetTrunk(factored_stem(base_width), Conv2Plus1DPerConv, [1, 1, 1, 1], base_width, factored_shortcut)


def r3d_18(base_width: int) -> nn.Module:
    return VideoResNetTrunk(resnet3d_stem(base_width), Conv3DSimple, [2, 2, 2, 2], base_width)


def r21d_18(base_width: int) -> nn.Module:
    """torchvision's r2plus1d_18 body: 45-wide stem middle, one middle width per block."""
    stem = resnet2plus1d_stem(base_width, max(1, 45 * base_width // 64))
    return VideoResNetTrunk(stem, Conv2Plus1D, [2, 2, 2, 2], base_width)


class S3DTrunk(nn.Sequential):
    """torchvision's S3D feature layers, under their own indices; the stages begin at the stem and at each max-pool
    (conv1 | pool, conv2, conv3 | pool, mixed 3 | pool, mixed 4 | pool, mixed 5)."""

    grad_checkpoint = False  # set_grad_checkpointing
    out_channels = 1024
    STAGE_STARTS = (0, 1, 4, 7, 13)

    def stages(self) -> list[nn.Module]:
        layers, ends = list(self), (*self.STAGE_STARTS[1:], len(self))
        return [nn.Sequential(*layers[start:end]) for start, end in zip(self.STAGE_STARTS, ends)]

    def forward(self, x):
        return run_stages(self.stages(), x, self.grad_checkpoint)


def s3d(base_width: int) -> nn.Module:
    """torchvision's S3D feature layers (random init); the method's global pooling replaces its fixed 2×7×7 avgpool."""
    if base_width != 64:
        raise ValueError(f"--net s3d has fixed Inception widths and does not support --base-width {base_width}; "
                         "use --base-width 64, or a ResNet/C3D backbone for a narrow model")
    return S3DTrunk(*S3D().features)


class C3D(nn.Module):
    """C3D with BatchNorm and no fc layers: 8 convs (with biases) of widths base_width·(1, 2, 4, 4, 8, 8, 8, 8).

    The modules carry the family's names (conv1, bn1, ..., conv5b, bn5b). The pools use ceil_mode so
    that tiny clips (e.g. 8×32×32) never shrink to an empty dimension; at 16×112² the output is the
    usual (8·base_width, 1, 4, 4). A stage is a conv block through its pool (conv1 | conv2 | conv3a-b | conv4a-b |
    conv5a-b).
    """

    grad_checkpoint = False  # set_grad_checkpointing

    def __init__(self, base_width: int = 64) -> None:
        super().__init__()
        w = base_width
        plan = [  # (name, out channels, pool after this conv: kernel/stride, padding) — None: no pool
            ("1", w, ((1, 2, 2), (0, 0, 0))),
            ("2", 2 * w, ((2, 2, 2), (0, 0, 0))),
            ("3a", 4 * w, None), ("3b", 4 * w, ((2, 2, 2), (0, 0, 0))),
            ("4a", 8 * w, None), ("4b", 8 * w, ((2, 2, 2), (0, 0, 0))),
            ("5a", 8 * w, None), ("5b", 8 * w, ((2, 2, 2), (0, 1, 1))),
        ]
        layers: dict[str, nn.Module] = {}
        in_channels = 3
        for name, out_channels, pool in plan:
            layers[f"conv{name}"] = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
            layers[f"bn{name}"] = nn.BatchNorm3d(out_channels)
            layers[f"relu{name}"] = nn.ReLU(inplace=True)
            if pool is not None:
                kernel, padding = pool
                layers[f"pool{name[0]}"] = nn.MaxPool3d(kernel, stride=kernel, padding=padding, ceil_mode=True)
            in_channels = out_channels
        self.features = nn.Sequential(OrderedDict(layers))
        names = list(layers)
        self.stage_starts = [names.index(f"conv{name}") for name in ("1", "2", "3a", "4a", "5a")]
        self.out_channels = in_channels
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def stages(self) -> list[nn.Module]:
        ends = (*self.stage_starts[1:], len(self.features))
        return [self.features[start:end] for start, end in zip(self.stage_starts, ends)]

    def forward(self, x):
        # (B, 8w, T', H', W'); at 16×112² and w = 64: (B, 512, 1, 4, 4)
        return run_stages(self.stages(), x, self.grad_checkpoint)


# name -> builder(base_width) -> module with an `out_channels` attribute
BACKBONES: dict[str, Callable[[int], nn.Module]] = {
    "r3d": r3d,
    "r21d": r21d,
    "r3d_18": r3d_18,
    "r21d_18": r21d_18,
    "s3d": s3d,
    "c3d": C3D,
}


def build_backbone(name: str, base_width: int = 64) -> tuple[nn.Module, int]:
    """Build backbone `name`; returns (module mapping (B, 3, T, H, W) -> (B, C, T', H', W'), C)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown --net {name!r}; choose one of {', '.join(BACKBONES)}")
    if base_width < 1:
        raise ValueError(f"--base-width must be a positive integer, got {base_width}")
    module = BACKBONES[name](base_width)
    return module, module.out_channels
