"""The data path between the samplers and the transforms, with the real transforms (METHOD.md §2-3, §6).

Each view's drawn parameters are recorded and the view is recomputed from them; the per-view
probabilities of the crop-only path, colour jitter and blur are measured against METHOD.md §3; time
reversal turns both clips together; IIC's flow clips are the flow frames at the RGB clip's box.
"""

import argparse
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import RECIPES
from dataset import frame_reader, sampling, video_dataset as vd
from dataset.build import build_dataset
from dataset.flags import add_data_args
from dataset.layout import VideoRecord, flow_dir, flow_frame_name, frame_name, write_class_index, write_split_csv
from dataset.transforms import ClipTransform

NUM_FRAMES = 24
HW = (40, 52)
T = 4
# METHOD.md §3: view A takes the crop-only path with probability 0.2, else the full path; the full path
# jitters with probability 0.64 and blurs with probability 0.5.
CROP_ONLY_P, JITTER_P, BLUR_P = 0.2, 0.64, 0.5
EXPECTED = {  # per view: P(crop-only recipe), P(jitter), P(blur)
    "A": (CROP_ONLY_P, (1 - CROP_ONLY_P) * JITTER_P, (1 - CROP_ONLY_P) * BLUR_P),
    "B": (0.0, JITTER_P, BLUR_P),
    "A'": (0.0, JITTER_P, BLUR_P),
}


def write_jpeg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 100])
    path.write_bytes(encoded.tobytes())


@pytest.fixture
def video_set(tmp_path):
    """One video (train and test) with textured RGB frames and u / v flow frames unlike them."""
    rel = "Move/v_Move_g01_c01"
    y, x = np.mgrid[:HW[0], :HW[1]]
    for t in range(NUM_FRAMES):
        rgb = np.stack([(3 * x + 5 * t) % 256, (2 * y + 7 * t) % 256, (x * y + t) % 256], axis=-1)
        write_jpeg(tmp_path / "frames" / rel / frame_name(t), rgb.astype(np.uint8)[..., ::-1])  # BGR on disk
    for t in range(NUM_FRAMES - 1):
        write_jpeg(tmp_path / "flow" / "u" / rel / flow_frame_name(t), ((200 - 2 * x + 3 * t) % 256).astype(np.uint8))
        write_jpeg(tmp_path / "flow" / "v" / rel / flow_frame_name(t), ((50 + 3 * y + 5 * t) % 256).astype(np.uint8))
    for split in ("train", "test"):
        write_split_csv(tmp_path / "csv" / f"{split}_split01.csv", [VideoRecord(rel, NUM_FRAMES, 0)])
    write_class_index(tmp_path / "csv" / "ClassInd.txt", ["Move"])
    return tmp_path


def data_args(root: Path, *extra: str) -> argparse.Namespace:
    args = add_data_args(argparse.ArgumentParser()).parse_args(
        ["--dataset", str(root / "csv"), "--flow-root", str(root / "flow"), "--num-frames", str(T), "--size", "32",
         "--resize", "36", "48", "--stride", "3", *extra])
    args.seed = 5
    return args


def record_draws(monkeypatch):
    """Every ClipTransform.draw as (recipe, params), the real draw underneath."""
    draws = []
    real_draw = ClipTransform.draw

    def draw(self, rng, num_frames):
        params = real_draw(self, rng, num_frames)
        draws.append((self.recipe, params))
        return params

    monkeypatch.setattr(ClipTransform, "draw", draw)
    return draws


def record_calls(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(result)
        return result

    monkeypatch.setattr(module, name, wrapper)
    return calls


def summary(params):
    return params.top, params.left, params.jitter_order, params.blur_sigma


def test_each_view_is_its_frames_through_its_own_draw(video_set, monkeypatch):
    dataset = build_dataset(data_args(video_set), "trainval", RECIPES["dualvar"])
    transforms = {"pretrain": dataset.full, "crop_only": dataset.crop_only}
    draws = record_draws(monkeypatch)
    pairs = record_calls(monkeypatch, sampling, "dualvar_clip_pair")
    video_dir = dataset.records[0].path(dataset.frame_root)
    a_prime_differs = 0
    for epoch in range(8):
        dataset.set_epoch(epoch)
        draws.clear()
        pairs.clear()
        clips = dataset[0]["clips"]  # (3, 3, T, S, S): A, B, A′
        (idx_a, idx_b), = pairs
        assert len(draws) == 3, "each of A, B and A′ draws its own augmentation"
        (recipe_a, params_a), (recipe_b, params_b), (recipe_a2, params_a2) = draws
        assert recipe_b == recipe_a2 == "pretrain" and recipe_a in transforms
        for clip, recipe, params, indices in ((clips[0], recipe_a, params_a, idx_a), (clips[1], recipe_b, params_b, idx_b),
                                              (clips[2], recipe_a2, params_a2, idx_a)):
            expected = transforms[recipe].apply(frame_reader.read_frames(video_dir, indices), params)
            torch.testing.assert_close(clip, expected, rtol=0, atol=1e-5)
        a_prime_differs += summary(params_a) != summary(params_a2)
    assert a_prime_differs >= 6


def view_frequencies(dataset, monkeypatch, items: int):
    """Per view, the fraction of items whose draw took the crop-only recipe, jitter, blur; the real draws,
    with decoding and pixel work skipped (they cannot change which parameters are drawn)."""
    blank = torch.zeros(2 * T, 3, *dataset.full.resize_hw, dtype=torch.uint8)  # no resize work either
    monkeypatch.setattr(vd, "read_frames", lambda folder, indices, *a, **k: blank[:len(indices)])
    pairs = record_calls(monkeypatch, sampling, "dualvar_clip_pair")
    monkeypatch.setattr(ClipTransform, "apply", lambda self, frames, params, out=None: out)
    draws = record_draws(monkeypatch)
    names = ("A", "B", "A'")
    for index in range(items):
        dataset.set_epoch(index)  # a fresh stream per item: (seed, epoch, index)
        dataset[0]
    assert len(draws) == items * len(names)
    counts = {name: np.zeros(3) for name in names}
    for i, (recipe, params) in enumerate(draws):
        counts[names[i % len(names)]] += (recipe == "crop_only", bool(params.jitter_order),
                                          params.blur_sigma is not None)
    return {name: c / items for name, c in counts.items()}, [np.concatenate(pair) for pair in pairs]


def test_crop_only_jitter_and_blur_frequencies_per_view(video_set, monkeypatch):
    items = 8000  # the "two_view" sampler draws A and B on the same lines
    dataset = build_dataset(data_args(video_set), "trainval", RECIPES["dualvar"])
    measured, read = view_frequencies(dataset, monkeypatch, items)
    for name, frequencies in measured.items():
        for what, p, f in zip(("crop-only", "jitter", "blur"), EXPECTED[name], frequencies):
            bound = 5 * math.sqrt(p * (1 - p) / items) + 1e-9  # 5 standard deviations: 0.028 at p = 0.5
            assert abs(f - p) <= bound, f"view {name}: {what} frequency {f:.4f}, METHOD.md says {p}"
    # time reversal turns A and B together, half of the time
    directions = [(np.sign(idx[T - 1] - idx[0]), np.sign(idx[-1] - idx[T])) for idx in read]
    moving = [(a, b) for a, b in directions if a and b]
    assert len(moving) > 0.9 * items and all(a == b for a, b in moving)
    reversed_share = np.mean([a < 0 for a, _ in moving])
    assert abs(reversed_share - 0.5) <= 5 * math.sqrt(0.25 / len(moving))


def test_time_reversal_turns_both_clips_together():
    reversed_count, draws = 0, 1000
    for seed in range(draws):
        idx_a, idx_b = sampling.dualvar_clip_pair(300, np.random.default_rng(seed), 16, 4)
        step_a, step_b = np.diff(idx_a), np.diff(idx_b)
        assert (step_a >= 0).all() or (step_a <= 0).all()
        direction_a = np.sign(step_a[step_a != 0][0])
        direction_b = np.sign(step_b[step_b != 0][0])
        assert direction_a == direction_b, "only one clip was reversed"
        reversed_count += direction_a < 0
    assert abs(reversed_count / draws - 0.5) <= 5 * math.sqrt(0.25 / draws)


@pytest.mark.parametrize("component", ["u", "v"])
def test_iic_flow_clip_is_the_flow_frames_at_the_rgb_box(video_set, monkeypatch, component):
    # frames already at the resize size: the crop is exact
    dataset = build_dataset(data_args(video_set, "--resize", *map(str, HW)), "trainval", RECIPES["iic"],
                            modality=component)
    draws = record_draws(monkeypatch)
    starts = record_calls(monkeypatch, sampling, "iic_clip_indices")
    record = dataset.records[0]
    for epoch in range(4):
        dataset.set_epoch(epoch)
        draws.clear()
        starts.clear()
        item = dataset[0]
        (indices,), ((recipe, box),) = starts, draws
        assert recipe == "crop_only" and not box.flip
        rgb = frame_reader.read_frames(record.path(dataset.frame_root), indices)
        flow = frame_reader.read_flow_frames(flow_dir(dataset.flow_root, component, record.frame_dir),
                                   sampling.flow_indices(indices, NUM_FRAMES))
        crop = (slice(None), slice(None), slice(box.top, box.top + 32), slice(box.left, box.left + 32))
        # [0, 1] pixels, no normalisation
        torch.testing.assert_close(item["clip"], rgb[crop].permute(1, 0, 2, 3).float() / 255, rtol=0, atol=1e-6)
        torch.testing.assert_close(item["flow"], flow[crop].permute(1, 0, 2, 3).float() / 255, rtol=0, atol=1e-6)
        assert (item["flow"] - item["clip"]).abs().mean() > 0.05  # the flow is not the RGB clip
