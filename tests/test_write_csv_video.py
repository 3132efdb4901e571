"""write_csv.py --source video: rows for video files, frame counts probed in parallel and cached."""

import csv
import os
import shutil

import av
import pytest

from dataset.layout import read_split_csv
from process_data.src import extract_frame, write_csv
from video_fixtures import smooth_frames, write_h264

FRAMES = 24


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
    """Jump: 3 MP4s; Run: 2 MKVs (no declared count), a truncated MKV, a garbage file, an MP4 cut before its
    index."""
    root = tmp_path_factory.mktemp("videos")
    for k in range(3):
        write_h264(root / "Jump" / f"j{k}.mp4", smooth_frames(FRAMES, seed=k), gop=6)
    for k in range(2):
        write_h264(root / "Run" / f"r{k}.mkv", smooth_frames(FRAMES, seed=10 + k), gop=6)
    whole = (root / "Run" / "r0.mkv").read_bytes()
    (root / "Run" / "r_truncated.mkv").write_bytes(whole[:len(whole) // 2])
    (root / "Run" / "r_garbage.mp4").write_bytes(b"\x00\x01garbage" * 50)
    mp4 = (root / "Jump" / "j0.mp4").read_bytes()
    (root / "Run" / "r_cut.mp4").write_bytes(mp4[:len(mp4) // 2])
    (root / "Run" / "notes.txt").write_text("not a video")
    return root


def run(video_root, out, *extra):
    return write_csv.main(["--source", "video", "--dataset", "folder", "--video-root", str(video_root),
                           "--out-dir", str(out), "--test-fraction", "0.34", "--workers", "1", *extra])


def report_rows(out):
    with open(out / write_csv.PROBE_REPORT, newline="") as f:
        return {row["video"]: row for row in csv.DictReader(f, delimiter="\t")}


def test_unreadable_videos_are_listed_with_reasons_and_fail_unless_allowed(video_folder, tmp_path, capsys,
                                                                            monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert run(video_folder, tmp_path / "csv") == 1
    out = capsys.readouterr()
    assert "unreadable 2" in out.out
    assert "Run/r_garbage.mp4 (cannot open video" in out.out and "Run/r_cut.mp4 (cannot open video" in out.out
    assert "missing, empty or unreadable" in out.err and "No CSV written" in out.err
    assert not (tmp_path / "csv" / "train_split01.csv").exists()
    rows = report_rows(tmp_path / "csv")
    assert rows["Jump/j1.mp4"]["source"] == "container" and rows["Jump/j1.mp4"]["num_frames"] == str(FRAMES)
    assert rows["Run/r1.mkv"]["source"] == "counted" and rows["Run/r1.mkv"]["num_frames"] == str(FRAMES)
    assert rows["Run/r1.mkv"]["fps"] == "25"
    truncated = rows["Run/r_truncated.mkv"]
    assert truncated["source"] == "counted" and 0 < int(truncated["num_frames"]) < FRAMES
    assert rows["Run/r_garbage.mp4"]["problem"].startswith("cannot open video")
    assert "notes.txt" not in " ".join(rows)

    assert run(video_folder, tmp_path / "csv", "--allow-missing") == 0
    records = read_split_csv(tmp_path / "csv" / "train_split01.csv") + read_split_csv(
        tmp_path / "csv" / "test_split01.csv")
    by_name = {r.frame_dir: r for r in records}
    assert set(by_name) == {"Jump/j0.mp4", "Jump/j1.mp4", "Jump/j2.mp4", "Run/r0.mkv", "Run/r1.mkv",
                            "Run/r_truncated.mkv"}
    assert by_name["Run/r_truncated.mkv"].num_frames == int(truncated["num_frames"])
    assert {r.label for r in records if r.frame_dir.startswith("Run")} == {1}


def test_reruns_reuse_the_cache_and_reprobe_only_changed_files(video_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "videos"
    shutil.copytree(video_folder, root)
    assert run(root, tmp_path / "a", "--allow-missing", "--workers", "2") == 0
    assert "probed 8 videos, 0 from the cache" in capsys.readouterr().out
    first = report_rows(tmp_path / "a")

    probed = []
    real_probe = write_csv.probe
    monkeypatch.setattr(write_csv, "probe", lambda path, count=False: probed.append(path) or real_probe(path, count))
    assert run(root, tmp_path / "b", "--allow-missing") == 0
    assert probed == [] and "probed 0 videos, 8 from the cache" in capsys.readouterr().out
    assert report_rows(tmp_path / "b") == first  # the same counts and reasons, errors included

    write_h264(root / "Jump" / "j1.mp4", smooth_frames(FRAMES - 4), gop=6)  # replaced: new size and time
    stat = (root / "Jump" / "j1.mp4").stat()
    os.utime(root / "Jump" / "j1.mp4", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert run(root, tmp_path / "c", "--allow-missing") == 0
    assert probed == [root / "Jump" / "j1.mp4"]
    assert report_rows(tmp_path / "c")["Jump/j1.mp4"]["num_frames"] == str(FRAMES - 4)

    assert run(root, tmp_path / "d", "--allow-missing", "--count-frames") == 0  # container counts are redone
    assert sorted(p.name for p in probed[1:]) == ["j0.mp4", "j1.mp4", "j2.mp4"]
    assert report_rows(tmp_path / "d")["Jump/j0.mp4"]["source"] == "counted"


def test_official_lists_give_the_same_rows_as_the_frame_folders(tiny_demo, tmp_path, monkeypatch):
    """The demo's UCF101-format lists over its AVI videos: the frame CSV's rows, with the videos' names."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert write_csv.main(["--source", "video", "--dataset", "ucf101", "--video-root", str(tiny_demo / "videos"),
                           "--split-dir", str(tiny_demo / "splits"), "--out-dir", str(tmp_path),
                           "--workers", "1"]) == 0
    for split in ("train", "test"):
        videos = read_split_csv(tmp_path / f"{split}_split01.csv")
        frames = read_split_csv(tiny_demo / "csv" / f"{split}_split01.csv")
        assert [(os.path.splitext(r.frame_dir)[0], r.num_frames, r.label) for r in videos] == \
               [(r.frame_dir, r.num_frames, r.label) for r in frames]
        assert all(r.frame_dir.endswith(".avi") for r in videos)


def test_source_video_needs_a_video_root(tmp_path, capsys):
    assert write_csv.main(["--source", "video", "--dataset", "folder", "--out-dir", str(tmp_path)]) == 2
    assert "--source video needs --video-root" in capsys.readouterr().err
    assert write_csv.main(["--source", "video", "--dataset", "folder", "--video-root", str(tmp_path / "no"),
                           "--out-dir", str(tmp_path)]) == 2
    assert "--video-root" in capsys.readouterr().err


def test_video_index_matches_stems_case_and_kinetics_ids(tmp_path):
    for name in ["Air Drumming/abc_000001_000011.mp4", "Air Drumming/XYZ.webm", "Air Drumming/xyz.mkv",
                 "Air Drumming/notes.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    index = write_csv.FrameIndex(tmp_path, videos=True)
    assert index.find("air_drumming/abc_000001_000011") == "Air Drumming/abc_000001_000011.mp4"
    assert index.find("Air Drumming/xyz") == "Air Drumming/xyz.mkv"  # the exact spelling first
    assert index.find("Air Drumming/Xyz") in ("Air Drumming/XYZ.webm", "Air Drumming/xyz.mkv")
    assert index.find("Air Drumming/notes") is None and index.find("Other/xyz") is None
    (tmp_path / "Air Drumming" / "def.mp4").write_bytes(b"")
    index = write_csv.FrameIndex(tmp_path, videos=True)
    assert index.find("Air Drumming/def_000002_000012") == "Air Drumming/def.mp4"  # a Kinetics id alone


def test_a_truncated_avi_is_refused_by_the_rule_of_extract_frame(tiny_demo, tmp_path, capsys, monkeypatch):
    """One rule for both tools: the demo's AVI cut to 60 % is truncated for write_csv.py as for extract_frame.py,
    with the same reason, not a row with its shortened count."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "videos"
    shutil.copytree(tiny_demo / "videos" / "Bounce", root / "Bounce")
    truncated = sorted((root / "Bounce").iterdir())[0]
    with av.open(str(truncated)) as container:  # cut where a frame starts: what is left decodes without an error
        starts = [packet.pos for packet in container.demux(video=0) if packet.size]
    truncated.write_bytes(truncated.read_bytes()[:starts[int(len(starts) * 0.6)]])
    rel = truncated.relative_to(root).as_posix()

    assert run(root, tmp_path / "csv") == 1
    reason = report_rows(tmp_path / "csv")[rel]["problem"]
    assert reason.startswith("truncated video: ") and reason.endswith(" (download it again)")
    assert f"{rel} ({reason})" in capsys.readouterr().out
    assert extract_frame.main(["--video-root", str(root), "--frame-root", str(tmp_path / "frames"),
                               "--workers", "1"]) == 1
    failures = (tmp_path / "frames" / extract_frame.FAILURES_FILE).read_text().splitlines()
    assert failures == [f"{truncated}\t{reason}"]

    assert run(root, tmp_path / "allowed", "--allow-missing") == 0
    rows = [r.frame_dir for split in ("train", "test") for r in read_split_csv(tmp_path / "allowed" /
                                                                               f"{split}_split01.csv")]
    assert rel not in rows and len(rows) == len(list(root.rglob("*.avi"))) - 1
