"""model/references.py: the no-learning references (colour and motion statistics) and their place in retrieve.py."""

import math

import numpy as np
import pytest
import torch

import retrieve
from conftest import tiny_demo_flags
from dataset.transforms import IMAGENET_MEAN, IMAGENET_STD
from model.references import REFERENCES, MotionStatistics, flow_statistics

SIZE, FRAMES = 32, 8
MEAN_U, MEAN_V, SPEED, RADIAL, TANGENTIAL = range(5)


def normalised(frames: np.ndarray) -> torch.Tensor:
    """Grey uint8 frames (T, H, W) -> one ImageNet-normalised RGB clip (1, 3, T, H, W)."""
    pixels = torch.from_numpy(frames).float().div(255).expand(3, -1, -1, -1)
    mean, std = (torch.tensor(v).view(3, 1, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    return ((pixels - mean) / std)[None]


def textured_square(centre, half, angle=0.0) -> np.ndarray:
    """A textured square (a checkerboard, so that the flow is defined inside it) on a dark background."""
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    dx, dy = xs - centre[0], ys - centre[1]
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    inside = (np.abs(u) <= half) & (np.abs(v) <= half)
    checker = ((np.floor(u / 3) + np.floor(v / 3)) % 2) * 120 + 100
    return np.where(inside, checker, 20).astype(np.uint8)


def clip(frame_at) -> np.ndarray:
    return np.stack([textured_square(*frame_at(t)) for t in range(FRAMES)])


def test_flow_statistics_see_direction_growth_and_spin():
    right = flow_statistics(clip(lambda t: ((10 + t, 16), 6)))
    left = flow_statistics(clip(lambda t: ((22 - t, 16), 6)))
    assert right[MEAN_U] > 0.05 > abs(right[MEAN_V]) and left[MEAN_U] < -0.05
    assert right[SPEED] > 0.05 and right[SPEED + 5] > 0  # its variation: the background does not move

    grow = flow_statistics(clip(lambda t: ((15.5, 15.5), 4 + t)))
    shrink = flow_statistics(clip(lambda t: ((15.5, 15.5), 11 - t)))
    assert grow[RADIAL] > 0.05 and shrink[RADIAL] < -0.05

    # image y points down: an increasing angle in this parametrisation turns the square clockwise on screen
    clockwise = flow_statistics(clip(lambda t: ((15.5, 15.5), 9, -0.12 * t)))
    anticlockwise = flow_statistics(clip(lambda t: ((15.5, 15.5), 9, 0.12 * t)))
    assert np.sign(clockwise[TANGENTIAL]) == -np.sign(anticlockwise[TANGENTIAL]) != 0
    assert abs(clockwise[TANGENTIAL]) > 2 * abs(clockwise[RADIAL])

    still = flow_statistics(clip(lambda t: ((16, 16), 6)))
    assert np.abs(still).max() < 1e-3


def test_motion_statistics_module_reads_normalised_clips():
    clips = torch.cat([normalised(clip(lambda t: ((10 + t, 16), 6))), normalised(clip(lambda t: ((22 - t, 16), 6)))])
    features = MotionStatistics()(clips)
    assert features.shape == (2, 10, 1, 1, 1)
    assert features[0, MEAN_U] > 0 > features[1, MEAN_U]
    np.testing.assert_allclose(features[0].flatten().numpy(), flow_statistics(clip(lambda t: ((10 + t, 16), 6))),
                               atol=0.02)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_retrieval_runs_each_reference(tiny_demo, tmp_path, name):
    results = retrieve.main(retrieve.get_args_parser().parse_args(tiny_demo_flags(tiny_demo) + [
        "--ckpt", name, "--device", "cpu", "--amp", "none", "--output-dir", str(tmp_path), "--num-examples", "0",
        "--no-tsne"]))
    assert results["feature_dim"] == {"colour-stats": 6, "motion-stats": 10}[name]
    assert results["checkpoint_kind"] == "no-learning reference"
