"""process_data/src/reencode_videos.py: seek-friendly H.264 copies, frame for frame."""

import cv2
import numpy as np
import pytest

from conftest import RECIPES, tiny_demo_args
from dataset.build import build_dataset
from dataset.layout import LayoutError, read_split_csv, video_file
from dataset.video_reader import _open, frame_table, probe, read_video_frames
from process_data.src import reencode_videos, write_csv
from video_fixtures import decode_all, smooth_frames, write_h264

FRAMES = 30


def test_copies_keep_every_frame_in_order_with_dense_keyframes_and_resume(tmp_path, capsys):
    videos, out = tmp_path / "videos", tmp_path / "copies"
    write_h264(videos / "A" / "x.mkv", smooth_frames(FRAMES, height=40, width=60))  # one keyframe, Matroska
    (videos / "B").mkdir()
    (videos / "B" / "bad.avi").write_bytes(b"\x00bad" * 30)
    args = ["--video-root", str(videos), "--out-root", str(out), "--short-side", "16", "--keyint", "4",
            "--workers", "1", "--crf", "10"]
    assert reencode_videos.main(args) == 1  # the bad video fails, the other is still written
    assert "1 videos written, 0 skipped (already done), 1 failed" in capsys.readouterr().out
    failures = (out / reencode_videos.FAILURES_FILE).read_text()
    assert failures.startswith(f"{videos / 'B' / 'bad.avi'}\t")

    copy = out / "A" / "x.mp4"
    info = probe(copy)
    assert (info.num_frames, info.source, info.fps) == (FRAMES, "container", 25.0)
    container, stream = _open(copy)
    keyframes = np.flatnonzero(frame_table(container, stream).keyframe)
    assert (stream.height, stream.width) == (16, 24)
    container.close()
    assert keyframes.tolist() == list(range(0, FRAMES, 4))
    # frame i of the copy is frame i of the source, scaled down
    source = decode_all(videos / "A" / "x.mkv")
    scaled = np.stack([cv2.resize(f, (24, 16), interpolation=cv2.INTER_AREA) for f in source]).astype(int)
    copied = read_video_frames(copy, np.arange(FRAMES)).permute(0, 2, 3, 1).numpy().astype(int)
    errors = np.abs(copied - scaled).mean(axis=(1, 2, 3))  # (FRAMES,)
    assert errors.max() < 6
    assert np.abs(copied[1:] - scaled[:-1]).mean() > 2 * errors.mean()  # and not its neighbour

    mtime = copy.stat().st_mtime_ns
    (videos / "B" / "bad.avi").unlink()
    assert reencode_videos.main(args) == 0  # the finished copy is skipped, the failures file goes
    assert "0 videos written, 1 skipped" in capsys.readouterr().out
    assert copy.stat().st_mtime_ns == mtime and not (out / reencode_videos.FAILURES_FILE).exists()
    assert [p.name for p in (out / "A").iterdir()] == ["x.mp4"]  # no temporary file left


def test_a_csv_of_the_demos_avi_files_reads_their_copies(tiny_demo, tmp_path, capsys):
    """docs/video_source.md's path on the demo's .avi videos: the CSV written from the originals, --video-root
    pointed at the .mp4 copies."""
    csv_dir, copies = tmp_path / "csv_video", tmp_path / "copies"
    assert write_csv.main(["--source", "video", "--dataset", "ucf101", "--video-root", str(tiny_demo / "videos"),
                           "--split-dir", str(tiny_demo / "splits"), "--out-dir", str(csv_dir), "--workers", "1"]) == 0
    assert reencode_videos.main(["--video-root", str(tiny_demo / "videos"), "--out-root", str(copies),
                                 "--short-side", "0", "--keyint", "4", "--workers", "1", "--crf", "10"]) == 0
    capsys.readouterr()
    first = read_split_csv(csv_dir / "test_split01.csv")[0]
    assert first.frame_dir.endswith(".avi") and first.path(copies).suffix == ".mp4"

    def dataset(video_root):
        args = tiny_demo_args(tiny_demo, "--dataset", str(csv_dir), "--video-root", str(video_root))
        return build_dataset(args, "test", RECIPES["eval"], uint8=True)
    originals, copied = dataset(tiny_demo / "videos"), dataset(copies)
    for index in (0, len(originals) - 1):
        a, b = originals[index]["clips"].float(), copied[index]["clips"].float()
        # levels of 255; 1.2 measured: H.264 at --crf 10 of full-range Motion-JPEG, kept full range (converted
        # to limited range, 6.1)
        assert a.shape == b.shape and (a - b).abs().mean() < 2.5


def test_two_videos_that_would_share_a_copy_are_refused(tmp_path, capsys):
    videos = tmp_path / "videos"
    write_h264(videos / "A" / "a.mp4", smooth_frames(8))
    write_h264(videos / "A" / "a.mkv", smooth_frames(8, seed=1))
    assert reencode_videos.main(["--video-root", str(videos), "--out-root", str(tmp_path / "out"),
                                 "--workers", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and f"{tmp_path / 'out' / 'A' / 'a.mp4'} from {videos / 'A' / 'a.mkv'}, " \
                                  f"{videos / 'A' / 'a.mp4'}" in error
    assert not (tmp_path / "out").exists()


def test_a_missing_video_is_found_under_one_other_extension_only(tmp_path):
    named = tmp_path / "A" / "v.avi"
    (tmp_path / "A").mkdir()
    assert video_file(named) == named  # nothing there: the caller names the CSV's file
    (tmp_path / "A" / "v.mp4").write_bytes(b"copy")
    assert video_file(named) == tmp_path / "A" / "v.mp4"
    named.write_bytes(b"original")
    assert video_file(named) == named  # the file the CSV names comes first
    named.unlink()
    (tmp_path / "A" / "v.mkv").write_bytes(b"another")
    with pytest.raises(LayoutError, match=r"v.avi does not exist, and 2 files beside it could stand for it "
                                          r"\(v.mkv, v.mp4\)"):
        video_file(named)


def test_help_shows_the_defaults():
    text = reencode_videos.get_args_parser().format_help()
    assert "(default: 150)" in text and "(default: 16)" in text and "(default: 20)" in text
