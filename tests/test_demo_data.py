import cv2
import numpy as np
import pytest

import make_demo_data
from make_demo_data import CLASSES, generate, main, render_video

SIZE = (32, 48)
FRAMES = 16


def decode(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    ok, frame = capture.read()
    while ok:
        frames.append(frame)
        ok, frame = capture.read()
    capture.release()
    return np.stack(frames)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["--out", str(out), "--classes", "MoveRight", "MoveLeft", "BounceCircle",
                 "--videos-per-class", "4", "--size", *map(str, SIZE), "--frames", str(FRAMES),
                 "--workers", "1"]) == 0
    return out


def test_ucf101_layout_and_crlf_split_files(demo):
    videos = sorted(p.relative_to(demo / "videos").as_posix() for p in (demo / "videos").rglob("*.avi"))
    assert len(videos) == 12
    assert "MoveLeft/v_MoveLeft_g01_c01.avi" in videos
    raw = (demo / "splits" / "trainlist01.txt").read_bytes()
    assert raw.endswith(b"\r\n") and raw.count(b"\r\n") == raw.count(b"\n")
    assert (demo / "splits" / "classInd.txt").read_bytes() == b"1 MoveRight\r\n2 MoveLeft\r\n3 BounceCircle\r\n"
    train = (demo / "splits" / "trainlist01.txt").read_text().splitlines()
    test = (demo / "splits" / "testlist01.txt").read_text().splitlines()
    assert len(train) + len(test) == 12
    # Group-wise split: groups g01-g02 only in test, the rest only in train, labels 1-based per classInd.
    assert all("_g01_" in v or "_g02_" in v for v in test)
    assert not any("_g01_" in v or "_g02_" in v for v in train)
    assert "MoveLeft/v_MoveLeft_g03_c01.avi 2" in train
    assert sorted([v.split()[0] for v in train] + test) == videos


def test_videos_decode_to_requested_size_and_length(demo):
    frames = decode(demo / "videos" / "MoveRight" / "v_MoveRight_g01_c01.avi")
    assert frames.shape == (FRAMES, *SIZE, 3)
    assert frames.std() > 10  # not a blank video


def test_same_seed_same_frames_other_seed_differs(demo, tmp_path):
    video = "MoveLeft/v_MoveLeft_g03_c01.avi"
    generate(tmp_path / "a", ["MoveRight", "MoveLeft"], 4, 0, SIZE, FRAMES, workers=2)
    generate(tmp_path / "b", ["MoveLeft"], 4, 1, SIZE, FRAMES)
    # Same seed, other worker count and other class list: identical decoded frames.
    np.testing.assert_array_equal(decode(demo / "videos" / video), decode(tmp_path / "a" / "videos" / video))
    assert not np.array_equal(decode(demo / "videos" / video), decode(tmp_path / "b" / "videos" / video))


@pytest.mark.parametrize("forward,backward", [("MoveRight", "MoveLeft"), ("Grow", "Shrink"),
                                              ("MoveDown", "MoveUp"), ("RotateClockwise", "RotateAnticlockwise")])
def test_pair_is_exact_time_reversal(forward, backward):
    def render(name):
        return render_video(name, np.random.default_rng(3), FRAMES, *SIZE)
    np.testing.assert_array_equal(render(backward), render(forward)[::-1])


def test_trajectories_move_in_the_class_direction():
    rng = np.random.default_rng(0)
    cx, cy, scale, angle = make_demo_data._trajectory("move_x", FRAMES, *SIZE, 5.0, rng)
    assert np.all(np.diff(cx) > 0) and np.ptp(cy) == 0
    cx, cy, scale, angle = make_demo_data._trajectory("scale", FRAMES, *SIZE, 5.0, rng)
    assert np.all(np.diff(scale) > 0)
    cx, cy, scale, angle = make_demo_data._trajectory("rotate", FRAMES, *SIZE, 5.0, rng)
    assert np.all(np.diff(angle) < 0)  # clockwise on screen
    cx, cy, _, _ = make_demo_data._trajectory("bounce", 200, *SIZE, 5.0, rng)
    assert cx.min() >= 5.0 and cx.max() <= SIZE[1] - 5.0 and cy.min() >= 5.0 and cy.max() <= SIZE[0] - 5.0


def test_appearance_classes_differ_in_shape():
    assert CLASSES["BounceCircle"].motion == CLASSES["BounceTriangle"].motion
    assert CLASSES["BounceCircle"].shape != CLASSES["BounceTriangle"].shape


def test_mp4_output_decodes(tmp_path):
    av = pytest.importorskip("av")
    generate(tmp_path, ["Grow"], 3, 0, SIZE, 8, fmt="mp4")
    with av.open(str(tmp_path / "videos" / "Grow" / "v_Grow_g01_c01.mp4")) as container:
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    assert len(frames) == 8 and frames[0].shape == (*SIZE, 3)


@pytest.mark.parametrize("flags,message", [
    (["--classes", "Jump"], "unknown class"),
    (["--videos-per-class", "2"], "--videos-per-class"),
    (["--format", "mp4", "--size", "33", "48"], "even --size"),
])
def test_bad_flags_name_the_flag(tmp_path, capsys, flags, message):
    assert main(["--out", str(tmp_path), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "videos").exists()


def test_dry_run_prints_configuration(tmp_path, capsys):
    import json
    assert main(["--out", str(tmp_path / "x"), "--dry-run"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert (config["videos_per_class"], config["frames"], config["size"]) == (50, 32, [60, 80])
    assert config["classes"] == list(CLASSES)
    assert not (tmp_path / "x").exists()
