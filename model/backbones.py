"""Video backbones: `build_backbone(name, base_width) -> (module, out_channels)`.

Every module maps a clip batch (B, 3, T, H, W) to its last feature map (B, C, T', H', W');
pooling and heads belong to the method. `base_width` narrows every stage (64 = the published
networks) so that tests and the demo run on a CPU.
"""

from collections.abc import Callable

import torch.nn as nn
from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D, Conv3DSimple
from torchvision.models.video.s3d import S3D


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


def resnet3d_stem(width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(3, width, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(inplace=True),
    )


def resnet2plus1d_stem(width: int, mid_width: int) -> nn.Sequential:
    """The 3×7×7 stem factored as 1×7×7 → BN → ReLU → 3×1×1."""
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

    def __init__(self, stem: nn.Module, conv_builder: Callable[..., nn.Module], blocks_per_stage: list[int],
                 base_width: int) -> None:
        super().__init__()
        self.stem = stem
        in_planes = base_width
        stages = []
        for stage, num_blocks in enumerate(blocks_per_stage):
            planes = base_width * 2 ** stage
            stride = 1 if stage == 0 else 2
            downsample = None
            if stride != 1 or in_planes != planes:
                downsample = nn.Sequential(
                    nn.Conv3d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm3d(planes),
                )
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

    def forward(self, x):
        x = self.stem(x)  # (B, w, T, H/2, W/2)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)  # (B, 8w, T/8, H/16, W/16)


def r3d(base_width: int) -> nn.Module:
    return VideoResNetTrunk(resnet3d_stem(base_width), Conv3DSimple, [1, 1, 1, 1], base_width)


def r21d(base_width: int) -> nn.Module:
    """R(2+1)D-10: every conv (stem included) factored with its own parameter-matching middle width."""
    stem = resnet2plus1d_stem(base_width, factored_width(3, base_width, 3, 7))
    return VideoResNetTrunk(stem, Conv2Plus1DPerConv, [1, 1, 1, 1], base_width)


def r3d_18(base_width: int) -> nn.Module:
    return VideoResNetTrunk(resnet3d_stem(base_width), Conv3DSimple, [2, 2, 2, 2], base_width)


def r21d_18(base_width: int) -> nn.Module:
    """torchvision's r2plus1d_18 body: 45-wide stem middle, one middle width per block."""
    stem = resnet2plus1d_stem(base_width, max(1, 45 * base_width // 64))
    return VideoResNetTrunk(stem, Conv2Plus1D, [2, 2, 2, 2], base_width)


def s3d(base_width: int) -> nn.Module:
    """torchvision's S3D feature layers (random init); the method's global pooling replaces its fixed 2×7×7 avgpool."""
    if base_width != 64:
        raise ValueError(f"--net s3d has fixed Inception widths and does not support --base-width {base_width}; "
                         "use --base-width 64, or a ResNet/C3D backbone for a narrow model")
    features = S3D().features
    features.out_channels = 1024
    return features


class C3D(nn.Module):
    """C3D with BatchNorm and no fc layers: 8 convs of widths base_width·(1, 2, 4, 4, 8, 8, 8, 8).

    The pools use ceil_mode so that tiny clips (e.g. 8×32×32) never shrink to an empty dimension; at
    16×112² the output is the usual (8·base_width, 1, 4, 4).
    """

    def __init__(self, base_width: int = 64) -> None:
        super().__init__()
        w = base_width
        plan = [  # (out channels, pool after this conv: kernel/stride, padding) — None: no pool
            (w, ((1, 2, 2), (0, 0, 0))),
            (2 * w, ((2, 2, 2), (0, 0, 0))),
            (4 * w, None), (4 * w, ((2, 2, 2), (0, 0, 0))),
            (8 * w, None), (8 * w, ((2, 2, 2), (0, 0, 0))),
            (8 * w, None), (8 * w, ((2, 2, 2), (0, 1, 1))),
        ]
        layers: list[nn.Module] = []
        in_channels = 3
        for out_channels, pool in plan:
            layers += [
                nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm3d(out_channels),
                nn.ReLU(inplace=True),
            ]
            if pool is not None:
                kernel, padding = pool
                layers.append(nn.MaxPool3d(kernel, stride=kernel, padding=padding, ceil_mode=True))
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.out_channels = in_channels
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.features(x)  # (B, 8w, T', H', W'); at 16×112² and w = 64: (B, 512, 1, 4, 4)


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
