"""Our r3d / r21d / c3d against the VCOP family's state-dict listings (../shared/docs/vcop_layouts):
same tensors and parameter counts, `load_vcop_backbone` under any prefix, and the same outputs as a
hand-written functional forward pass of the family's network."""

import ast
import functools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model.backbones import build_backbone
from model.vcop import load_vcop_backbone, vcop_name
from utils.checkpoint_io import CheckpointError

LAYOUTS = Path(__file__).resolve().parents[1].parent / "shared" / "docs" / "vcop_layouts"
needs_layouts = pytest.mark.skipif(not LAYOUTS.is_dir(), reason=f"no VCOP layout listings at {LAYOUTS}")
PARAMETERS = {"r21d": 14_365_303, "r3d": 14_361_792, "c3d": 27_661_440}
PREFIXES = ["", "module.", "encoder_q.0.", "backbone.", "base_network.", "module.encoder_q.0."]


def listing(name: str) -> dict[str, tuple[int, ...]]:
    """The family's state-dict keys and shapes, in the listing's order."""
    rows = [line.split("\t") for line in (LAYOUTS / f"{name}.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    return {key: ast.literal_eval(shape) for key, shape in rows}


def seeded_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Distinct seeded values for every tensor; positive BN variances, integer batch counters."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(1, 100, shape, generator=generator)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        elif key.endswith(".weight") and len(shape) == 5:  # conv kernels: keep activations of order one
            fan_in = shape[1] * shape[2] * shape[3] * shape[4]
            state[key] = torch.randn(shape, generator=generator) * (2 / fan_in) ** 0.5
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.1
    return state


@functools.cache
def listed_state(name: str) -> dict[str, torch.Tensor]:
    """Seeded full-width tensors for the listing of ``name``, built once (copy before changing it)."""
    return seeded_state(listing(name))


def family_state_of(module: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A family-named state dict for any width of our network (the listings are at width 64 only)."""
    return seeded_state({vcop_name(k): tuple(v.shape) for k, v in module.state_dict().items()}, seed)


# --- a functional forward pass of the family's networks, written from their definition -----------------

def batch_norm(x, state, name):
    return F.batch_norm(x, state[f"{name}.running_mean"], state[f"{name}.running_var"], state[f"{name}.weight"],
                        state[f"{name}.bias"], training=False)


def family_conv(x, state, name, kernel_t, kernel_s, stride, padding):
    """SpatioTemporalConv: one k_t×k_s×k_s conv (R3D), or spatial conv -> BN -> ReLU -> temporal conv (R(2+1)D)."""
    if f"{name}.temporal_spatial_conv.weight" in state:
        return F.conv3d(x, state[f"{name}.temporal_spatial_conv.weight"], stride=stride,
                        padding=(padding[0], padding[1], padding[1]))
    x = F.conv3d(x, state[f"{name}.spatial_conv.weight"], stride=(1, stride[1], stride[2]),
                 padding=(0, padding[1], padding[1]))
    x = F.relu(batch_norm(x, state, f"{name}.bn"))
    return F.conv3d(x, state[f"{name}.temporal_conv.weight"], stride=(stride[0], 1, 1), padding=(padding[0], 0, 0))


def family_downsample(x, state, block):
    """The shortcut of a stage's first block: a stride-2 1×1×1 conv (factored for R(2+1)D), then BN."""
    if f"{block}.downsampleconv.temporal_spatial_conv.weight" in state:
        shortcut = F.conv3d(x, state[f"{block}.downsampleconv.temporal_spatial_conv.weight"], stride=2)
    else:  # by hand: 1×1×1 spatial conv with spatial stride 2, BN, ReLU, 1×1×1 temporal conv with temporal stride 2
        spatial = F.conv3d(x, state[f"{block}.downsampleconv.spatial_conv.weight"], stride=(1, 2, 2))
        middle = F.relu(batch_norm(spatial, state, f"{block}.downsampleconv.bn"))
        shortcut = F.conv3d(middle, state[f"{block}.downsampleconv.temporal_conv.weight"], stride=(2, 1, 1))
    return batch_norm(shortcut, state, f"{block}.downsamplebn")


def family_resnet(x, state):
    x = F.relu(batch_norm(family_conv(x, state, "conv1", 3, 7, (1, 2, 2), (1, 3)), state, "bn1"))
    for stage in range(2, 6):
        block = f"conv{stage}.block1"
        stride = (1, 1, 1) if stage == 2 else (2, 2, 2)
        residual = F.relu(batch_norm(family_conv(x, state, f"{block}.conv1", 3, 3, stride, (1, 1)), state,
                                     f"{block}.bn1"))
        residual = batch_norm(family_conv(residual, state, f"{block}.conv2", 3, 3, (1, 1, 1), (1, 1)), state,
                              f"{block}.bn2")
        shortcut = family_downsample(x, state, block) if stage > 2 else x
        x = F.relu(shortcut + residual)
    return x


def family_c3d(x, state):
    pools = {"1": ((1, 2, 2), 0), "2": ((2, 2, 2), 0), "3b": ((2, 2, 2), 0), "4b": ((2, 2, 2), 0),
             "5b": ((2, 2, 2), (0, 1, 1))}
    for name in ("1", "2", "3a", "3b", "4a", "4b", "5a", "5b"):
        x = F.conv3d(x, state[f"conv{name}.weight"], state[f"conv{name}.bias"], padding=1)
        x = F.relu(batch_norm(x, state, f"bn{name}"))
        if name in pools:  # ceil_mode as ours: it only differs from the family's floor on odd sizes
            kernel, padding = pools[name]
            x = F.max_pool3d(x, kernel, stride=kernel, padding=padding, ceil_mode=True)
    return x


# --- tests --------------------------------------------------------------------------------------------

@needs_layouts
@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_every_tensor_has_a_same_shape_counterpart_and_parameter_counts_match(name):
    with torch.device("meta"):
        module, _ = build_backbone(name)
    ours = {vcop_name(k): tuple(v.shape) for k, v in module.state_dict().items()}
    assert ours == listing(name)
    assert sum(p.numel() for p in module.parameters()) == PARAMETERS[name]
    listed = sum(torch.Size(s).numel() for k, s in listing(name).items()
                 if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert listed == PARAMETERS[name]


@needs_layouts
@pytest.mark.parametrize("name, reference", [("r21d", family_resnet), ("r3d", family_resnet), ("c3d", family_c3d)])
def test_outputs_equal_the_family_forward_pass_with_the_same_tensors(name, reference):
    torch.manual_seed(0)
    state = listed_state(name)
    module, _ = build_backbone(name)
    report = load_vcop_backbone(module, state)
    assert report == {"prefix": "", "loaded_tensors": len(state), "ignored_tensors": 0}
    clips = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        expected = reference(clips, state)
        assert torch.allclose(module.eval()(clips), expected, rtol=1e-4, atol=1e-5)


@needs_layouts
def test_the_factored_shortcut_is_checked_by_the_reference():
    # Zeroing the BN of the downsample's middle (ReLU of its bias alone) changes the reference's output,
    # so the comparison above does exercise the factored path.
    state = listed_state("r21d")
    clips = torch.randn(1, 3, 8, 32, 32)
    altered = dict(state)
    altered["conv3.block1.downsampleconv.bn.weight"] = torch.zeros_like(state["conv3.block1.downsampleconv.bn.weight"])
    assert not torch.allclose(family_resnet(clips, state), family_resnet(clips, altered))


@pytest.mark.parametrize("prefix", PREFIXES)
def test_finds_the_backbone_under_any_prefix(prefix):
    module, _ = build_backbone("r21d", base_width=4)
    family = family_state_of(module, seed=1)
    checkpoint = {"fc8.weight": torch.zeros(101, 32), f"{prefix}linear.bias": torch.zeros(101)}
    checkpoint.update({prefix + k: v for k, v in family.items()})
    if "encoder_q" in prefix:  # MoCo's momentum encoder sits beside the query encoder: not taken
        checkpoint.update({prefix.replace("encoder_q", "encoder_k") + k: torch.zeros_like(v)
                           for k, v in family.items()})
    report = load_vcop_backbone(module, checkpoint)
    assert report["prefix"] == prefix and report["loaded_tensors"] == len(family)
    assert report["ignored_tensors"] == len(checkpoint) - len(family)
    loaded = module.state_dict()
    assert all(torch.equal(loaded[k], family[vcop_name(k)]) for k in loaded)


@needs_layouts
def test_another_architecture_or_width_is_the_named_checkpoint_error():
    r21d, _ = build_backbone("r21d", base_width=8)
    with pytest.raises(CheckpointError, match="no tensor named like the family's conv1.spatial_conv.weight"):
        load_vcop_backbone(r21d, {"module." + k: v for k, v in listed_state("r3d").items()})
    with pytest.raises(CheckpointError, match=r"wrong shape.*conv1\.spatial_conv\.weight \(83, 3, 1, 7, 7\)"):
        load_vcop_backbone(r21d, listed_state("r21d"))
    before = {k: v.clone() for k, v in r21d.state_dict().items()}
    assert all(torch.equal(v, before[k]) for k, v in r21d.state_dict().items())


def test_narrow_networks_load_their_own_width_and_refuse_extra_blocks():
    for name in ("r21d", "r3d", "c3d", "r3d_18"):
        module, _ = build_backbone(name, base_width=4)
        state = family_state_of(module, seed=2)
        report = load_vcop_backbone(module, {"backbone." + k: v for k, v in state.items()})
        assert report["loaded_tensors"] == len(state)
    r3d_18_state = family_state_of(build_backbone("r3d_18", base_width=4)[0])
    assert "conv2.blocks.0.conv1.temporal_spatial_conv.weight" in r3d_18_state
    with pytest.raises(CheckpointError, match=r"unexpected: conv2\.blocks\.0\."):
        load_vcop_backbone(build_backbone("r3d", base_width=4)[0], r3d_18_state)
    with pytest.raises(CheckpointError, match="missing: conv2.block1.bn1.weight"):
        load_vcop_backbone(build_backbone("r3d", base_width=4)[0],
                           {k: v for k, v in family_state_of(build_backbone("r3d", base_width=4)[0]).items()
                            if k != "conv2.block1.bn1.weight"})


@pytest.mark.parametrize("name", ["s3d", "r21d_18"])
def test_networks_outside_the_family_are_refused(name):
    module, _ = build_backbone(name, base_width=64 if name == "s3d" else 4)
    with pytest.raises(ValueError, match="no counterpart in the VCOP family"):
        load_vcop_backbone(module, {})
