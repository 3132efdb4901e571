"""embed.py: features for a folder of videos, failures listed, atomic and resumable, sharded under torchrun."""

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import embed
from model.backbones import build_backbone
from utils.checkpoint import CheckpointError, save_checkpoint
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
    names = [Path(p).relative_to(videos).as_posix() for p in result["paths"]]
    assert names == ["a/one.mp4", "a/two.mp4", "b/deep/three.mkv", "b/four.mp4", "b/one_copy.mp4"]
    assert result["features"].shape == (5, 32) and np.isfinite(result["features"]).all()
    assert result["num_frames"].tolist() == [30, 20, 26, 36, 30] and result["fps"].tolist() == [25.0] * 5
    failures = (tmp_path / "failures.txt").read_text().splitlines()
    assert len(failures) == 1 and failures[0].startswith(f"{videos / 'b' / 'broken.mp4'}\tcannot open video")
    # an exact copy embeds identically and is the other's nearest neighbour at cosine 1
    np.testing.assert_array_equal(result["features"][0], result["features"][4])
    with open(tmp_path / "neighbours.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 * 2 and all(r["video"] != r["neighbour"] for r in rows)
    first = [r for r in rows if r["video"] == str(videos / "a" / "one.mp4") and r["rank"] == "1"][0]
    assert first["neighbour"] == str(videos / "b" / "one_copy.mp4") and float(first["cosine"]) == pytest.approx(1)
    # a list file gives the same features for the paths it names, in its order
    listing = tmp_path / "list.txt"
    listing.write_text(f"{result['paths'][3]}\n\n{result['paths'][1]}\n")
    run(ckpt, listing, tmp_path / "listed.npz")
    listed = load(tmp_path / "listed.npz")
    assert listed["paths"].tolist() == [result["paths"][3], result["paths"][1]]
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
    with pytest.raises(KeyboardInterrupt):
        run(ckpt, videos, out, "--batch-size", "1", "--save-every", "1")
    assert len(load(out)["paths"]) == 0 and len(embed._partial_files(out)) == 1  # 2 videos in the partial file

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
    with pytest.raises(ValueError, match=r"made with other settings \(layer: pool there, conv5 now\)"):
        run(ckpt, videos, out, "--layer", "conv5")


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
    from model.backbones import vcop_name
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
