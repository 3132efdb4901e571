"""process_data/src/reencode_videos.py: seek-friendly H.264 copies, frame for frame."""

import cv2
import numpy as np

import reencode_videos
from dataset.video_reader import _open, frame_table, probe, read_video_frames
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
