import pytest
import torch
import torchvision

from model.backbones import BACKBONES, build_backbone, factored_width


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# name -> (parameters in millions at base_width 64, feature map (C, T', H', W') for 16×112²)
FULL_SIZE = {
    "r3d": (14.4, (512, 2, 7, 7)),
    "r21d": (14.4, (512, 2, 7, 7)),
    "r3d_18": (33.2, (512, 2, 7, 7)),
    "r21d_18": (31.3, (512, 2, 7, 7)),
    "s3d": (7.9, (1024, 2, 3, 3)),
    "c3d": (27.7, (512, 1, 4, 4)),
}


def test_every_registered_backbone_is_checked():
    assert set(FULL_SIZE) == set(BACKBONES)


@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_full_size_parameters_and_output_shape(name):
    millions, shape = FULL_SIZE[name]
    # The meta device gives shapes and parameter counts without allocating or computing anything.
    with torch.device("meta"):
        module, channels = build_backbone(name)
        out = module(torch.empty(1, 3, 16, 112, 112))
    assert channels == shape[0]
    assert tuple(out.shape) == (1, *shape)
    assert count_parameters(module) / 1e6 == pytest.approx(millions, abs=0.05)


@pytest.mark.parametrize("name, reference", [("r3d_18", torchvision.models.video.r3d_18),
                                             ("r21d_18", torchvision.models.video.r2plus1d_18)])
def test_resnet18_bodies_match_torchvision(name, reference):
    with torch.device("meta"):
        module, _ = build_backbone(name)
        expected = {k: v.shape for k, v in reference().state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in module.state_dict().items()} == expected


def test_r21d_uses_per_conv_factored_widths():
    with torch.device("meta"):
        module, _ = build_backbone("r21d")
    # stem 3->64 with a 3×7×7 kernel, and conv2 of stage 2 (64->64) sized by its own widths
    assert module.stem[0][0].out_channels == factored_width(3, 64, 3, 7) == 83
    assert module.layer2[0].conv2[0][0].out_channels == factored_width(128, 128, 3, 3) == 288


@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_tiny_input_shape(name):
    width = 64 if name == "s3d" else 8
    module, channels = build_backbone(name, base_width=width)
    out = module(torch.randn(2, 3, 8, 32, 32))
    assert out.shape[:2] == (2, channels)
    assert channels == (1024 if name == "s3d" else 8 * width)
    assert min(out.shape[2:]) >= 1
    assert torch.isfinite(out).all()


def test_base_width_narrows_every_stage():
    wide, _ = build_backbone("r3d", base_width=16)
    narrow, _ = build_backbone("r3d", base_width=8)
    # convs dominate and scale with width², so halving the width roughly quarters the parameters
    assert count_parameters(wide) / count_parameters(narrow) == pytest.approx(4, rel=0.02)
    widths = [m.out_channels for m in narrow.modules() if isinstance(m, torch.nn.Conv3d)]
    assert max(widths) == 64 and min(widths) == 8


def test_bad_names_and_widths_are_clear_errors():
    with pytest.raises(ValueError, match="--net 'resnet50'"):
        build_backbone("resnet50")
    with pytest.raises(ValueError, match="--base-width"):
        build_backbone("s3d", base_width=16)
    with pytest.raises(ValueError, match="--base-width"):
        build_backbone("r3d", base_width=0)


@pytest.mark.parametrize("name, count", [("r21d", 14_365_303), ("r3d", 14_361_792), ("c3d", 27_661_440)])
def test_vcop_family_parameter_counts_are_exact(name, count):
    # the released VCOP / IIC / DualVar checkpoints have exactly these (layer sizes 1, 1, 1, 1)
    with torch.device("meta"):
        module, _ = build_backbone(name)
    assert count_parameters(module) == count
