"""Optical flow for IIC (METHOD.md §6): extraction (layout, sign, resume, failures), the loader's index
mapping, shared crop box and flip rule, and u / v through IIC pretraining, finetuning, testing and retrieval."""

import argparse
import importlib.util
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import finetune
import retrieve
import train_ssl
from conftest import RECIPES, tiny_demo_args, tiny_demo_flags, train_iic_steps
from dataset import sampling
from dataset.build import build_dataset
from dataset.flags import add_data_args
from dataset.layout import (LayoutError, VideoRecord, count_flow_frames, count_frames, flow_frame_name, frame_name,
                            write_class_index, write_split_csv)
from model import add_method_args, build_method
from process_data.src import extract_flow, extract_frame
from process_data.src.jobs import read_failures

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("test_script", REPO / "test.py")  # not the stdlib `test`
test_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_script)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def read_gray(path):
    return cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)


def write_gray(path, image):
    """An 8-bit JPEG (grey or colour) at quality 100."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 100])
    path.write_bytes(encoded.tobytes())


def flow_main(frame_root, flow_root, *extra):
    return extract_flow.main(["--frame-root", str(frame_root), "--flow-root", str(flow_root), "--workers", "1",
                              *extra])


@pytest.fixture(scope="module")
def demo_flow(tiny_demo):
    """tiny_demo with flow in its default place, <root>/tvl1_flow (the CSV folder's sibling)."""
    if not (tiny_demo / "tvl1_flow").is_dir():
        assert flow_main(tiny_demo / "frames", tiny_demo / "tvl1_flow") == 0
    return tiny_demo


# ---------------------------------------------------------------- extraction

def test_extraction_writes_one_flow_frame_fewer_per_component(demo_flow):
    frame_dirs = sorted(demo_flow.glob("frames/*/*"))
    assert len(frame_dirs) == 21
    for frames in frame_dirs:
        rel = frames.relative_to(demo_flow / "frames")
        for component in ("u", "v"):
            folder = demo_flow / "tvl1_flow" / component / rel
            names = sorted(os.listdir(folder))
            assert names == [flow_frame_name(t) for t in range(count_frames(frames) - 1)]
            assert names[0] == "frame000001.jpg"
        image = read_gray(demo_flow / "tvl1_flow" / "u" / rel / "frame000001.jpg")
        assert image.ndim == 2 and image.shape == read_gray(frames / frame_name(0)).shape[:2]
    assert not (demo_flow / "tvl1_flow" / extract_flow.FLOW_FAILURES_FILE).exists()


def moving_square(folder, step, frames=5, hw=(48, 64)):
    """A textured square translated by ``step`` (dy, dx) pixels per frame on a flat background."""
    texture = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (20, 20)).astype(np.uint8), (3, 3), 1)
    folder.mkdir(parents=True)
    for t in range(frames):
        image = np.full(hw, 90, np.uint8)
        y, x = 14 + step[0] * t, 14 + step[1] * t
        image[y:y + 20, x:x + 20] = texture
        cv2.imwrite(str(folder / frame_name(t)), np.repeat(image[..., None], 3, axis=2))


def test_flow_sign_follows_the_motion(tmp_path, capsys):
    frames, flow = tmp_path / "frames", tmp_path / "flow"
    moving_square(frames / "Move" / "right", (0, 2))
    moving_square(frames / "Move" / "down", (2, 0))
    assert flow_main(frames, flow, "--flow-algorithm", "farneback") == 0
    assert "optical flow with farneback" in capsys.readouterr().out
    region = (slice(18, 30), slice(20, 32))  # inside the square in every frame

    def mean(component, video):
        return np.mean([read_gray(flow / component / "Move" / video / flow_frame_name(t))[region] for t in range(4)])

    moved = 128 + 2 * 255 / 40  # +2 px at bound 20
    assert abs(mean("u", "right") - moved) < 4 and abs(mean("v", "right") - 128) < 2
    assert abs(mean("v", "down") - moved) < 4 and abs(mean("u", "down") - 128) < 2
    quantised = extract_flow.quantise_flow(np.array([-30.0, -20.0, 0.0, 20.0, 30.0]), 20.0)
    assert quantised.tolist() == [0, 0, 128, 255, 255]


def test_resume_skips_complete_and_redoes_partial(demo_flow, tmp_path, capsys):
    flow = tmp_path / "flow"
    shutil.copytree(demo_flow / "tvl1_flow", flow)
    partial = flow / "v" / "MoveLeft" / "v_MoveLeft_g01_c01"
    os.remove(partial / flow_frame_name(3))
    (flow / "u" / "MoveLeft" / "v_MoveLeft_g01_c01.tmp-extract").mkdir()  # a killed run's leftover
    untouched = flow / "u" / "MoveRight" / "v_MoveRight_g01_c01" / flow_frame_name(0)
    before = os.stat(untouched).st_mtime_ns
    capsys.readouterr()
    assert flow_main(demo_flow / "frames", flow) == 0
    assert "1 videos done, 20 skipped" in capsys.readouterr().out
    assert count_flow_frames(partial) == count_frames(demo_flow / "frames" / "MoveLeft" / "v_MoveLeft_g01_c01") - 1
    assert not (flow / "u" / "MoveLeft" / "v_MoveLeft_g01_c01.tmp-extract").exists()
    assert os.stat(untouched).st_mtime_ns == before


def test_corrupt_frames_are_listed_and_the_rest_processed(tmp_path, capsys):
    frames, flow = tmp_path / "frames", tmp_path / "flow"
    for video in ("good", "bad"):
        moving_square(frames / "Move" / video, (0, 1))
    bad = frames / "Move" / "bad" / frame_name(2)
    bad.write_bytes(bad.read_bytes()[:100])
    (frames / "Move" / "empty").mkdir()
    assert flow_main(frames, flow) == 1
    err = capsys.readouterr().err
    failures = read_failures(flow / extract_flow.FLOW_FAILURES_FILE)
    assert sorted(Path(k).name for k in failures) == ["bad", "empty"]
    assert "image_00003.jpg" in failures[str(frames.resolve() / "Move" / "bad")] and "image_00003.jpg" in err
    assert count_flow_frames(flow / "u" / "Move" / "good") == 4
    assert not (flow / "u" / "Move" / "bad").exists() and not (flow / "v" / "Move" / "bad.tmp-extract").exists()


def test_flow_flags(tmp_path, capsys):
    frames = tmp_path / "frames"
    moving_square(frames / "Move" / "a", (0, 1))
    with pytest.raises(SystemExit):  # a flag of frame extraction
        extract_flow.main(["--frame-root", str(frames), "--video-root", str(tmp_path)])
    assert "--video-root" in capsys.readouterr().err
    assert extract_flow.main(["--frame-root", str(tmp_path / "none")]) == 2
    assert "run process_data/src/extract_frame.py first" in capsys.readouterr().err
    assert extract_flow.main(["--frame-root", str(frames), "--dry-run"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["videos_found"] == 1 and config["flow_root"] == str(tmp_path / "tvl1_flow")
    assert not (tmp_path / "tvl1_flow").exists()
    if not extract_flow.tvl1_available():
        assert extract_flow.main(["--frame-root", str(frames), "--flow-algorithm", "tvl1"]) == 2
        assert "opencv-contrib" in capsys.readouterr().err


def test_extract_frame_flow_still_runs_the_flow_script(tmp_path, capsys):
    """The flow's old command (which the datasets' messages name) runs extract_flow.py, with a one-line note."""
    frames = tmp_path / "frames"
    moving_square(frames / "Move" / "a", (0, 1))
    assert extract_frame.main(["--flow", "--frame-root", str(frames), "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert "optical flow is now process_data/src/extract_flow.py" in captured.err
    assert "extract_flow.py: 1 videos done" in captured.out
    assert count_flow_frames(tmp_path / "tvl1_flow" / "u" / "Move" / "a") == count_frames(frames / "Move" / "a") - 1


def test_flow_shares_the_job_runner_of_frame_extraction():
    assert extract_flow.run_jobs is extract_frame.run_jobs and extract_flow.Result is extract_frame.Result


# ---------------------------------------------------------------- loading

def test_flow_index_rule():
    assert sampling.flow_indices(np.array([0, 5, 18, 19]), 20).tolist() == [0, 5, 18, 18]
    assert sampling.flow_indices(np.array([0, 0]), 1).tolist() == [0, 0]  # the one neutral flow frame


def hand_made_set(root, rgb, flow_u, flow_v, num_frames=20, hw=(40, 52)):
    """One video Move/v_Move_g01_c01 (train and test) with the given (y, x, t) -> value images."""
    rel = "Move/v_Move_g01_c01"
    y, x = np.mgrid[:hw[0], :hw[1]]
    for t in range(num_frames):
        write_gray(root / "frames" / rel / frame_name(t), np.repeat(rgb(y, x, t).astype(np.uint8)[..., None], 3, 2))
    for t in range(num_frames - 1):
        write_gray(root / "flow" / "u" / rel / flow_frame_name(t), flow_u(y, x, t).astype(np.uint8))
        write_gray(root / "flow" / "v" / rel / flow_frame_name(t), flow_v(y, x, t).astype(np.uint8))
    for split in ("train", "test"):
        write_split_csv(root / "csv" / f"{split}_split01.csv", [VideoRecord(rel, num_frames, 0)])
    write_class_index(root / "csv" / "ClassInd.txt", ["Move"])


def hand_made_args(root, *extra):
    args = add_data_args(argparse.ArgumentParser()).parse_args(
        ["--dataset", str(root / "csv"), "--flow-root", str(root / "flow"), "--num-frames", "4", "--size", "32",
         "--resize", "40", "52", *extra])
    args.seed = 0
    return args


def test_iic_rgb_and_flow_share_the_crop_box(tmp_path):
    pattern = lambda y, x, t: 3 * x + 2 * y  # noqa: E731  distinct per pixel, the same in RGB and flow
    hand_made_set(tmp_path, pattern, pattern, lambda y, x, t: 128 + 0 * x)
    dataset = build_dataset(hand_made_args(tmp_path), "trainval", RECIPES["iic"], modality="u")
    boxes = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        item = dataset[0]
        clip, flow = item["clip"], item["flow"]  # (3, T, 32, 32) each, in [0, 1]
        assert flow.shape == clip.shape == (3, 4, 32, 32)
        torch.testing.assert_close(flow, clip, rtol=0, atol=3 / 255)
        assert (flow[:, :, :, 1:] - clip[:, :, :, :-1]).abs().max() > 2 / 255  # a box one pixel off would fail
        boxes.add(round(float(clip[0, 0, 0, 0]) * 255))
    assert len(boxes) > 1  # the box is random, and still shared


def test_flow_clips_read_the_mapped_flow_frames(tmp_path):
    numbered = lambda y, x, t: 10 + 10 * t + 0 * x  # noqa: E731
    hand_made_set(tmp_path, numbered, numbered, numbered)
    dataset = build_dataset(hand_made_args(tmp_path, "--stride", "7"), "test", RECIPES["eval"], modality="v")
    clips = dataset[0]["clips"]  # (10, 3, T, H, W), 0..255 -> [0, 1], no ImageNet normalisation
    shown = ((clips.mean(dim=(1, 3, 4)) * 255 - 10) / 10).round().long()  # (10, T) flow index per frame
    rgb = sampling.eval_clip_indices(20, 4, 7, 10)
    assert rgb.max() == 19  # the last RGB frame has no motion of its own: it reads flow frame 18
    assert shown.tolist() == sampling.flow_indices(rgb, 20).tolist()


def test_finetune_flip_negates_u_and_mirrors(tmp_path):
    hand_made_set(tmp_path, lambda y, x, t: 0 * x + 50, lambda y, x, t: 0 * x + 200, lambda y, x, t: 60 + 2 * x)
    values, slopes = set(), set()
    for modality in ("u", "v"):
        dataset = build_dataset(hand_made_args(tmp_path), "trainval", RECIPES["finetune"], modality=modality)
        for epoch in range(12):
            dataset.set_epoch(epoch)
            clip = dataset[0]["clip"] * 255  # (3, T, H, W)
            if modality == "u":
                values.add(int(clip.mean().round()))
            else:
                slopes.add(int(torch.sign(clip[0, 0, 0, -1] - clip[0, 0, 0, 0])))
                assert 55 < clip.mean() < 170  # v is never negated
    assert values == {200, 55}  # moving right, or moving left once flipped
    assert slopes == {1, -1}


def test_missing_flow_gives_the_command_that_writes_it(tmp_path, demo_flow):
    args = tiny_demo_args(demo_flow, "--flow-root", str(tmp_path / "nowhere"))
    with pytest.raises(LayoutError, match=r"(?s)nowhere/u does not exist.*extract_flow\.py --frame-root"):
        build_dataset(args, "test", RECIPES["eval"], modality="u")
    shutil.copytree(demo_flow / "tvl1_flow", tmp_path / "flow")
    shutil.rmtree(tmp_path / "flow" / "u" / "MoveLeft")
    dataset = build_dataset(tiny_demo_args(demo_flow, "--flow-root", str(tmp_path / "flow")), "test",
                            RECIPES["finetune"], modality="u")
    with pytest.raises(LayoutError, match=r"(?s)flow frame folder .* does not exist.*extract_flow\.py --frame-root"):
        for i in range(len(dataset)):
            dataset[i]
    with pytest.raises(ValueError, match="DualVar"):
        build_dataset(tiny_demo_args(demo_flow), "test", RECIPES["dualvar"], modality="u")


# ---------------------------------------------------------------- IIC, finetuning, test, retrieval

def test_iic_trains_on_v_flow(demo_flow):
    dataset = build_dataset(tiny_demo_args(demo_flow), "trainval", RECIPES["iic"], modality="v")
    parser = argparse.ArgumentParser()
    add_method_args(parser)
    torch.manual_seed(0)
    method = build_method(parser.parse_args(["--model", "iic", "--modality", "v", "--net", "r3d", "--base-width", "8",
                                             "--bank-k", "8"]), num_videos=len(dataset))
    assert method.batch_keys == ("clip", "index", "flow")
    for item in (dataset[i] for i in range(6)):
        assert item["flow"].shape == item["clip"].shape and 0 <= item["flow"].min() <= item["flow"].max() <= 1
    train_iic_steps(method, dataset, batch_size=3)


def test_u_flow_through_pretraining_finetuning_test_and_retrieval(demo_flow, tmp_path):
    flags = tiny_demo_flags(demo_flow) + ["--device", "cpu"]
    pretrain = tmp_path / "pretrain"
    train_ssl.main(train_ssl.get_args_parser().parse_args(flags + [
        "--output-dir", str(pretrain), "--model", "iic", "--modality", "u", "--net", "r3d", "--base-width", "8",
        "--bank-k", "8", "--batch-size", "4", "--epochs", "1", "--max-iters-per-epoch", "2", "--log-every", "1"]))
    log = [json.loads(line) for line in (pretrain / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(line["loss_view2"]) for line in log if "loss_view2" in line)

    results = finetune.main(finetune.get_args_parser().parse_args(flags + [
        "--pretrain", str(pretrain / "checkpoint.pth"), "--output-dir", str(tmp_path / "ft"), "--modality", "u",
        "--batch-size", "3", "--epochs", "1", "--max-iters-per-epoch", "2"]))
    assert results["modality"] == "u" and results["loaded_tensors"] > 0

    args = test_script.get_args_parser().parse_args(flags + [
        "--ckpt", str(tmp_path / "ft" / "checkpoint.pth"), "--output-dir", str(tmp_path / "test")])
    report = test_script.main(args)
    assert args.modality == "u" and report["num_videos"] == 6  # the modality comes from the checkpoint

    retrieved = retrieve.main(retrieve.get_args_parser().parse_args(flags + [
        "--ckpt", str(pretrain / "checkpoint.pth"), "--output-dir", str(tmp_path / "retrieval"), "--merge",
        "--num-examples", "0", "--no-tsne"]))
    assert retrieved["merge_modality"] == "u" and retrieved["feature_dim"] == 2 * 64  # r3d width 8: 64 channels
    features = np.load(tmp_path / "retrieval" / "features_test.npz")["features"]  # (6, 128): RGB half, flow half
    assert not np.allclose(features[:, :64], features[:, 64:])
