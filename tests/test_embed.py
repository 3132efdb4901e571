"""embed.py: features for a folder of videos, failures listed, atomic and resumable, sharded under torchrun."""

import csv
import json
import os
import signal
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import embed
from engine.interrupts import TrainingInterrupted
from engine.launch import _stop_now, describe
from model.backbones import build_backbone
from utils.checkpoint_io import CheckpointError, save_checkpoint
from utils.distributed import default_workers
from video_fixtures import smooth_frames, write_h264

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """5 videos in nested folders (one an exact copy of another, one Matroska) and a corrupt file."""
    root = tmp_path_factory.mktemp("embed") / "videos"
    write_h264(root / "a" / "one.mp4", smooth_frames(30, seed=1), gop=6)
    write_h264(root / "a" / "two.mp4", smooth_frames(20, seed=2))
    write_h264(root / "b" / "deep" / "three.mkv", smooth_frames(26, seed=3), gop=5)
    write_h264(root / "b" / "four.mp4", smooth_frames(36, seed=4), gop=9)
    shutil.copy(root / "a" / "one.mp4", root / "b" / "one_copy.mp4")
    (root / "b" / "broken.mp4").write_bytes(b"\x00broken" * 40)
    (root / "b" / "readme.txt").write_text("not a video")
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    backbone, _ = build_backbone("r3d", 4)
    path = tmp_path_factory.mktemp("ckpt") / "finetuned.pth"
    save_checkpoint({"model": {f"backbone.{k}": v for k, v in backbone.state_dict().items()},
                     "config": {"net": "r3d", "base_width": 4, "num_frames": 8, "size": 32, "resize": [32, 48]}},
                    path)
    return path


@pytest.fixture(scope="module")
def reference(videos, ckpt, tmp_path_factory):
    """The features of one uninterrupted single-process run."""
    out = tmp_path_factory.mktemp("reference") / "features.npz"
    run(ckpt, videos, out)
    return load(out)


# fp32 (--amp none): the tests compare features across runs, process counts and batch compositions bit for bit
# or to 1e-5, which bf16 does not promise
def run(ckpt, videos, out, *extra):
    args = embed.get_args_parser().parse_args(["--ckpt", str(ckpt), "--videos", str(videos), "--out", str(out),
                                               "--workers", "0", "--clips", "3", "--stride", "2", "--amp", "none",
                                               *extra])
    return embed.main(args)


def load(path):
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def test_embeds_a_folder_lists_failures_and_writes_neighbours(videos, ckpt, tmp_path, one_torch_thread):
    out = tmp_path / "features.npz"
    run(ckpt, videos, out, "--neighbours", "2")
    result = load(out)
    assert result["paths"].tolist() == ["a/one.mp4", "a/two.mp4", "b/deep/three.mkv", "b/four.mp4", "b/one_copy.mp4"]
    assert str(result["root"]) == str(videos)
    assert result["features"].shape == (5, 32) and np.isfinite(result["features"]).all()
    assert result["num_frames"].tolist() == [30, 20, 26, 36, 30] and result["fps"].tolist() == [25.0] * 5
    failures = (tmp_path / "failures.txt").read_text().splitlines()
    assert len(failures) == 1 and failures[0].startswith(f"{videos / 'b' / 'broken.mp4'}\tcannot open video")
    # an exact copy embeds identically and is the other's nearest neighbour at cosine 1
    np.testing.assert_array_equal(result["features"][0], result["features"][4])
    with open(tmp_path / "neighbours.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 * 2 and all(r["video"] != r["neighbour"] for r in rows)
    first = [r for r in rows if r["video"] == "a/one.mp4" and r["rank"] == "1"][0]
    assert first["neighbour"] == "b/one_copy.mp4" and float(first["cosine"]) == pytest.approx(1)
    # a list file gives the same features for the paths it names, in its order
    listing = tmp_path / "list.txt"
    listing.write_text(f"{videos / result['paths'][3]}\n\n{videos / result['paths'][1]}\n")
    run(ckpt, listing, tmp_path / "listed.npz")
    listed = load(tmp_path / "listed.npz")
    assert str(listed["root"]) == os.getcwd()
    assert [str(Path(os.getcwd(), p)) for p in listed["paths"]] == [str(videos / result["paths"][i]) for i in (3, 1)]
    np.testing.assert_allclose(listed["features"], result["features"][[3, 1]], rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "failures.txt").exists() or "broken" in (tmp_path / "failures.txt").read_text()


def test_a_killed_run_resumes_with_the_videos_left_and_a_rerun_embeds_nothing(videos, ckpt, reference, tmp_path,
                                                                             monkeypatch, one_torch_thread):
    calls = []
    real = embed.video_features

    def dies_at_the_third_batch(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(embed, "video_features", dies_at_the_third_batch)
    out = tmp_path / "features.npz"
    with pytest.raises(TrainingInterrupted, match="continue"):
        run(ckpt, videos, out, "--batch-size", "1", "--save-every", "1")
    assert not out.exists()  # nothing that looks like a result
    assert len(load(embed._partial_files(out)[0])["paths"]) == 2

    calls.clear()
    monkeypatch.setattr(embed, "video_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    run(ckpt, videos, out, "--batch-size", "1")
    assert len(calls) == 3 and embed._partial_files(out) == []
    resumed, whole = load(out), reference
    assert resumed["paths"].tolist() == whole["paths"].tolist()
    np.testing.assert_allclose(resumed["features"], whole["features"], rtol=1e-5, atol=1e-6)

    calls.clear()
    run(ckpt, videos, out)
    assert calls == [] and load(out)["paths"].tolist() == whole["paths"].tolist()
    with pytest.raises(ValueError, match=r"made with other weights or settings \(layer: pool there, conv5 now\).*"
                                         r"to start over, delete"):
        run(ckpt, videos, out, "--layer", "conv5")
    amp = json.loads(str(load(out)["config"]))["amp"]  # --amp auto, as resolved on this machine
    other = "none" if amp == "bf16" else "bf16"
    with pytest.raises(ValueError, match=rf"\(amp: {amp} there, {other} now\)"):
        run(ckpt, videos, out, "--amp", other)


def test_strict_checkpoint_loading_flags_and_dry_run(videos, ckpt, tmp_path, capsys):
    with pytest.raises(CheckpointError, match="does not fit"):
        run(ckpt, videos, tmp_path / "f.npz", "--base-width", "8")
    with pytest.raises(ValueError, match="must end in .npz"):
        run(ckpt, videos, tmp_path / "f.pt")
    with pytest.raises(ValueError, match="holds no video file"):
        run(ckpt, tmp_path, tmp_path / "f.npz")
    assert run(ckpt, videos, tmp_path / "f.npz", "--dry-run") is None
    assert '"videos_found": 6' in capsys.readouterr().out and not (tmp_path / "f.npz").exists()
    for action in embed.get_args_parser()._actions:
        assert action.help, action.dest


def test_init_from_a_vcop_family_release_gives_the_same_features(videos, ckpt, reference, tmp_path):
    from model.vcop import vcop_name
    state = torch.load(ckpt, weights_only=True)["model"]
    release = tmp_path / "release.pth"
    torch.save({"state_dict": {"module.base_network." + vcop_name(k.removeprefix("backbone.")): v
                               for k, v in state.items()}}, release)
    out = tmp_path / "features.npz"
    embed.main(embed.get_args_parser().parse_args(
        ["--init-from", str(release), "--net", "r3d", "--base-width", "4", "--num-frames", "8", "--size", "32",
         "--resize", "32", "48", "--videos", str(videos), "--out", str(out), "--workers", "0", "--clips", "3",
         "--stride", "2", "--amp", "none"]))
    result = load(out)
    assert result["paths"].tolist() == reference["paths"].tolist()
    np.testing.assert_array_equal(result["features"], reference["features"])
    with pytest.raises(ValueError, match="exactly one of --ckpt"):
        run(ckpt, videos, tmp_path / "g.npz", "--init-from", str(release))


def test_two_processes_under_torchrun_embed_each_video_exactly_once(videos, ckpt, reference, tmp_path):
    out = tmp_path / "features.npz"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(REPO / "embed.py"), "--ckpt", str(ckpt), "--videos", str(videos), "--out", str(out),
                           "--workers", "0", "--clips", "3", "--stride", "2", "--device", "cpu", "--amp", "none",
                           "--dist-backend", "gloo"],
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # not anchored at a line start: the two ranks' lines may interleave ("... 1 failedrank 1: ...")
    counts = {rank: int(n) for rank, n in re.findall(r"rank (\d+): embedded (\d+) videos", proc.stdout)}
    assert sorted(counts) == ["0", "1"] and sum(counts.values()) == 5 and min(counts.values()) >= 2, proc.stdout
    result, whole = load(out), reference
    assert result["paths"].tolist() == whole["paths"].tolist()  # each once, in folder order
    np.testing.assert_allclose(result["features"], whole["features"], rtol=1e-5, atol=1e-6)
    assert "broken.mp4" in (tmp_path / "failures.txt").read_text()


def counting(monkeypatch):
    """Patch embed.video_features to count its calls (one per batch); returns the list of calls."""
    calls, real = [], embed.video_features
    monkeypatch.setattr(embed, "video_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_resume_is_keyed_on_the_weights_not_on_the_checkpoint_path(videos, ckpt, reference, tmp_path, monkeypatch,
                                                                   one_torch_thread):
    """Other weights at the same path are refused; the same weights under another path (relative, or a copy)
    resume."""
    checkpoint = tmp_path / "model.pth"
    shutil.copy(ckpt, checkpoint)
    out = tmp_path / "features.npz"
    run(checkpoint, videos, out)
    calls = counting(monkeypatch)
    monkeypatch.chdir(tmp_path)
    run(Path("model.pth"), videos, out)  # relative: the same checkpoint
    shutil.copy(ckpt, tmp_path / "copy.pth")
    run(tmp_path / "copy.pth", videos, out)
    assert calls == [] and load(out)["paths"].tolist() == reference["paths"].tolist()

    state = torch.load(ckpt, weights_only=True)
    state["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in state["model"].items()}
    save_checkpoint(state, checkpoint)  # retrained: other weights, same file name
    with pytest.raises(ValueError) as refused:
        run(checkpoint, videos, out)
    message = str(refused.value)
    assert "\n" not in message and re.search(r"weights: sha256 [0-9a-f]{12} there, sha256 [0-9a-f]{12} now", message)
    assert f"to start over, delete {out}" in message
    assert calls == [] and load(out)["paths"].tolist() == reference["paths"].tolist()


def test_a_video_given_twice_by_different_paths_is_embedded_once(videos, ckpt, tmp_path, monkeypatch,
                                                                 one_torch_thread):
    monkeypatch.chdir(videos.parent)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{videos / 'a' / 'one.mp4'}\nvideos/a/one.mp4\n./videos/b/../a/two.mp4\n"
                       f"{videos / 'a' / 'two.mp4'}\n")
    out = tmp_path / "features.npz"
    run(ckpt, listing, out, "--neighbours", "1")
    assert load(out)["paths"].tolist() == ["videos/a/one.mp4", "videos/a/two.mp4"]
    with open(tmp_path / "neighbours.csv", newline="") as f:
        assert [(r["video"], r["neighbour"]) for r in csv.DictReader(f)] == [
            ("videos/a/one.mp4", "videos/a/two.mp4"), ("videos/a/two.mp4", "videos/a/one.mp4")]


def test_a_moved_folder_resumes(videos, ckpt, reference, tmp_path, monkeypatch, one_torch_thread):
    first = tmp_path / "first"
    shutil.copytree(videos, first)
    out = tmp_path / "features.npz"
    run(ckpt, first, out)
    first.rename(tmp_path / "moved")
    calls = counting(monkeypatch)
    run(ckpt, tmp_path / "moved", out)
    result = load(out)
    assert calls == [] and result["paths"].tolist() == reference["paths"].tolist()
    np.testing.assert_allclose(result["features"], reference["features"], rtol=1e-5, atol=1e-6)


def test_sigterm_keeps_what_was_embedded_and_says_the_rerun_continues(videos, ckpt, reference, tmp_path,
                                                                      monkeypatch, one_torch_thread):
    real, calls = embed.video_features, []

    def sigterm_at_the_second_batch(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            _stop_now(signal.SIGTERM, None)  # what run_cli's SIGTERM handler does
        return real(*a, **k)
    monkeypatch.setattr(embed, "video_features", sigterm_at_the_second_batch)
    out = tmp_path / "features.npz"
    with pytest.raises(TrainingInterrupted) as stopped:
        run(ckpt, videos, out, "--batch-size", "1", "--save-every", "100")
    message, status = describe(stopped.value)
    assert status == 128 + signal.SIGTERM and "start over" not in message
    assert message.startswith("stopped by SIGTERM after 1 videos")
    assert "run the same command again to continue" in message
    assert not out.exists()  # no --out until every video is done
    monkeypatch.setattr(embed, "video_features", real)
    calls = counting(monkeypatch)
    run(ckpt, videos, out, "--batch-size", "1")
    assert len(calls) == 4 and load(out)["paths"].tolist() == reference["paths"].tolist()


def test_a_run_where_no_video_can_be_read_fails_and_one_video_has_no_neighbours(videos, ckpt, tmp_path, capsys):
    listing = tmp_path / "broken.txt"
    listing.write_text(f"{videos / 'b' / 'broken.mp4'}\n")
    out = tmp_path / "features.npz"
    with pytest.raises(ValueError, match=r"none of the 1 videos could be read, so nothing was written to .*; the "
                                         r"reasons are in .*failures.txt \(the first: .*broken.mp4: cannot open"):
        run(ckpt, listing, out)
    assert not out.exists() and "broken.mp4" in (tmp_path / "failures.txt").read_text()
    listing.write_text(f"{videos / 'a' / 'two.mp4'}\n")
    run(ckpt, listing, out, "--neighbours", "5")
    assert "no neighbours.csv: --neighbours needs at least 2 embedded videos" in capsys.readouterr().out
    assert not (tmp_path / "neighbours.csv").exists()


def test_workers_default_like_the_other_scripts():
    assert embed.get_args_parser().get_default("workers") == default_workers()
